"""Tar entries, one rule for every archive imagebuild writes (the docker and OCI archives, the
OVA, the Vagrant box, the app archive, `fetch --export`): owned by root as numbers (uid/gid 0,
no user or group names: numbers are what an unpack applies), a fixed date (SOURCE_DATE_EPOCH),
a fixed mode. Entries copied from an image's filesystem (the layers) keep their owners and
modes and only lose the names and get their dates clamped: `from_image`."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def ours(info: tarfile.TarInfo, mtime: int, mode: int = 0o644) -> tarfile.TarInfo:
    """`info` (in place) as an entry imagebuild made: root's, dated `mtime`, mode `mode`."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime, info.mode = mtime, mode
    return info


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: int, mode: int = 0o644) -> None:
    info = ours(tarfile.TarInfo(name), mtime, mode)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_file(tar: tarfile.TarFile, name: str, path: Path, mtime: int, mode: int = 0o644) -> None:
    """A regular file's bytes under `name` (streamed: disks are gigabytes)."""
    info = ours(tarfile.TarInfo(name), mtime, mode)
    info.size = path.stat().st_size
    with path.open("rb") as f:
        tar.addfile(info, f)


def from_image(info: tarfile.TarInfo, name: str, sde: int) -> tarfile.TarInfo:
    """A copy of an image's entry: type, owner numbers, permission bits, link and device kept;
    names dropped; the date clamped to `sde` (never later than the lock's epoch)."""
    out = tarfile.TarInfo(name)
    out.type, out.mode, out.uid, out.gid = info.type, info.mode & 0o7777, info.uid, info.gid
    out.size = info.size if info.isreg() else 0
    out.mtime = min(int(info.mtime), sde)
    out.linkname = info.linkname
    out.devmajor, out.devminor = info.devmajor, info.devminor
    return out
