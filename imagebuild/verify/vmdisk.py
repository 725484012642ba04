"""The disk verify boots, from whichever VM artifact the user ships: the qcow2 as it is, the
Vagrant box's system disk (`box.img`), or the OVA's VMDK converted to qcow2. The box and the OVA
hold conversions of the one disk the qcow2 is; `qemu-img compare` shows that they hold the same
guest-visible bytes as the qcow2 beside them, so verifying one proves the others. Every disk
here came from outside this run: each passes `diskimage.check` before qemu-img or QEMU reads it."""

from __future__ import annotations

import fnmatch
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from imagebuild import diskimage, tools
from imagebuild.builders.formats import FORMATS
from imagebuild.errors import ImageBuildError


class DiskError(ImageBuildError):
    pass


@dataclass(frozen=True)
class Disk:
    artifact: Path  # what the user named
    bootable: Path  # the qcow2 verify boots (the artifact itself, or taken out of it)
    kind: str  # qcow2, vagrant or ova
    disk_gb: int  # the virtual size its disks were checked to have (the spec's vm.disk_gb)


# The disk inside an archive: its member's name pattern and format.
MEMBER = {"vagrant": ("box.img", "qcow2"), "ova": ("*.vmdk", "vmdk")}


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


def _extract(artifact: Path, pattern: str, dest: Path) -> str:
    """One disk member streamed out of the tar (never `extractall`: the name is not trusted);
    returns its name."""
    try:
        with tarfile.open(artifact) as tar:
            member = _member(tar, artifact, pattern)
            src = tar.extractfile(member)
            assert src is not None
            with src, dest.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except tarfile.TarError as e:
        raise DiskError(f"{artifact}: not a readable tar ({e})") from None
    return member.name


def bootable(artifact: Path, work: Path, disk_gb: int) -> Disk:
    """The qcow2 to boot for `artifact`, in `work` when it must be taken out of an archive."""
    kind = kind_of(artifact)
    if not artifact.is_file():
        raise DiskError(f"VM disk {artifact} not found; run `invoke build-vm` or pass --vm")
    if kind == "qcow2":
        # Checked and booted as one inode: a link in `work` (else a copy), so a file put in its
        # place after the check is not what QEMU opens.
        work.mkdir(parents=True, exist_ok=True)
        disk = work / "disk.qcow2"
        try:
            os.link(artifact, disk)
        except OSError:  # another filesystem
            shutil.copyfile(artifact, disk)
        diskimage.check(disk, "qcow2", disk_gb, str(artifact))
        return Disk(artifact, disk, kind, disk_gb)
    pattern, fmt = MEMBER[kind]
    work.mkdir(parents=True, exist_ok=True)
    disk = work / f"disk.{fmt}"
    member = _extract(artifact, pattern, disk)
    diskimage.check(disk, fmt, disk_gb, f"{artifact}: {member}")
    if fmt == "vmdk":  # QEMU boots (and `same_as` compares) a qcow2
        vmdk, disk = disk, work / "ova.qcow2"
        tools.run(["qemu-img", "convert", "-f", "vmdk", "-O", "qcow2", vmdk, disk])
        vmdk.unlink()
    return Disk(artifact, disk, kind, disk_gb)


def same_as(disk: Disk, qcow2: Path) -> None:
    """Refuse a box or OVA whose disk is not the qcow2's (guest-visible bytes)."""
    diskimage.check(qcow2, "qcow2", disk.disk_gb, str(qcow2))
    same = tools.run(
        ["qemu-img", "compare", "-q", "-f", "qcow2", "-F", "qcow2", disk.bootable, qcow2], ok=(0, 1)
    )
    if same.returncode:
        raise DiskError(
            f"{disk.artifact.name}: its disk differs from {qcow2.name} "
            "(`qemu-img compare`): they were not made from one build"
        )
