"""The disk verify boots, from whichever VM artifact the user ships: the qcow2 as it is, the
Vagrant box's system disk (`box.img`), the OVA's VMDK, the VHD, the raw disk or the GCE
tarball's `disk.raw`, each converted to qcow2. They all hold conversions of the one disk the
qcow2 is; `qemu-img compare` shows that they hold the same
guest-visible bytes as the qcow2 beside them, so verifying one proves the others. Every disk
here came from outside this run: each passes `diskimage.check` before qemu-img or QEMU reads it."""

from __future__ import annotations

import fnmatch
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from imagebuild import diskimage, tools, vmboot
from imagebuild.builders.formats import FORMATS
from imagebuild.errors import ImageBuildError


class DiskError(ImageBuildError):
    pass


@dataclass(frozen=True)
class Disk:
    artifact: Path  # what the user named
    bootable: Path  # the qcow2 verify boots (the artifact itself, or taken out of it)
    kind: str  # a format of builders.formats
    disk_gb: int  # the virtual size its disks were checked to have (the spec's vm.disk_gb)
    fmt: str = "qcow2"  # qemu-img's name of `bootable`'s format

    @property
    def hardware(self) -> vmboot.Hardware:
        """The disk controller and NIC its format declares (verify boots it on them)."""
        return FORMATS[self.kind].HARDWARE


# The disk inside an archive: its member's name pattern and format (as each format says).
MEMBER = {
    k: (m.SYSTEM_DISK[0], m.SYSTEM_DISK[1])
    for k, m in FORMATS.items()
    if m.SYSTEM_DISK[0] is not None
}
# The artifacts that are the disk itself, and qemu-img's name of their format.
DIRECT = {k: m.SYSTEM_DISK[1] for k, m in FORMATS.items() if m.SYSTEM_DISK[0] is None}
ZEROS = bytes(1 << 20)


def kind_of(artifact: Path) -> str:
    for fmt, module in FORMATS.items():
        if artifact.name.endswith(module.SUFFIX):
            return fmt
    suffixes = ", ".join(m.SUFFIX for m in FORMATS.values())
    raise DiskError(f"--vm {artifact}: not a VM artifact imagebuild makes ({suffixes})")


def _member(tar: tarfile.TarFile, artifact: Path, pattern: str) -> tarfile.TarInfo:
    found = [m for m in tar.getmembers() if m.isfile() and fnmatch.fnmatchcase(m.name, pattern)]
    if len(found) != 1 or "/" in found[0].name:
        raise DiskError(
            f"{artifact}: expected one {pattern} disk at its top, found "
            f"{[m.name for m in found] or 'none'}"
        )
    return found[0]


def _extract(artifact: Path, pattern: str, dest: Path, most: int) -> str:
    """One disk member streamed out of the tar (never `extractall`: the name is not trusted),
    refused first when it says it is larger than `most` bytes; returns its name."""
    try:
        with tarfile.open(artifact) as tar:
            member = _member(tar, artifact, pattern)
            if member.size > most:
                raise DiskError(
                    f"{artifact}: {member.name} is {member.size} bytes, more than a disk of "
                    f"this spec's size holds ({most})"
                )
            src = tar.extractfile(member)
            assert src is not None
            with src, dest.open("wb") as out:
                # zeros become holes: a raw disk is mostly zeros, and written sparse it costs
                # what its data does
                for chunk in iter(lambda: src.read(len(ZEROS)), b""):
                    if chunk == ZEROS[: len(chunk)]:
                        out.seek(len(chunk), os.SEEK_CUR)
                    else:
                        out.write(chunk)
                out.truncate()
    except tarfile.TarError as e:
        raise DiskError(f"{artifact}: not a readable tar ({e})") from None
    return member.name


def bootable(artifact: Path, work: Path, disk_gb: int, to_qcow2: bool = True) -> Disk:
    """The qcow2 to boot for `artifact`, in `work` when it must be taken out of an archive or
    converted (`to_qcow2=False`: the checked disk in its own format, e.g. only to compare)."""
    kind = kind_of(artifact)
    if not artifact.is_file():
        raise DiskError(f"VM disk {artifact} not found; run `invoke build-vm` or pass --vm")
    work.mkdir(parents=True, exist_ok=True)
    if kind in DIRECT:
        # Checked and read as one inode: a link in `work` (else a copy), so a file put in its
        # place after the check is not what QEMU opens.
        fmt = DIRECT[kind]
        disk = work / f"disk.{fmt}"
        try:
            os.link(artifact, disk)
        except OSError:  # another filesystem
            shutil.copyfile(artifact, disk)
        diskimage.check(disk, fmt, disk_gb, str(artifact))
    else:
        pattern, fmt = MEMBER[kind]
        disk = work / f"disk.{fmt}"
        # a disk image holds at most its virtual size and some metadata (a raw one: exactly)
        member = _extract(artifact, pattern, disk, (disk_gb << 30) + (disk_gb << 30) // 8)
        diskimage.check(disk, fmt, disk_gb, f"{artifact}: {member}")
    if fmt != "qcow2" and to_qcow2:  # QEMU boots a qcow2 (an overlay on it)
        other, disk, fmt = disk, work / f"{kind}.qcow2", "qcow2"
        tools.run(["qemu-img", "convert", "-f", other.suffix[1:], "-O", fmt, other, disk])
        other.unlink()
    return Disk(artifact, disk, kind, disk_gb, fmt)


def same_as(disk: Disk, qcow2: Path) -> None:
    """Refuse an artifact whose disk is not the qcow2's (guest-visible bytes)."""
    diskimage.check(qcow2, "qcow2", disk.disk_gb, str(qcow2))
    same = tools.run(
        ["qemu-img", "compare", "-q", "-f", disk.fmt, "-F", "qcow2", disk.bootable, qcow2],
        ok=(0, 1),
    )
    if same.returncode:
        raise DiskError(
            f"{disk.artifact.name}: its disk differs from {qcow2.name} "
            "(`qemu-img compare`): they were not made from one build"
        )
