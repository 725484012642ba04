"""ext4 filesystems made from a folder without mounting (`mkfs.ext4 -d`), the same bytes from
the same folder: a fixed UUID, hash seed and creation time (E2FSPROGS_FAKE_TIME), times no
later than the source date (the caller clamps the folder's), and each inode's change and
access times pinned afterwards, because e2fsprogs 1.47.0 (Debian 12) copies them from the
folder's inodes, where the kernel set them (1.47.1 clamps them to SOURCE_DATE_EPOCH itself).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from imagebuild import tools
from imagebuild.errors import ImageBuildError

BLOCK = 4096  # the block size, and the base disk's qcow2 cluster size (builders.disk)
# Pinned on every inode: the change time (see above) and the access time (mkfs copies it too,
# and reading the folder moves it: the same folder made twice differs by it).
TIMES = ("ctime", "atime")


class Ext4Error(ImageBuildError):
    pass


def make_image(
    src: Path, dest: Path, size: int, label: str, fs_uuid: str, sde: int, offset: int = 0
) -> None:
    """A filesystem holding `src`, at `offset` in `dest` (made sparse if missing)."""
    ext = f"offset={offset},root_owner=0:0,hash_seed={fs_uuid}"
    if not dest.exists():
        with dest.open("wb") as f:
            f.truncate(size)
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(sde)}
    tools.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-b",
            str(BLOCK),
            "-L",
            label,
            "-U",
            fs_uuid,
            "-E",
            ext,
            "-d",
            str(src),
            str(dest),
            f"{(size - offset) // 1024}k",
        ],
        env=env,
    )
    _pin_change_and_access_times(f"{dest}?offset={offset}", sde, env)


def used_inodes(dumpe2fs: str) -> list[int]:
    """The root folder's inode and every inode in use past the reserved ones, from `dumpe2fs`'s
    per-group free inode ranges."""
    count = int(_field(dumpe2fs, "Inode count"))
    first = int(_field(dumpe2fs, "First inode"))
    free: set[int] = set()
    for ranges in re.findall(r"^\s+Free inodes: ?(.*)$", dumpe2fs, re.M):
        for r in filter(None, (x.strip() for x in ranges.split(","))):
            lo, _, hi = r.partition("-")
            free.update(range(int(lo), int(hi or lo) + 1))
    return [i for i in (2, *range(first, count + 1)) if i not in free]


def _field(dumpe2fs: str, name: str) -> str:
    m = re.search(rf"^{name}:\s+(\S+)", dumpe2fs, re.M)
    if m is None:
        raise Ext4Error(f"dumpe2fs printed no '{name}'")
    return m.group(1)


def _pin_change_and_access_times(fs: str, sde: int, env: dict[str, str]) -> None:
    """Set every used inode's TIMES to `sde` with debugfs (inode numbers only: no path from the
    tree is ever parsed by it). ~25,000 inodes: 0.1 s."""
    listing = tools.run(["dumpe2fs", fs], env=env).stdout
    script = "".join(f"sif <{i}> {t} @{sde}\n" for i in used_inodes(listing) for t in TIMES)
    r = tools.run(["debugfs", "-w", "-f", "-", fs], env=env, input=script)
    errors = [ln for ln in r.stderr.splitlines() if not ln.startswith("debugfs ")]
    if errors:
        raise Ext4Error(f"debugfs could not pin change times in {fs}: {errors[:3]}")
