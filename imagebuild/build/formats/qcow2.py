"""qcow2: Packer's own output (compressed by its qemu-img convert), moved into place."""

from __future__ import annotations

import os
from pathlib import Path

from imagebuild.spec import Spec

SUFFIX = ".qcow2"


def make(disk: Path, dest: Path, spec: Spec, sde: int) -> None:
    os.link(disk, dest)  # the other formats still read `disk`; a link costs nothing
