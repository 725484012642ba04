"""`invoke rebuild --check`: what an independent rebuilder runs. The spec is built again from its
lock in a private cache (inside this one, so that a killed rebuild is swept like any scratch
folder): the lock's downloads and local repos are linked from this cache (content-addressed,
every blob's sha256 checked again), nothing a build derives is (no stage unless
`reuse_layers`, no disk). It makes the container's OCI archive and every VM format from a base
disk of its own, into a private folder, and compares each with the sha256 DIST/SHA256SUMS
lists. Packer's pass is not run: it boots a throw-away overlay and writes nothing that ships.
No image is left in the engine nor tagged under the spec's name (the stages' working tags
go with the rebuild; a killed one's are swept on the next run). A disk that differs is read
file by file (builders.disk_diff) and its differing files named."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from imagebuild import checksums, distnames, leftovers, progress
from imagebuild import fetch as fetching
from imagebuild.builders import container, context, disk, disk_diff, stages, vm_outputs
from imagebuild.builders.formats import filename
from imagebuild.builders.oci_archive import OciArchive
from imagebuild.cache import Cache, sha256_file
from imagebuild.errors import ImageBuildError
from imagebuild.inputs import Inputs, prepare
from imagebuild.project import Project
from imagebuild.spec_sections import HOST_ARCH

SIDES = ("the shipped one", "the rebuilt one")
DERIVED = ("stages", "disks", "vms", "inventories", "apt", "logs")  # made by builds, never linked


class RebuildError(ImageBuildError):
    pass


@dataclass(frozen=True)
class Compared:
    name: str
    shipped: str  # sha256 in DIST/SHA256SUMS
    rebuilt: str
    files: tuple[str, ...] | None = None  # a read disk's differing files, first ones

    @property
    def same(self) -> bool:
        return self.shipped == self.rebuilt

    def render(self) -> str:
        if self.same:
            return f"same    {self.name} sha256:{self.shipped[:12]}"
        where = ""
        if self.files is not None:
            where = "; differing files: " + (
                ", ".join(self.files)
                or "none (the filesystem's own metadata differs: inode times, allocation)"
            )
        return (
            f"DIFFERS {self.name} shipped sha256:{self.shipped[:12]} "
            f"rebuilt sha256:{self.rebuilt[:12]}{where}"
        )


def artifacts(dist: Path, p: Project, reuse_layers: bool, arch: str = HOST_ARCH) -> dict[str, str]:
    """The files a rebuild remakes, with the sha256 DIST/SHA256SUMS gives each (no OCI
    archive from reused layers: it would be theirs again, which proves nothing)."""
    spec = p.spec
    names = [] if reuse_layers else [distnames.path(dist, spec, distnames.OCI).name]
    names += [filename(f, spec) for f in spec.vm.formats]
    sums = checksums.read(dist)
    missing = [n for n in names if n not in sums]
    if missing:
        flag = "" if arch == HOST_ARCH else f" --arch {arch}"
        raise RebuildError(
            f"{dist / checksums.NAME} lists no {', '.join(missing)}: build them there first "
            f"(build-container{flag}, build-vm{flag}), then check them"
        )
    return {n: sums[n] for n in names}


@contextmanager
def private_cache(cache: Cache, reuse_layers: bool) -> Iterator[Cache]:
    """A cache of the downloads alone (hard links), removed afterwards."""
    skip = DERIVED if not reuse_layers else tuple(d for d in DERIVED if d != "stages")
    root = Path(tempfile.mkdtemp(prefix=leftovers.SCRATCH.rstrip("*") + "rebuild-", dir=cache.root))
    try:
        for entry in sorted(cache.root.iterdir()):
            # not the cache's lock files (one inode: the rebuild would wait on itself) nor a
            # scratch or half-made entry
            if entry.name in skip or entry.name.startswith((leftovers.SCRATCH.rstrip("*"), ".")):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, root / entry.name, symlinks=True, copy_function=os.link)
            elif entry.is_file() and not entry.is_symlink():
                os.link(entry, root / entry.name)
        yield Cache(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def rebuild(inputs: Inputs, out: Path, oci: bool) -> dict[str, Path]:
    """Every VM format of `inputs`, and the OCI archive if `oci`, made in `out` (nothing else)."""
    spec, lock = inputs.spec, inputs.lock
    made: dict[str, Path] = {}
    with context.new_build(inputs) as b, contextlib.ExitStack() as stack:
        below = None
        if oci:
            path = distnames.path(out, spec, distnames.OCI)
            archive = stack.enter_context(OciArchive(path))
            below = partial(container.below_app, archive)
        layers, _ = stages.build_layers(b, "rebuild", below)
        if oci:
            config = container.final_config(inputs.resolved, layers).render(layers)
            archive.finish(config, layers, spec.version, container.oci_annotations(spec))
            made["oci"] = path
        base = disk.base_disk(b, layers)
        formats = {f: out / filename(f, spec) for f in spec.vm.formats}
        with progress.stage("rebuild: VM formats", ", ".join(formats)):
            vm_outputs.make_formats(base.path, formats, spec, lock, keep=True)
    return {p.name: p for p in (made | formats).values()}


def check(
    p: Project, cache: Cache, dist: Path, reuse_layers: bool = False, arch: str = HOST_ARCH
) -> list[Compared]:
    """Rebuild `p` for `arch` privately and compare each artifact with DIST's (that
    architecture's folder); the differing disks read. Another architecture's `p` is the spec as
    its VM is made (targets.made_as: the disk-only formats), as build-vm made it."""
    shipped = artifacts(dist, p, reuse_layers, arch)
    with cache.exclusive("rebuild"):
        leftovers.sweep(cache, "rebuild")  # what a killed rebuild (or build) left
        found = _check(p.for_arch(arch), cache, dist, shipped, reuse_layers)
    return found


def _check(
    p: Project, cache: Cache, dist: Path, shipped: dict[str, str], reuse_layers: bool
) -> list[Compared]:
    with private_cache(cache, reuse_layers) as own:
        with progress.stage("rebuild: verify cache"):
            fetched = fetching.local_sources(p.lock, own)
        inputs = prepare(p.req, p.lock, own, fetched)
        out = own.root / "out"
        out.mkdir()
        rebuilt = rebuild(inputs, out, oci=not reuse_layers)
        found = []
        for name, sha in shipped.items():
            new = sha256_file(rebuilt[name])
            files = None
            if new != sha and disk_diff.readable(dist / name):
                with progress.stage("rebuild: compare files", name):
                    gb = p.spec.vm.disk_gb
                    files = tuple(
                        disk_diff.differing(dist / name, rebuilt[name], own.root, gb, SIDES)
                    )
            found.append(Compared(name, sha, new, files))
    return found
