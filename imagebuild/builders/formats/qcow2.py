"""qcow2: the finished disk, compressed (`qemu-img convert -c`, which drops unused clusters)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from imagebuild import tools, vmboot
from imagebuild.spec import Spec

SUFFIX = ".qcow2"
COMPRESSED_INPUT = True
HARDWARE = vmboot.VIRTIO
SYSTEM_DISK: tuple[str | None, str] = (None, "qcow2")  # the artifact is the disk
COMPRESSION = ["-c"]  # zlib, which every qemu reads (zstd would need qemu >= 5.1)


def start_compress(disk: Path, dest: Path) -> subprocess.Popen[bytes]:
    return tools.start(
        ["qemu-img", "convert", *COMPRESSION, "-f", "qcow2", "-O", "qcow2", disk, dest]
    )


def make(disk: Path, dest: Path, spec: Spec, sde: int) -> None:
    os.link(disk, dest)  # the other compressed-input formats still read `disk`: a link is free
