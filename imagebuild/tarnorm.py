"""Tar entries, one rule for every archive imagebuild writes (the docker and OCI archives, the
OVA, the Vagrant box, the app archive, `fetch --export`): owned by root as numbers (uid/gid 0,
no user or group names: numbers are what an unpack applies), a fixed date (SOURCE_DATE_EPOCH),
a fixed mode. Entries copied from an image's filesystem (the layers) keep their owners and
modes and only lose the names and get their dates clamped: `from_image`."""

from __future__ import annotations

import errno
import io
import os
import tarfile
from pathlib import Path
from typing import BinaryIO


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
        if not _copy_in_kernel(tar, info, f):
            tar.addfile(info, f)


def _copy_in_kernel(tar: tarfile.TarFile, info: tarfile.TarInfo, src: BinaryIO) -> bool:
    """Append `info` and its data to an uncompressed tar being written to a file, the data
    copied by the kernel (copy_file_range: no trip through Python's 16 KiB buffers; an app-only
    rebuild rewrites a ~450 MB OCI archive of unchanged layers: 0.33 s -> 0.14 s measured).
    False, with nothing written, where that does not apply (a stream, another filesystem)."""
    out = tar.fileobj
    if tar.mode != "w" or out is None or not isinstance(out, io.BufferedWriter):
        return False
    header = info.tobuf(tar.format, tar.encoding, tar.errors)
    out.flush()
    start = out.tell()
    out.write(header)
    out.flush()
    done = 0
    try:
        while done < info.size:
            n = os.copy_file_range(src.fileno(), out.fileno(), info.size - done)
            if n == 0:
                raise OSError(f"{src.name}: shorter than {info.size} bytes")
            done += n
    except OSError as e:
        if done or e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        out.seek(start)
        out.truncate()
        return False
    out.seek(0, os.SEEK_END)
    blocks, rest = divmod(info.size, tarfile.BLOCKSIZE)
    if rest:
        out.write(tarfile.NUL * (tarfile.BLOCKSIZE - rest))
        blocks += 1
    tar.offset += len(header) + blocks * tarfile.BLOCKSIZE
    return True


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
