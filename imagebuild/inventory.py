"""What is really installed in an artifact, and the files made from it: the package manifest
(`deb name=version=sha256`, `python name=version=sha256`, sorted) and its SBOM (imagebuild.sbom).

The same script (data/inventory_script.py) runs in the container (docker) and in the VM
(Ansible's `script` module), so the two manifests are comparable line by line."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from imagebuild import profile, progress
from imagebuild.cache import atomic_file
from imagebuild.errors import ImageBuildError
from imagebuild.lock.lockfile import Lock
from imagebuild.lock.schema import DEB_NAME, DEB_VERSION
from imagebuild.spec import Spec

SCRIPT_PATH = Path(__file__).parent / "data" / "inventory_script.py"
SCRIPT = SCRIPT_PATH.read_text()


@dataclass(frozen=True)
class Subject:
    """The artifact an SBOM describes: its kind (container, vm), its digest (sha256 hex of the
    OCI manifest, or of the VM's primary disk file), its bom-ref, and further named digests
    (the VM's format files)."""

    kind: str
    digest: str
    ref: str
    files: dict[str, str] = field(default_factory=dict)


def target_python(spec: Spec) -> str:
    """The venv's interpreter sees the venv's distributions; without a venv, Debian's."""
    return f"{spec.python.venv}/bin/python" if spec.python else "/usr/bin/python3"


class InventoryError(ImageBuildError):
    pass


DEB_ARCH = re.compile(r"[a-z0-9][a-z0-9-]*")
PY_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")  # PEP 508's name
PY_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+!_-]*")
GRAMMAR = {
    "deb": ("Debian package (name, version, arch)", (DEB_NAME, DEB_VERSION, DEB_ARCH)),
    "python": ("Python distribution (name, version)", (PY_NAME, PY_VERSION)),
}


def checked(inv: Any, kind: str) -> dict[str, Any]:
    """The inventory's package rows, each checked against Debian's and PEP 508's grammar before
    it becomes a manifest line, a purl or an SBOM field: they are read from the artifact (with a
    registry base, its dpkg database is anyone's)."""
    rows = inv if isinstance(inv, dict) else {}
    for section, (what, fields) in GRAMMAR.items():
        entries = rows.get(section)
        for row in entries if isinstance(entries, list) else [None]:
            if not (
                isinstance(row, list)
                and len(row) == len(fields)
                and all(
                    isinstance(v, str) and f.fullmatch(v) for f, v in zip(fields, row, strict=True)
                )
            ):
                raise InventoryError(
                    f"the {kind}'s installed packages ({section}) list {str(row)[:120]!r}: "
                    f"not a {what}"
                )
    return rows


def package_manifest(inv: dict[str, Any], lock: Lock) -> str:
    """One line per installed package; `unlocked` / `not-in-lock` if the lock has no such
    artifact (a package that floated in)."""
    debs = {(p.name, p.version): p.sha256 for p in [*lock.shared, *lock.vm]}
    wheels = {(w.name, w.version): w.sha256 for w in lock.python}
    lines = [f"deb {n}={v}={debs.get((n.split(':')[0], v), 'unlocked')}" for n, v, _ in inv["deb"]]
    lines += [
        f"python {canonicalize_name(n)}={v}={wheels.get((canonicalize_name(n), v), 'not-in-lock')}"
        for n, v in inv["python"]
    ]
    return "\n".join(sorted(lines)) + "\n"


FLOATING = ("=unlocked", "=not-in-lock")
# What `python3 -m venv` puts in every venv from Debian's bundled wheels (locked as debs).
VENV_TOOLING = ("python pip=", "python setuptools=")


def floating(manifest: str) -> list[str]:
    """`kind name=version` of every line the lock has no artifact for, venv tooling aside."""
    return [
        ln.rsplit("=", 1)[0]
        for ln in manifest.splitlines()
        if ln.endswith(FLOATING) and not ln.startswith(VENV_TOOLING)
    ]


def write(
    inv: dict[str, Any], spec: Spec, lock: Lock, subject: Subject, packages: Path, bom: Path
) -> list[str]:
    """Write both files; say (and return) what floated in: with a registry base, its own
    packages; with the lock's own base, a bug worth a look."""
    from imagebuild import sbom  # only here: see its docstring

    inv = checked(inv, subject.kind)
    manifest = package_manifest(inv, lock)
    with atomic_file(packages) as t:
        t.write_text(manifest)
    with atomic_file(bom) as t, profile.step("SBOM made and validated"):
        t.write_text(sbom.document(inv, spec, lock, **asdict(subject)))
    extra, kind = floating(manifest), subject.kind
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        progress.say(
            f"warning: {len(extra)} packages in the {kind} are not in the lock ({shown}); "
            f"marked in {packages.name}"
        )
    return extra


def package_entries(text: str) -> dict[str, str]:
    """`kind name` -> `version=sha256` from a package manifest."""
    out = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        name, _, value = rest.partition("=")
        out[f"{kind} {name.split(':')[0]}"] = value
    return out


def parity_with_container(vm_file: Path, container_file: Path, lock: Lock) -> dict[str, Any]:
    """Compare the VM's manifest with the container's over the lock's shared section and the
    Python lock (they must be identical there); count the VM-only section separately."""
    if not container_file.exists():
        return {"container_manifest": f"missing ({container_file.name}); run build-container"}
    vm, ct = package_entries(vm_file.read_text()), package_entries(container_file.read_text())
    shared = [f"deb {p.name}" for p in lock.shared] + [f"python {w.name}" for w in lock.python]
    differ = [
        f"{k}: container {ct.get(k)} vm {vm.get(k)}" for k in shared if vm.get(k) != ct.get(k)
    ]
    vm_only = [f"deb {p.name}" for p in lock.vm]
    return {
        "shared_checked": len(shared),
        "shared_same": len(shared) - len(differ),
        "shared_differ": differ,
        "vm_only_installed": sum(k in vm for k in vm_only),
        "vm_only_locked": len(vm_only),
    }
