"""qcow2: Packer's disk, compressed (`qemu-img convert -c`, which also drops unused clusters)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from imagebuild.spec import Spec

SUFFIX = ".qcow2"
COMPRESSED_INPUT = True


def compress(disk: Path, dest: Path) -> None:
    subprocess.run(
        ["qemu-img", "convert", "-c", "-O", "qcow2", str(disk), str(dest)],
        check=True, capture_output=True,
    )  # fmt: skip


def make(disk: Path, dest: Path, spec: Spec, sde: int) -> None:
    os.link(disk, dest)  # the other compressed-input formats still read `disk`: a link is free
