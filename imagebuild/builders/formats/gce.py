"""gce: `disk.raw` in a gzipped GNU tar, the file Compute Engine creates an image from
(`gcloud compute images create --source-uri gs://.../NAME.tar.gz`). Made by GNU tar (oldgnu
format, sparse: Python's tarfile writes no sparse members, and the disk is mostly holes) and
`gzip -n -1` (no name, no time; level 1: on the example 7.4 s and 206 MB against level 6's
18.9 s and 189 MB), with the member's name, owner, mode and time fixed: the same disk gives the
same file."""

from __future__ import annotations

import tempfile
from pathlib import Path

from imagebuild import tools, vmboot
from imagebuild.builders.formats import raw
from imagebuild.spec import Spec

SUFFIX = ".gce.tar.gz"
COMPRESSED_INPUT = False
HARDWARE = vmboot.Hardware("virtio-scsi", "virtio")  # Compute Engine's default
MEMBER = "disk.raw"  # the one name Compute Engine reads
SYSTEM_DISK: tuple[str | None, str] = (MEMBER, "raw")


def make(disk: Path, dest: Path, spec: Spec, sde: int) -> None:
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".gce-") as tmp:
        raw.make(disk, Path(tmp, MEMBER), spec, sde)  # the raw format's file, under its name
        tools.run(
            ["tar", "--format=oldgnu", "--sparse", "--sort=name", f"--mtime=@{sde}"]
            + ["--owner=0", "--group=0", "--numeric-owner", "--mode=0644"]
            + ["--use-compress-program=gzip -n -1", "-C", tmp, "-cf", dest, MEMBER]
        )
