"""raw: the disk as plain bytes (sparse: holes where the disk is zeros), for bare metal (`dd` it
to a drive) and anything that reads no image format."""

from __future__ import annotations

from pathlib import Path

from imagebuild import tools, vmboot
from imagebuild.spec import Spec

SUFFIX = ".raw"
COMPRESSED_INPUT = False  # bytes are bytes: read the finished disk, the faster one
HARDWARE = vmboot.VIRTIO
SYSTEM_DISK: tuple[str | None, str] = (None, "raw")


def make(disk: Path, dest: Path, spec: Spec, sde: int) -> None:
    tools.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", disk, dest])
