"""Which files of two VM disks differ, in the spirit of diffoscope: each disk checked to be one
self-contained disk of the spec's size (diskimage: no backing or data file), its root partition
copied out (qemu-img, as verify reads it), its filesystem dumped by debugfs (no mount, no loop
device) into a private folder, then compared entry by entry: type, mode, owner, size,
modification time, link target and bytes. Used by `rebuild --check` to say where two builds of
one disk part.

The shipped disk is anyone's: its names may hold `/` or `..`, and a link and a file may share a
name, so debugfs's dump runs in bubblewrap (vmboot.dump_argv). The comparison never follows a
link."""

from __future__ import annotations

import filecmp
import os
import stat
import tempfile
from pathlib import Path

from imagebuild import diskimage, tools, vmboot
from imagebuild.builders.disk import PART_OFFSET

LIMIT = 20  # differing paths named at most
FORMATS = {".qcow2": "qcow2", ".raw": "raw"}


def readable(path: Path) -> bool:
    """A disk this module reads (the qcow2 and the raw disk; the other formats hold the same
    guest-visible bytes, which verify --vm checks)."""
    return path.suffix in FORMATS


def _root(disk: Path, tmp: Path, name: str, disk_gb: int) -> Path:
    """`disk`'s root filesystem as a folder (debugfs rdump keeps modes, owners and times)."""
    diskimage.check(disk, FORMATS[disk.suffix], disk_gb, disk.name)
    if disk.suffix == ".qcow2":
        (tmp / f"{name}-part").mkdir()
        fs = str(vmboot.partition_image(disk, tmp / f"{name}-part"))
    else:
        fs = f"{disk}?offset={PART_OFFSET}"
    tree = tmp / name
    tree.mkdir()
    tools.run(vmboot.dump_argv(fs, tree))
    return tree


def _row(path: str) -> tuple[int, int, int, int, int, str]:
    """What is compared of an entry. debugfs's dump dates a regular file as the disk does, but
    not a link (it sets no link's time): a link's and a folder's times are left out."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return (st.st_mode, st.st_uid, st.st_gid, 0, 0, os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return (st.st_mode, st.st_uid, st.st_gid, 0, 0, "")
    return (st.st_mode, st.st_uid, st.st_gid, st.st_size, int(st.st_mtime), "")


def _entries(tree: Path) -> dict[str, str]:
    """Path inside the disk -> its path here, every entry (links not followed)."""
    found = {}
    for folder, dirs, files in os.walk(tree):
        for name in (*dirs, *files):
            here = os.path.join(folder, name)
            found["/" + os.path.relpath(here, tree)] = here
    return found


def shown(name: str) -> str:
    """A name from a disk as printed: escaped unless plainly printable (no forged lines)."""
    return name if name.isprintable() else ascii(name)


def differing(
    a: Path,
    b: Path,
    work: Path,
    disk_gb: int,
    sides: tuple[str, str] = ("", ""),
    limit: int = LIMIT,
) -> list[str]:
    """The first `limit` paths (sorted) whose entry differs between disks `a` and `b` of
    `disk_gb` GiB, then `...` if there are more; a path on one disk only is named once, with
    `(only in SIDE)`, not what is below it (`sides`: what to call them; file names by default)."""
    sides = (sides[0] or a.name, sides[1] or b.name)
    with tempfile.TemporaryDirectory(prefix="disk-diff-", dir=work) as t:
        tmp = Path(t)
        left = _entries(_root(a, tmp, "a", disk_gb))
        right = _entries(_root(b, tmp, "b", disk_gb))
        out: list[str] = []
        alone = ""  # the last path found on one side only: what is below it is not named
        for path in sorted(left.keys() | right.keys()):
            if alone and path.startswith(alone + "/"):
                continue
            if path not in right or path not in left:
                alone = path
                out.append(f"{shown(path)} (only in {sides[0] if path in left else sides[1]})")
            elif _row(left[path]) != _row(right[path]) or (
                os.path.isfile(left[path])
                and not os.path.islink(left[path])
                and not filecmp.cmp(left[path], right[path], shallow=False)
            ):
                out.append(shown(path))
            else:
                continue
            if len(out) > limit:
                return [*out[:limit], "..."]
        return out
