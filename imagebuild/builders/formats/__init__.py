"""One module per VM output format, behind a small factory (as KIWI does): each makes its file
from a qcow2, either the finished disk (the base disk, or an app overlay's; uncompressed: fast
to read, so such a format runs while the disk is compressed) or the compressed one (what the
format ships). A new format is one new module + one line in FORMATS."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from imagebuild import distnames, vmboot
from imagebuild.builders.formats import gce, ova, qcow2, raw, vagrant, vhd, virtualbox, vmware
from imagebuild.spec import Spec


class Format(Protocol):
    SUFFIX: str
    COMPRESSED_INPUT: bool  # made from the compressed qcow2 (else from the finished disk)
    HARDWARE: vmboot.Hardware  # the disk controller and NIC it declares (verify boots on them)
    # The system disk: its member's name pattern in the archive (None: the file is the disk)
    # and qemu-img's name of its format (verify.vmdisk takes it out and boots it).
    SYSTEM_DISK: tuple[str | None, str]

    def make(self, disk: Path, dest: Path, spec: Spec, sde: int) -> None: ...


FORMATS: dict[str, Format] = {
    "qcow2": qcow2,
    "ova": ova,
    "vagrant": vagrant,
    "virtualbox": virtualbox,
    "vmware": vmware,
    "vhd": vhd,
    "gce": gce,
    "raw": raw,
}


def filename(fmt: str, spec: Spec) -> str:
    return distnames.name(spec, FORMATS[fmt].SUFFIX)
