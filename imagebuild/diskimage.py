"""What a disk image file claims, checked before qemu-img or QEMU read it.

A qcow2 can name a backing file or an external data file, and a VMDK can be a descriptor whose
extents are other files: `qemu-img convert` and QEMU then read those host files (as root, here)
into the disk they write or boot (the class of CVE-2024-32498). So every disk imagebuild did not
just write itself (a base disk pulled from the registry cache; the qcow2, box.img or OVA VMDK
given to `verify`) passes `problem` first: its first bytes, read here (even `qemu-img info`
opens a VMDK descriptor's extents, and hangs on a FIFO among them), then `qemu-img info` with
the format named, never probed (it opens no backing or data file): one file, the spec's size.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagebuild import tools
from imagebuild.errors import ImageBuildError

if TYPE_CHECKING:
    from imagebuild.cache_entries import Consistency


class DiskImageError(ImageBuildError):
    pass


MAGIC = {"qcow2": b"QFI\xfb", "vmdk": b"KDMV"}  # a VMDK's sparse extent header
# The VMDKs that are one file, their own only extent (what `qemu-img convert` and VMware write).
VMDK_TYPES = ("streamOptimized", "monolithicSparse")


def info(path: Path, fmt: str = "qcow2") -> dict[str, Any]:
    """`qemu-img info` of a `fmt` file. The path is absolute so that a name like `nbd:x` is
    never read as a protocol."""
    argv = ["qemu-img", "info", "--output=json", "-f", fmt, str(path.absolute())]
    return json.loads(tools.run(argv).stdout)


def _vhd_problem(path: Path) -> str | None:
    """A fixed VHD is the raw disk then a footer; a dynamic or differencing one (which names a
    parent file) has other structures: refused."""
    with path.open("rb") as f:
        front = f.read(8)
        size = f.seek(0, os.SEEK_END)
        if size < 512:
            return "not a VHD (shorter than its footer)"
        f.seek(size - 512)
        footer = f.read(512)
    if front == b"conectix":  # QEMU reads a footer copy at the front first: a dynamic VHD's
        return "a VHD with a footer copy at its front (a dynamic one), not a fixed one"
    if not footer.startswith(b"conectix"):
        return f"not a VHD (its footer begins with {footer[:8]!r})"
    if (kind := struct.unpack_from(">I", footer, 60)[0]) != 2:
        return f"a VHD of disk type {kind}, not a fixed one (2)"
    return None


def _header_problem(path: Path, fmt: str) -> str | None:
    if not path.is_file():
        return "not a regular file"
    if fmt == "raw":  # no header: qemu-img's word, the format named, is all there is
        return None
    if fmt == "vpc":
        return _vhd_problem(path)
    with path.open("rb") as f:
        head = f.read(20)
    if fmt == "vmdk" and head.startswith(b"# Disk Descriptor"):
        return "a VMDK descriptor (its extents are other files)"
    if not head.startswith(MAGIC[fmt]):
        return f"not a {fmt} file (it begins with {head[:4]!r})"
    # QEMU reads a sparse VMDK header without a capacity as a pointer to an embedded
    # descriptor, whose extents can be any other files.
    if fmt == "vmdk" and (len(head) < 20 or struct.unpack_from("<Q", head, 12)[0] == 0):
        return "a VMDK header without a capacity (QEMU reads its descriptor: other files)"
    return None


def _info_problem(path: Path, fmt: str, disk_gb: int) -> str | None:
    try:
        got = info(path, fmt)
    except tools.ToolError as e:
        return f"qemu-img cannot read it as {fmt}: {str(e).splitlines()[-1]}"
    data = got.get("format-specific", {}).get("data", {})
    if got.get("format") != fmt:
        return f"it is {got.get('format')}, not {fmt}"
    if backing := got.get("full-backing-filename") or got.get("backing-filename"):
        return f"it names a backing file ({backing})"
    if data.get("data-file"):
        return f"it names an external data file ({data['data-file']})"
    if fmt == "vmdk":
        if data.get("create-type") not in VMDK_TYPES:
            return f"a {data.get('create-type')} VMDK, not {' or '.join(VMDK_TYPES)}"
        extents = [e.get("filename") for e in data.get("extents", [])]
        if extents != [str(path.absolute())]:
            return f"its extents are {extents}, not the file itself"
    if got.get("virtual-size") != disk_gb << 30:
        return (
            f"its virtual size is {got.get('virtual-size')} bytes, not the spec's "
            f"vm.disk_gb: {disk_gb} ({disk_gb << 30} bytes)"
        )
    return None


def problem(path: Path, fmt: str, disk_gb: int) -> str | None:
    """Why `path` is not one self-contained `fmt` disk of `disk_gb` GiB, or None. Nothing but
    this reads the file or what it names."""
    return _header_problem(path, fmt) or _info_problem(path, fmt, disk_gb)


def check(path: Path, fmt: str, disk_gb: int, name: str) -> None:
    """Refuse `path` (called `name` in the message) unless `problem` finds nothing."""
    if found := problem(path, fmt, disk_gb):
        raise DiskImageError(f"{name}: {found}; refused before qemu-img or QEMU read it")


def entry_rule(rule: Consistency, name: str, fmt: str, disk_gb: int) -> Consistency:
    """A registry cache entry's `rule`, then its disk `name` checked: a disk that names other
    files or has another size is refused before it is sealed, and built here instead."""

    def consistent(folder: Path, digests: dict[str, str]) -> str | None:
        if found := rule(folder, digests):
            return found
        found = problem(folder / name, fmt, disk_gb)
        return f"{name}: {found}" if found else None

    return consistent
