"""The SBOMs: CycloneDX 1.6 from the CycloneDX library, checked by its own strict validator, the
lock's sha256 on every locked component, the same bytes for the same artifact, and values read
from an artifact (names, versions) carried as data into valid purls. The inventory here is this
host's real one (the same script the builds run in the container and the VM)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL
from packaging.utils import canonicalize_name

from imagebuild import inventory, sbom, spec
from imagebuild.inventory import Subject
from imagebuild.lock import lockfile
from imagebuild.sbom import SbomError
from tests.conftest import ROOT

EXAMPLE = ROOT / "examples" / "onnx-serve" / "imagebuild.yaml"
SUBJECT = Subject("container", "ab" * 32, "sha256:" + "cd" * 32)


@pytest.fixture(scope="module")
def host_inventory() -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", inventory.SCRIPT], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)


def _doc(inv: dict[str, Any], subject: Subject = SUBJECT) -> dict[str, Any]:
    s = spec.load(EXAMPLE)
    text = sbom.document(inv, s, lockfile.read(EXAMPLE.with_suffix(".lock")), **asdict(subject))
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    return json.loads(text)


def test_every_installed_package_is_a_component_with_its_purl(host_inventory) -> None:
    doc = _doc(host_inventory)
    assert doc["specVersion"] == "1.6" and doc["serialNumber"].startswith("urn:uuid:")
    purls = {PackageURL.from_string(c["purl"]) for c in doc["components"]}
    debs = {(p.name, p.version, p.qualifiers["arch"]) for p in purls if p.type == "deb"}
    assert debs == {(n, v, a) for n, v, a in host_inventory["deb"]}
    # a distribution found twice on the path (as imagebuild is here) is one component
    wheels = {(canonicalize_name(n), v) for n, v in host_inventory["python"]}
    assert {(p.name, p.version) for p in purls if p.type == "pypi"} == wheels
    root = doc["metadata"]["component"]
    assert root["hashes"] == [{"alg": "SHA-256", "content": "ab" * 32}]
    assert root["bom-ref"] == SUBJECT.ref and root["type"] == "container"
    assert doc["metadata"]["timestamp"].startswith("2")  # the lock's time, not now
    [deps] = [d for d in doc["dependencies"] if d["ref"] == SUBJECT.ref]
    assert len(deps["dependsOn"]) == len(purls)


def test_a_locked_component_carries_the_sha256_it_was_installed_from() -> None:
    lock = lockfile.read(EXAMPLE.with_suffix(".lock"))
    deb, wheel = lock.shared[0], lock.python[0]
    inv = {
        "deb": [[deb.name, deb.version, "amd64"], [deb.name + "-x", deb.version, "amd64"]],
        "python": [[wheel.name, wheel.version], [wheel.name, wheel.version + ".post9"]],
    }
    hashes = {
        (p.type, p.name, p.version): c.get("hashes")
        for c in _doc(inv)["components"]
        if (p := PackageURL.from_string(c["purl"]))
    }
    assert hashes["deb", deb.name, deb.version] == [{"alg": "SHA-256", "content": deb.sha256}]
    assert hashes["pypi", wheel.name, wheel.version] == [
        {"alg": "SHA-256", "content": wheel.sha256}
    ]
    assert sorted(v is None for v in hashes.values()) == [False, False, True, True]


def test_the_same_artifact_gives_the_same_bytes(host_inventory) -> None:
    s, lock = spec.load(EXAMPLE), lockfile.read(EXAMPLE.with_suffix(".lock"))
    shuffled = {k: list(reversed(v)) for k, v in host_inventory.items()}
    one = sbom.document(host_inventory, s, lock, **asdict(SUBJECT))
    assert sbom.document(shuffled, s, lock, **asdict(SUBJECT)) == one
    other = sbom.document(
        host_inventory, s, lock, **asdict(Subject("container", "ef" * 32, SUBJECT.ref))
    )
    assert json.loads(other)["serialNumber"] != json.loads(one)["serialNumber"]


def test_debian_and_pep440_spellings_round_trip_through_the_purl() -> None:
    doc = _doc(
        {
            "deb": [["libstdc++6", "1:2.0~rc1+dfsg-1", "amd64"]],
            "python": [["Zope.Interface", "1!2.0"]],
        }
    )
    purls = [PackageURL.from_string(c["purl"]) for c in doc["components"]]
    assert {(p.name, p.version) for p in purls} == {
        ("libstdc++6", "1:2.0~rc1+dfsg-1"),
        ("zope-interface", "1!2.0"),
    }


@pytest.mark.parametrize(
    "inv",
    [
        {"deb": [["x/../y?arch=evil#f", "1.0", "amd64"]], "python": []},
        {"deb": [["ok", "1.0\ndeb evil=1=2", "amd64"]], "python": []},
        {"deb": [["ok", "1.0"]], "python": []},
        {"deb": [], "python": [["a b", "1.0"]]},
        {"deb": [], "python": [["ok", 1.0]]},
        {"deb": [], "python": {"ok": "1.0"}},
        {"deb": []},
        [],
    ],
)
def test_rows_read_from_an_artifact_are_checked_before_anything_is_written(
    inv: Any, tmp_path: Path
) -> None:
    s, lock = spec.load(EXAMPLE), lockfile.read(EXAMPLE.with_suffix(".lock"))
    with pytest.raises(inventory.InventoryError, match="the container's installed packages"):
        inventory.write(inv, s, lock, SUBJECT, tmp_path / "p.txt", tmp_path / "b.json")
    assert not list(tmp_path.iterdir())


def test_an_sbom_the_schema_refuses_is_never_written(tmp_path: Path) -> None:
    s, lock = spec.load(EXAMPLE), lockfile.read(EXAMPLE.with_suffix(".lock"))
    bad = Subject("vm", "not a digest", "ref")
    packages, bom = tmp_path / "p.txt", tmp_path / "b.json"
    with pytest.raises(SbomError, match="the vm SBOM fails CycloneDX 1.6"):
        inventory.write({"deb": [], "python": []}, s, lock, bad, packages, bom)
    assert not bom.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["p.txt"]
