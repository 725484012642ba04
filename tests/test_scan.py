"""The offline CVE gate on real advisories: PyPA's PYSEC records (pypa/advisory-database, as
OSV JSON) and Debian's (transcribed from the security tracker), zipped as OSV's all.zip
exports are, against the lock of tests/data/scan (fastapi and idna pinned to versions with
advisories) and the example's."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest

from imagebuild import lock as locking
from imagebuild import scan, vulndb
from imagebuild.lock import DebPackage
from imagebuild.vulndb import Affected
from tests.conftest import OSV, ROOT, osv_export, run_invoke

FIXTURE = ROOT / "tests" / "data" / "scan" / "imagebuild.yaml"
EXAMPLE = ROOT / "examples" / "onnx-serve" / "imagebuild.yaml"


@pytest.fixture
def dbs(tmp_path: Path) -> list[Path]:
    return [
        osv_export(OSV / "debian", tmp_path / "debian-all.zip"),
        osv_export(OSV / "pypi", tmp_path / "pypi-all.zip"),
    ]


def report(spec: Path, dbs: list[Path]) -> scan.Report:
    lk = locking.read(spec.with_suffix(".lock"))
    return scan.scan(lk, vulndb.load(dbs, scan.ecosystems(lk)))


def test_the_planted_advisories_are_found_with_their_fixes(dbs: list[Path]) -> None:
    r = report(FIXTURE, dbs)
    got = {
        (f.advisory.id, f.installed.name, f.installed.version, f.fixed, f.severity)
        for f in r.findings
    }
    assert got == {
        # fastapi < 0.109.1, CVSS 7.5
        ("PYSEC-2024-38", "fastapi", "0.109.0", "0.109.1", "high"),
        # idna < 3.7, CVSS 7.5
        ("PYSEC-2024-60", "idna", "3.6", "3.7", "high"),
        # unfixed in every release; the tracker's urgency: unimportant
        ("DEBIAN-CVE-2011-3374", "apt", "2.6.1", "", "low"),
    }
    apt = next(f for f in r.findings if f.installed.name == "apt")
    assert apt.installed.rows == ("apt 2.6.1", "libapt-pkg6.0 2.6.1")  # by source package
    assert "CVE-2011-3374" in apt.advisory.aliases
    # not reported: starlette 0.35.1 (PYSEC-2023-48 fixed in 0.25.0), glibc 2.36-9+deb12u14
    # (DSA-5514-1 fixed in 2.36-9+deb12u3); its Debian 11 entry is not this lock's release
    assert {f.installed.name for f in r.findings} == {"fastapi", "idna", "apt"}
    assert any(i.name == "glibc" and i.version == "2.36-9+deb12u14" for i in r.installed)
    assert any(i.name == "starlette" for i in r.installed)


def test_versions_are_ordered_as_pep_440_not_as_text(dbs: list[Path]) -> None:
    """The example locks idna 3.20: "3.20" < "3.7" as text, not as a version."""
    r = report(EXAMPLE, dbs)
    assert [(f.advisory.id, f.installed.name) for f in r.findings] == [
        ("DEBIAN-CVE-2011-3374", "apt")
    ]
    assert any(i.name == "idna" and i.version == "3.20" for i in r.installed)


def test_scan_prints_findings_and_gates(dbs: list[Path]) -> None:
    args = ["scan", "--spec", str(FIXTURE), "--db", str(dbs[0]), "--db", str(dbs[1])]
    r = run_invoke(*args, "--max-db-age", "0")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("scan: 150 Debian source packages (215 .debs) and 12 wheels")
    assert lines[1].split() == ["SEVERITY", "PACKAGE", "INSTALLED", "FIXED", "IN", "ID", "IN"]
    assert lines[2].split()[:5] == ["high", "fastapi", "(fastapi)", "0.109.0", "0.109.1"]
    assert "PYSEC-2024-38" in lines[2] and "CVE-2024-24762" in lines[2]
    assert lines[-1] == "3 findings: 2 high, 1 low"
    r = run_invoke(*args, "--max-db-age", "0", "--fail-on", "high")
    assert r.returncode == 1
    assert (
        "error: scan: 2 findings at or above high (--fail-on): PYSEC-2024-38 (fastapi" in r.stderr
    )
    assert run_invoke(*args, "--max-db-age", "0", "--fail-on", "critical").returncode == 0
    # the PyPI export's newest record is from 2024: refused at the default age, naming it
    r = run_invoke(*args)
    assert r.returncode == 1 and f"error: {dbs[1]}: newest record 2024-07-11" in r.stderr
    assert "--max-db-age" in r.stderr and "SEVERITY" not in r.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "--db: give at least one"),
        (["--db", "x.zip", "--fail-on", "severe"], "--fail-on: 'severe' is not one of"),
    ],
)
def test_bad_options_exit_2(args: list[str], says: str) -> None:
    r = run_invoke("scan", "--spec", str(FIXTURE), *args)
    assert r.returncode == 2 and says in r.stderr, r.stderr


def _fifo(p: Path) -> Path:
    os.mkfifo(p)
    return p


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: (p / "x.zip").write_text("not a zip") and p / "x.zip", "not an OSV all.zip"),
        (lambda p: _fifo(p / "fifo"), "not a regular file"),
        (
            lambda p: osv_export(OSV / "pypi", p / "x.zip", {"BAD-1.json": b"{not json"}),
            "x.zip: BAD-1.json: not JSON",
        ),
        (
            lambda p: osv_export(OSV / "pypi", p / "x.zip", {"BAD-2.json": b'{"affected": []}'}),
            "BAD-2.json: not an OSV record",
        ),
        (
            lambda p: osv_export(
                OSV / "pypi", p / "x.zip", {"BIG.json": b" " * (vulndb.MAX_RECORD + 1)}
            ),
            "BIG.json: 16777217 bytes, more than",
        ),
        (
            lambda p: osv_export(
                OSV / "pypi",
                p / "x.zip",
                {"R.json": json.dumps({"id": "R", "modified": "yesterday"}).encode()},
            ),
            "R.json: `modified` 'yesterday' is not an RFC 3339 time",
        ),
        (
            lambda p: osv_export(
                OSV / "pypi",
                p / "x.zip",
                {
                    "E.json": json.dumps(
                        {
                            "id": "E",
                            "modified": "2026-01-01T00:00:00Z",
                            "affected": [
                                {
                                    "package": {"ecosystem": "PyPI", "name": "idna"},
                                    "ranges": [{"type": "ECOSYSTEM", "events": [{"$(id)": "1"}]}],
                                }
                            ],
                        }
                    ).encode()
                },
            ),
            "E.json: affected[0]: ranges[0]: event '$(id)' is not a known kind",
        ),
    ],
)
def test_a_hostile_database_is_refused_naming_file_and_member(
    make: object, says: str, tmp_path: Path
) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(vulndb.VulnDBError) as e:
        vulndb.load([path], ("PyPI", "Debian:12"))
    assert str(e.value).startswith(str(tmp_path)) and says in str(e.value), str(e.value)


def _corrupt(p: Path) -> Path:
    """An export whose one member's compressed bytes are damaged (its CRC no longer holds)."""
    out = p / "bad.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("X.json", json.dumps({"id": "X", "modified": "2026-01-01T00:00:00Z"}) * 50)
    data = bytearray(out.read_bytes())
    data[60] ^= 0xFF  # inside the member's data, after its 30-byte header and name
    out.write_bytes(bytes(data))
    return out


def test_a_damaged_member_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(vulndb.VulnDBError, match="bad.zip: X.json: cannot be read"):
        vulndb.load([_corrupt(tmp_path)], ("PyPI",))


def test_push_attaches_only_a_scan_statement_about_this_image(
    dbs: list[Path], tmp_path: Path
) -> None:
    from imagebuild import distnames, provenance, push
    from imagebuild import spec as specmod

    lk = locking.read(FIXTURE.with_suffix(".lock"))
    dist = _built_dist(tmp_path / "dist", lk.digest)
    args = ["scan", "--spec", str(FIXTURE), "--db", str(dbs[0]), "--max-db-age", "0"]
    assert run_invoke(*args, "--dist", str(dist)).returncode == 0
    spec = specmod.load(str(FIXTURE))
    built = distnames.path(dist, spec, distnames.CONTAINER_PROVENANCE)
    scanned = distnames.path(dist, spec, distnames.SCAN_ATTESTATION)
    assert push._same_subjects(scanned, built)
    stmt = provenance.read_statement(built)  # a rebuild: another image, the old statement
    stmt["subject"][0]["digest"]["sha256"] = "d" * 64
    provenance.write_statement(built, stmt, None)
    assert not push._same_subjects(scanned, built)


def test_a_withdrawn_advisory_is_not_reported(tmp_path: Path) -> None:
    rec = json.loads((OSV / "pypi" / "PYSEC-2024-60.json").read_text())
    rec["withdrawn"] = "2024-08-01T00:00:00Z"
    db = osv_export(tmp_path / "none", tmp_path / "w.zip", {"W.json": json.dumps(rec).encode()})
    assert report(FIXTURE, [db]).findings == ()


def _affected(*events: tuple[str, str], versions: tuple[str, ...] = ()) -> Affected:
    return Affected("Debian:12", "x", (tuple(events),), versions, "")


@pytest.mark.parametrize(
    ("version", "events", "expected"),
    [
        ("2.36-9+deb12u14", [("introduced", "0"), ("fixed", "2.36-9+deb12u3")], (False, "")),
        (
            "2.36-9+deb12u2",
            [("introduced", "0"), ("fixed", "2.36-9+deb12u3")],
            (True, "2.36-9+deb12u3"),
        ),
        # an epoch outranks everything after it
        ("1:2.0-1", [("introduced", "0"), ("fixed", "2.1-1")], (False, "")),
        # ~ sorts before the empty string: a pre-release of the fix is still affected
        ("2.1-1~bpo1", [("introduced", "0"), ("fixed", "2.1-1")], (True, "2.1-1")),
        ("2.1-1", [("introduced", "2.0"), ("last_affected", "2.1-1")], (True, "")),
        ("2.1-2", [("introduced", "2.0"), ("last_affected", "2.1-1")], (False, "")),
        ("1.9", [("introduced", "2.0"), ("fixed", "2.2")], (False, "")),
        # two introduced/fixed pairs: between them is not affected
        (
            "3.0",
            [("introduced", "0"), ("fixed", "2.0"), ("introduced", "3.0"), ("fixed", "3.1")],
            (True, "3.1"),
        ),
        (
            "2.5",
            [("introduced", "0"), ("fixed", "2.0"), ("introduced", "3.0"), ("fixed", "3.1")],
            (False, ""),
        ),
    ],
)
def test_debian_version_order(
    version: str, events: list[tuple[str, str]], expected: tuple[bool, str]
) -> None:
    from debian.debian_support import Version

    assert scan._hit(version, _affected(*events), Version)[:2] == expected


def test_a_deb_is_matched_by_its_source_and_the_source_version() -> None:
    """libc6 is glibc's; bash 5.2.15-2+b13 is a binary-only rebuild of source 5.2.15-2."""
    lk = locking.read(EXAMPLE.with_suffix(".lock"))
    names = {(i.name, i.version) for i in scan.installed(lk)}
    assert ("glibc", "2.36-9+deb12u14") in names and ("bash", "5.2.15-2") in names
    row = DebPackage(
        "libc6", "2.36-9", "amd64", "0" * 64, "pool/main/g/glibc/libc6_2.36-9_amd64.deb", 1
    )
    assert scan._source(row) == "glibc"


def test_severity_prefers_the_distribution_then_the_database_then_cvss() -> None:
    rec = vulndb.advisory(
        json.loads((OSV / "pypi" / "PYSEC-2024-60.json").read_text()), "x", ("PyPI",)
    )
    assert rec is not None and scan.severity(rec, rec.affected[0]) == "high"  # CVSS 3.1: 7.5
    debian = Affected("Debian:12", "x", (), (), "medium*")
    assert scan.severity(rec, debian) == "medium"
    assert scan.too_old(
        vulndb.Database(
            (vulndb.Source(Path("d"), "0", 1, datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)),),
            (),
        ),
        7,
        datetime.datetime(2026, 1, 9, tzinfo=datetime.UTC),
    ).startswith("d: newest record 2026-01-01, 8 days old")


def test_vex_names_the_packages_as_the_sboms_do_and_is_reproducible(
    dbs: list[Path], tmp_path: Path
) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    from imagebuild import sbom

    args = ["scan", "--spec", str(FIXTURE), "--db", str(dbs[0]), "--db", str(dbs[1])]
    outs = [tmp_path / "a.cdx.json", tmp_path / "b.cdx.json"]
    for out in outs:
        r = run_invoke(*args, "--max-db-age", "0", "--vex", str(out))
        assert r.returncode == 0 and f"vex: {out}" in r.stdout, r.stderr
    text = outs[0].read_text()
    assert text == outs[1].read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    doc = json.loads(text)
    affects = {v["id"]: sorted(a["ref"] for a in v["affects"]) for v in doc["vulnerabilities"]}
    lk = locking.read(FIXTURE.with_suffix(".lock"))
    inv = {"deb": [("apt", "2.6.1", "amd64"), ("libapt-pkg6.0", "2.6.1", "amd64")]}
    as_sbom = {c.bom_ref.value for c in sbom.components({**inv, "python": [("idna", "3.6")]}, lk)}
    assert set(affects["DEBIAN-CVE-2011-3374"]) | set(affects["PYSEC-2024-60"]) == as_sbom
    idna = next(v for v in doc["vulnerabilities"] if v["id"] == "PYSEC-2024-60")
    assert idna["ratings"] == [{"severity": "high"}] and idna["recommendation"] == "upgrade to 3.7"
    assert idna["analysis"] == {"state": "in_triage"}


def _built_dist(dist: Path, lock_digest: str) -> Path:
    """A dist as build-container leaves it, as far as a scan reads it: the provenance (an
    unsigned envelope of a statement naming its lock and subjects) and SHA256SUMS."""
    from imagebuild import checksums, distnames, provenance
    from imagebuild import spec as specmod

    spec = specmod.load(str(FIXTURE))
    stmt = {
        "_type": provenance.STATEMENT_TYPE,
        "subject": [
            provenance.subject("scan-fixture-0.2.0.oci.tar", "a" * 64),
            provenance.subject("local/wordcount-api:0.2.0", "b" * 64),
        ],
        "predicateType": provenance.PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "internalParameters": {"lock": provenance.subject("imagebuild.lock", lock_digest)}
            }
        },
    }
    dist.mkdir()
    path = distnames.path(dist, spec, distnames.CONTAINER_PROVENANCE)
    provenance.write_statement(path, stmt, None)
    checksums.record(dist, [path], {"scan-fixture-0.2.0.oci.tar": "a" * 64})
    return dist


def test_scan_dist_writes_a_signed_statement_about_the_built_artifacts(
    dbs: list[Path], tmp_path: Path, sign_key: Path
) -> None:
    from cryptography.hazmat.primitives import serialization
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import SSlibKey

    from imagebuild import checksums, provenance

    lk = locking.read(FIXTURE.with_suffix(".lock"))
    dist = _built_dist(tmp_path / "dist", lk.digest)
    args = ["scan", "--spec", str(FIXTURE), "--db", str(dbs[0]), "--db", str(dbs[1])]
    r = run_invoke(*args, "--max-db-age", "0", "--dist", str(dist), "--sign-key", str(sign_key))
    assert r.returncode == 0, r.stderr
    att, vex = (
        dist / "scan-fixture-0.2.0.scan.intoto.jsonl",
        dist / "scan-fixture-0.2.0.vex.cdx.json",
    )
    assert f"wrote {vex}" in r.stdout and f"wrote {att}" in r.stdout
    assert checksums.check(dist, [att, vex]) == []
    env = json.loads(att.read_text())
    private = serialization.load_pem_private_key(sign_key.read_bytes(), None)
    key = SSlibKey.from_crypto(private.public_key())  # type: ignore[arg-type]
    assert Envelope.from_dict(dict(env)).verify([key], 1)
    stmt = provenance.read_statement(att)
    assert stmt["predicateType"] == "https://in-toto.io/attestation/vulns/v0.1"
    assert [s["name"] for s in stmt["subject"]] == [
        "local/wordcount-api:0.2.0",
        "scan-fixture-0.2.0.oci.tar",
    ]
    db = stmt["predicate"]["scanner"]["db"]
    assert db["version"].split(",") == [
        f"sha256:{hashlib.sha256(d.read_bytes()).hexdigest()}" for d in dbs
    ]
    assert db["lastUpdate"] == "2024-07-11T17:21:37Z"  # the stalest export's newest record
    ids = {x["id"]: x["severity"][0]["score"] for x in stmt["predicate"]["scanner"]["result"]}
    assert ids == {"PYSEC-2024-38": "high", "PYSEC-2024-60": "high", "DEBIAN-CVE-2011-3374": "low"}


def test_scan_dist_refuses_artifacts_of_another_lock_or_none(
    dbs: list[Path], tmp_path: Path
) -> None:
    args = ["scan", "--spec", str(FIXTURE), "--db", str(dbs[0]), "--max-db-age", "0"]
    dist = _built_dist(tmp_path / "dist", "c" * 64)
    r = run_invoke(*args, "--dist", str(dist))
    assert r.returncode == 1 and "built from another lock than" in r.stderr, r.stderr
    assert "not vouched for" in r.stderr and "no artifact of scan-fixture built there" in r.stderr
    assert not list(dist.glob("*.scan.intoto.jsonl")) and not list(dist.glob("*.vex.cdx.json"))
    (tmp_path / "empty").mkdir()
    r = run_invoke(*args, "--dist", str(tmp_path / "empty"))
    assert r.returncode == 1 and "no artifact of scan-fixture built there" in r.stderr
    r = run_invoke(*args, "--sign-key", "k.pem")
    assert r.returncode == 2 and "--sign-key: only with --dist" in r.stderr


def test_an_unreadable_range_does_not_hide_a_listed_version_nor_pass_the_gate(
    tmp_path: Path,
) -> None:
    """A PyPI range whose versions are not PEP 440: the advisory still hits the exactly listed
    version; where nothing decides, the scan says so and --fail-on refuses to pass."""
    from packaging.version import Version

    odd = Affected(
        "PyPI", "idna", ((("introduced", "0"), ("fixed", "not a version")),), ("3.6",), ""
    )
    assert scan._hit("3.6", odd, Version) == (True, "", True)
    rec = json.loads((OSV / "pypi" / "PYSEC-2024-60.json").read_text())
    for affected in rec["affected"]:
        affected["versions"] = []
        for r in affected["ranges"]:
            r["events"] = [{"introduced": "0"}, {"fixed": "not a version"}]
    db = osv_export(tmp_path / "none", tmp_path / "u.zip", {"U.json": json.dumps(rec).encode()})
    r = report(FIXTURE, [db])
    assert r.findings == () and r.unreadable == ("PYSEC-2024-60 (idna 3.6)",)
    with pytest.raises(scan.ScanGateError, match="not decidable.*PYSEC-2024-60 \\(idna 3.6\\)"):
        scan.gate(r, "critical")


def test_a_zero_cvss_score_is_low_not_a_crash() -> None:
    vector = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N"
    assert scan._cvss("CVSS_V3", vector) == "low"


def test_the_signed_kernel_is_matched_as_linux() -> None:
    row = DebPackage(
        "linux-image-6.1.0-28-cloud-amd64",
        "6.1.119-1",
        "amd64",
        "0" * 64,
        "pool/main/l/linux-signed-amd64/linux-image-6.1.0-28-cloud-amd64_6.1.119-1_amd64.deb",
        1,
    )
    assert scan._source(row) == "linux"


def test_scan_arch_reads_that_architectures_lock_section(tmp_path: Path, dbs: list[Path]) -> None:
    """`--arch arm64` scans arm64's section (here its fastapi is planted at a version with an
    advisory; amd64's is not) and says which section it read; the gate follows it."""
    import dataclasses
    import shutil

    from imagebuild.lock.lockfile import inputs_digest, render
    from tests.test_lock_arch import two_arch_lock

    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    spec = tmp_path / "examples" / "onnx-serve" / "imagebuild.yaml"
    line = "  components: [main]\n"
    spec.write_text(spec.read_text().replace(line, line + "  architectures: [amd64, arm64]\n"))
    lk = two_arch_lock(tmp_path)
    arm = lk.foreign["arm64"]
    old = [
        dataclasses.replace(
            w,
            version="0.109.0",
            filename="fastapi-0.109.0-py3-none-any.whl",
            url=w.url.replace(w.filename, "fastapi-0.109.0-py3-none-any.whl"),
            sha256=w.sha256[::-1],
        )
        if w.name == "fastapi"
        else w
        for w in arm.python
    ]
    lk = dataclasses.replace(
        lk,
        header={**lk.header, "inputs_sha256": inputs_digest(lk.inputs)},
        foreign={"arm64": dataclasses.replace(arm, python=old)},
    )
    spec.with_suffix(".lock").write_text(render(lk))
    args = ["scan", "--spec", str(spec), "--db", str(dbs[0]), "--db", str(dbs[1])]
    args += ["--max-db-age", "0", "--fail-on", "high"]
    host = run_invoke(*args)
    assert host.returncode == 0 and "PYSEC-2024-38" not in host.stdout, host.stderr
    assert host.stdout.startswith("scan: 150 Debian source packages")
    r = run_invoke(*args, "--arch", "arm64")
    assert r.stdout.startswith("scan: arm64's lock section: 150 Debian source packages"), r.stdout
    assert r.returncode == 1 and "PYSEC-2024-38 (fastapi" in r.stderr, r.stderr
