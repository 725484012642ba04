"""Deterministic layer tars.

A layer is written from a stream of tar entries: entries sorted by path, mtimes clamped to
SOURCE_DATE_EPOCH, owners kept as numeric ids with no names, no atime/ctime/pax extras.
Stage layers are the difference between a container's exported filesystem and the manifest of
the layers below it (whiteouts for removals), so `docker commit`'s timestamps never enter.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from imagebuild import tarnorm
from imagebuild.cache import sha256_file

# Never part of a layer: engine-managed mounts, per-run state, caches and logs.
EXCLUDE_PREFIXES = (
    ".dockerenv",
    "etc/hostname",
    "etc/hosts",
    "etc/resolv.conf",
    "etc/mtab",  # docker's init layer (a link to /proc/mounts), like the three above
    "proc/",
    "sys/",
    "dev/",
    "tmp/",
    "run/",
    "var/tmp/",
    "var/log/",
    "var/cache/apt/",
    "var/lib/apt/lists/",
    "var/cache/ldconfig/aux-cache",
    "var/cache/debconf/",
    "root/.ansible",
    "root/.cache",
    "var/lib/imagebuild/",
)
KEEP_DIRS = {
    "tmp",
    "run",
    "proc",
    "sys",
    "dev",
    "var/tmp",
    "var/log",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/cache/debconf",
}

Manifest = dict[str, list]  # path -> [type, mode, uid, gid, size, mtime, linkname]


def _norm(name: str) -> str:
    name = name.removeprefix("./").lstrip("/")
    return "" if name == "." else name.rstrip("/")


def excluded(path: str) -> bool:
    if path in KEEP_DIRS:
        return False
    return any(
        path == p.rstrip("/") or path.startswith(p if p.endswith("/") else p + "/")
        for p in EXCLUDE_PREFIXES
    )


def _key(info: tarfile.TarInfo) -> list:
    # Permission bits only: docker's export includes the file-type bits, tar writers do not.
    return [
        info.type.decode(),
        info.mode & 0o7777,
        info.uid,
        info.gid,
        info.size,
        int(info.mtime),
        info.linkname,
    ]


def _clean(info: tarfile.TarInfo, name: str, sde: int) -> tarfile.TarInfo:
    out = tarnorm.from_image(info, name, sde)
    if info.islnk():  # a hard link names another entry: the same spelling as the entries
        out.linkname = _norm(info.linkname)
    return out


@dataclass(frozen=True)
class Layer:
    path: Path
    diff_id: str  # sha256 of the uncompressed tar, as docker and OCI name it
    size: int
    entries: int


def _within(path: str, folders: set[str]) -> bool:
    """Whether `path` is one of `folders` or below one (its ancestors looked up)."""
    while path:
        if path in folders:
            return True
        path = path.rpartition("/")[0]
    return False


def _write_sorted(staging: Path, dest: Path, sde: int) -> Layer:
    """Re-write an unsorted staging tar as the final, sorted, normalised layer. A hard-link
    group's data goes with its first name in sorted order and the others link to it: the
    engine extracts in order, so a link must follow its target, whichever name the producer
    (export walk, upper-dir walk) happened to meet first."""
    with tarfile.open(staging) as src:
        members = sorted(src.getmembers(), key=lambda m: m.name)
        by_name = {m.name: m for m in members}
        head: dict[str, str] = {}  # data member's name -> first name of its group
        for m in members:
            head.setdefault(m.linkname if m.islnk() else m.name, m.name)
        with tarfile.open(dest, mode="w", format=tarfile.GNU_FORMAT) as out:
            for m in members:
                data = by_name.get(m.linkname) if m.islnk() else m
                if data is None or not (m.isreg() or m.islnk()):
                    out.addfile(_clean(m, m.name, sde), None)
                elif head[data.name] == m.name:
                    out.addfile(_clean(data, m.name, sde), src.extractfile(data))
                else:
                    info = _clean(m, m.name, sde)
                    info.type, info.linkname, info.size = tarfile.LNKTYPE, head[data.name], 0
                    out.addfile(info)
    return Layer(dest, sha256_file(dest), dest.stat().st_size, len(members))


def _no_reader(path: str) -> bytes:
    raise ValueError(f"hard link to {path} in a lower layer, and no way to read it")


def diff_layer(
    stream: Iterable[bytes],
    below: Manifest,
    dest: Path,
    sde: int,
    read_file: Callable[[str], bytes] = _no_reader,
    deleted: list[str] | None = None,
) -> tuple[Layer, Manifest]:
    """Layer = what `stream` changes relative to `below`. `stream` is a tar of the whole
    filesystem (docker export); or, when `deleted` is given, of only the entries the engine
    reports changed (docker diff) plus those deleted paths, so a small change (the app stage)
    costs no full export. Both give the same layer for the same change."""
    manifest: Manifest = {}
    if deleted is not None:
        gone = {_norm(d) for d in deleted}
        manifest = {p: k for p, k in below.items() if not _within(p, gone)}
    staged: set[str] = set()
    fd, staging = tempfile.mkstemp(suffix=".tar", dir=dest.parent)
    os.close(fd)
    try:
        with (
            tarfile.open(staging, "w", format=tarfile.GNU_FORMAT) as stage,
            tarfile.open(fileobj=IterReader(stream), mode="r|") as src,
        ):
            for info in src:
                path = _norm(info.name)
                if not path or excluded(path):
                    continue
                if info.islnk():  # "./usr/bin/perl" (mmdebstrap) and "usr/bin/perl" (docker)
                    info.linkname = _norm(info.linkname)
                key = _key(info)
                key[5] = min(key[5], sde)  # lower layers' files carry clamped mtimes
                manifest[path] = key
                if below.get(path) == key:
                    continue
                info.name = path
                if info.islnk() and info.linkname not in staged:
                    # Target is in a lower layer: store a copy, a layer cannot link down.
                    data = read_file(info.linkname)
                    info.type, info.size = tarfile.REGTYPE, len(data)
                    stage.addfile(info, io.BytesIO(data))
                    staged.add(path)
                    continue
                stage.addfile(info, src.extractfile(info) if info.isreg() else None)
                staged.add(path)
            removed = sorted(p for p in below if p not in manifest)
            whited: list[str] = []
            for p in removed:
                if any(p.startswith(g + "/") for g in whited):
                    continue  # inside a removed folder: one whiteout covers it
                whited.append(p)
                head, _, tail = p.rpartition("/")
                wh = tarfile.TarInfo(f"{head}/.wh.{tail}" if head else f".wh.{tail}")
                stage.addfile(wh, io.BytesIO(b""))
                staged.add(wh.name)
            _add_parents(stage, staged, manifest)
        layer = _write_sorted(Path(staging), dest, sde)
    finally:
        os.unlink(staging)
    return layer, manifest


def _add_parents(stage: tarfile.TarFile, staged: set[str], manifest: Manifest) -> None:
    """Every entry's folders go into the layer too, as `docker build` does: else the engine
    makes the missing ones with the time of extraction, so the running filesystem's folder
    mtimes would differ from run to run, and a later full export would see them as changes."""
    for path in sorted(staged):
        parent = path.rpartition("/")[0]
        while parent and parent not in staged:
            key = manifest.get(parent)
            if key is None or key[0] != tarfile.DIRTYPE.decode():
                break
            info = tarfile.TarInfo(parent)
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, *key[1:4]
            info.mtime = key[5]
            stage.addfile(info)
            staged.add(parent)
            parent = parent.rpartition("/")[0]


def empty_layer(dest: Path) -> Layer:
    """A stage with nothing to do still gets its layer, so the layer order never shifts."""
    with tarfile.open(dest, "w", format=tarfile.GNU_FORMAT):
        pass
    return Layer(dest, sha256_file(dest), dest.stat().st_size, 0)


def base_layer(rootfs_tar: Path, dest: Path, sde: int) -> tuple[Layer, Manifest]:
    def chunks() -> Iterator[bytes]:
        with rootfs_tar.open("rb") as f:
            while b := f.read(1 << 20):
                yield b

    return diff_layer(chunks(), {}, dest, sde)


class IterReader(io.RawIOBase):
    """A file object over an iterator of byte chunks (docker's export stream)."""

    def __init__(self, it: Iterable[bytes]) -> None:
        self.it, self.buf, self.pos = iter(it), b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        while self.pos >= len(self.buf):
            try:
                self.buf, self.pos = next(self.it), 0
            except StopIteration:
                return 0
        n = min(len(b), len(self.buf) - self.pos)
        b[:n] = memoryview(self.buf)[self.pos : self.pos + n]
        self.pos += n
        return n


def save_manifest(manifest: Manifest, path: Path) -> None:
    path.write_text(json.dumps(manifest, sort_keys=True, separators=(",", ":")))


def load_manifest(path: Path) -> Manifest:
    return json.loads(path.read_text())
