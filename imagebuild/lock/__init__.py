"""`invoke lock`: resolve the OS package closures and the Python wheels once, write the lock."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from imagebuild import progress
from imagebuild.cache import Cache, digest
from imagebuild.errors import ImageBuildError, SpecError
from imagebuild.lock.freshness import load_fresh, stale_reasons
from imagebuild.lock.lockfile import (
    ArchSection,
    DebPackage,
    Lock,
    Wheel,
    make,
    moves,
    path_for,
    read,
    render,
    rfc3339,
    stamped,
    write,
)
from imagebuild.lock.python import lock_python
from imagebuild.requested import Requested, same_package
from imagebuild.spec import Spec
from imagebuild.spec_sections import HOST_ARCH

__all__ = [
    "Lock",
    "load_fresh",
    "path_for",
    "read",
    "relock",
    "resolve",
    "stale_reasons",
    "unknown_names",
    "write",
]

DEBIAN_PYTHON = "/usr/bin/python3"  # python3-apt imports only under Debian's interpreter


def resolve_os(
    req: Requested, cache: Cache, keep: dict[str, str] | None = None, arch: str = HOST_ARCH
) -> tuple[list[DebPackage], list[DebPackage], int]:
    spec = req.spec
    other = [arch] if arch != HOST_ARCH else []  # the host's apt root keeps its old key
    key = digest(spec.base.effective_mirror, spec.base.suite, *spec.base.components, *other)[:16]
    request = {
        "root": str(cache.dir("apt", key)),
        "mirror": spec.base.effective_mirror,
        "suite": spec.base.suite,
        "components": spec.base.components,
        "arch": arch,
        "snapshot": spec.base.snapshot,
        "keep": keep or {},
        "groups": [
            {"name": "shared", "essential": True, "packages": list(req.shared)},
            {"name": "vm", "packages": list(req.vm_for(arch))},
        ],
    }
    if not Path(DEBIAN_PYTHON).exists():
        raise ImageBuildError(f"{DEBIAN_PYTHON} not found: locking needs Debian's python3-apt")
    proc = subprocess.run(
        [DEBIAN_PYTHON, str(Path(__file__).with_name("apt_resolver.py"))],
        input=json.dumps(request),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise ImageBuildError(f"apt resolver failed:\n{proc.stderr.strip()[-2000:]}")
    answer = json.loads(proc.stdout)
    if "fatal" in answer:
        raise SpecError(spec.where("base.mirror"), "base.mirror", answer["fatal"])
    if answer["errors"]:

        def said(e: dict[str, str]) -> str:
            on = "" if arch == HOST_ARCH else f"for {arch} (as {e['package']!r}): "
            return on + e["message"]

        raise SpecError.many(
            [req.package_error(e["package"], said(e), arch) for e in answer["errors"]]
        )
    return (
        [DebPackage(**r) for r in answer["groups"]["shared"]],
        [DebPackage(**r) for r in answer["groups"]["vm"]],
        int(answer["release_epoch"] or 0),
    )


# What the GPU profile's versions are checked against: the VM's driver (VM-only section) and the
# CUDA runtime wheel (the container has no driver; its CUDA comes from the wheels).
GPU_VERSION_PACKAGES = {"driver": "libnvidia-ml1", "cuda": "nvidia-cuda-runtime-cu12"}


def check_gpu_versions(spec: Spec, locked: dict[str, str]) -> None:
    """`gpu.driver` / `gpu.cuda` must be what was really resolved ({name: version} of the VM
    section and the wheels), else a spec error."""
    if not spec.gpu:
        return
    for fld, pkg in GPU_VERSION_PACKAGES.items():
        want = getattr(spec.gpu, fld)
        got = locked.get(pkg)
        if got is not None and not got.startswith(want + "."):
            raise spec.error(
                f"gpu.{fld}",
                f"{want!r} is not what was resolved: {pkg} resolves to {got}",
            )


def resolve(
    req: Requested, cache: Cache, old: Lock | None = None, update: set[str] | None = None
) -> Lock:
    """Resolve everything; nothing is written (the caller writes the lock on success). With an
    `old` lock and `update` names, every other package prefers its locked version, so only the
    named ones and what they drag in move."""
    spec = req.spec
    sections: dict[str, ArchSection] = {}
    epoch = 0
    for arch in spec.base.architectures:
        prev = None if old is None else old.section(arch)
        keep_os = keep_py = None
        if prev is not None and update is not None:
            moving = same_package(update, arch)
            keep_os = {p.name: p.version for p in [*prev.shared, *prev.vm] if p.name not in moving}
            keep_py = {w.name: w.version for w in prev.python if w.name not in moving}
        at = "" if arch == HOST_ARCH else f" ({arch})"
        with progress.stage(
            f"lock: OS packages{at}", f"{spec.base.suite} from {spec.base.effective_mirror}"
        ) as st:
            shared, vm, released = resolve_os(req, cache, keep_os, arch)
            check_gpu_versions(spec, {p.name: p.version for p in vm})
            st["note"] = f"{len(shared)} shared, {len(vm)} VM-only"
        with progress.stage(f"lock: Python{at}", f"cp{spec.python_version} wheels") as st:
            wheels = [Wheel(**w) for w in lock_python(req, keep_py, arch)]
            check_gpu_versions(spec, {w.name: w.version for w in wheels})
            st["note"] = f"{len(wheels)} distributions"
        if epoch and released and released != epoch:  # one lock, one state of the mirror
            raise ImageBuildError(
                f"lock: the mirror's {spec.base.suite} Release changed while {arch} was "
                f"resolved ({rfc3339(epoch)} -> {rfc3339(released)}); run `invoke lock` again"
            )
        epoch = epoch or released  # the suite's Release date (also SOURCE_DATE_EPOCH)
        sections[arch] = ArchSection(shared, vm, wheels)
    host = sections.pop(HOST_ARCH)
    return make(req, host.shared, host.vm, host.python, epoch, sections)


def unknown_names(req: Requested, names: set[str]) -> list[str]:
    """The `--update` names neither the lock (if any) nor the spec knows: a typo, refused."""
    path = path_for(req.spec)
    known = {p.name for p in read(path).files} if path.is_file() else set()
    known |= req.names  # a package the spec (or a new stack) newly asks for
    return sorted(n for n in names if n not in known)


def relock(req: Requested, cache: Cache, names: set[str] | None, dry_run: bool) -> list[str]:
    """Resolve again (`names`: only those and what they drag in) and write the lock unless
    `dry_run`; the lines to say: what moved, then what happened to the file."""
    path = path_for(req.spec)
    old = read(path) if path.is_file() else None
    with cache.exclusive("lock"):
        new = resolve(req, cache, old, names)
    new = stamped(new, old, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    said = (moves(old, new) or ["nothing moved"]) if old is not None else []
    if dry_run:
        return [*said, f"lock: dry run: {path} not written"]
    unchanged = old is not None and path.read_text() == render(new)
    write(new)
    return [*said, f"lock: {'unchanged' if unchanged else 'wrote'} {path}"]
