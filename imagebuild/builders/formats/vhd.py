"""vhd: a fixed VHD as Azure takes a page blob: the raw disk then a 512-byte footer, its
virtual size whole MiB (vm.disk_gb GiB is) and exact (`force_size`: no rounding to a CHS
geometry, which Azure refuses). qemu-img stamps the footer with the time and a random UUID;
both are set here from the lock's source date and the artifact's name, and the footer's
checksum made again: the same disk gives the same file (a sparse one: holes stay holes)."""

from __future__ import annotations

import os
import struct
import uuid
from pathlib import Path

from imagebuild import tools, vmboot
from imagebuild.spec import Spec

SUFFIX = ".vhd"
COMPRESSED_INPUT = False
HARDWARE = vmboot.VIRTIO  # Azure's are Hyper-V's synthetic devices, which QEMU has not
SYSTEM_DISK: tuple[str | None, str] = (None, "vpc")  # qemu-img's name of the VHD format
FOOTER = 512
VHD_EPOCH = 946684800  # 2000-01-01T00:00:00Z, where a VHD's clock starts
_UUIDS = uuid.UUID("2d6c3b43-8a55-4a3e-9f0c-7f1e2b9c4d11")


def footer_checksum(footer: bytes) -> int:
    """One's complement of the byte sum, the checksum field (64..68) counted as zeros."""
    return ~sum(footer[:64] + footer[68:]) & 0xFFFFFFFF


def pin_footer(path: Path, when: int, ident: uuid.UUID) -> None:
    with path.open("r+b") as f:
        f.seek(-FOOTER, os.SEEK_END)
        footer = bytearray(f.read(FOOTER))
        if footer[:8] != b"conectix":
            raise tools.ToolError(f"{path}: qemu-img wrote no VHD footer")
        struct.pack_into(">I", footer, 24, max(0, when - VHD_EPOCH))
        footer[68:84] = ident.bytes
        struct.pack_into(">I", footer, 64, footer_checksum(bytes(footer)))
        f.seek(-FOOTER, os.SEEK_END)
        f.write(footer)


def make(disk: Path, dest: Path, spec: Spec, sde: int) -> None:
    tools.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "vpc"]
        + ["-o", "subformat=fixed,force_size=on", disk, dest]
    )
    pin_footer(dest, sde, uuid.uuid5(_UUIDS, f"{dest.name}:{sde}"))
