"""The VM's root tree as the base disk takes it (imagebuild.builders.disk): no state of a
machine that ran, and no time later than the lock's source date, so that the same layers give
the same filesystem bytes; the shipped disk is this tree, never a booted one.

The tree comes from a container that a spec's base image and packages made: any folder in it
may be a symbolic link, to anywhere on this host. Nothing here follows one: every path is
resolved one real folder at a time (`inside`), links are removed as links, and a file is
written only where no link stands.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import stat
from pathlib import Path

from imagebuild.errors import ImageBuildError

# What a first boot makes for itself, or a build leaves behind, as vm_finalize removes it from
# a booted guest (its shell list; both must name the same things): package scripts' SSH host
# keys and machine-id, Ansible's and apt's leftovers, a boot's seed, leases, history, cloud-init
# state. verify's disk hygiene reads the shipped disk for each of them.
REMOVE = (
    "etc/ssh/ssh_host_*",
    "var/lib/dbus/machine-id",
    "var/lib/systemd/random-seed",
    "var/lib/dhcp/*",
    "var/lib/imagebuild",  # the sources mount point (resolved.SOURCES_DIR)
    "var/cache/apt/archives/*.deb",
    "var/lib/cloud/instance",
    "var/lib/cloud/instances",
    "var/lib/cloud/data",
    "var/lib/cloud/sem",
    "var/log/journal/*",
    "var/cache/ldconfig/aux-cache",
    "var/cache/debconf/*-old",
    "var/lib/apt/lists/*_*",
    "var/cache/apt/*.bin",
    "tmp/*",
    "var/tmp/*",
    "root/.ansible",
    "root/.cache",
    "root/.ssh/authorized_keys",
    "root/.*_history",
    "root/.lesshst",
    "root/.viminfo",
    "home/*/.*_history",
)
EMPTY = ("etc/machine-id",)  # present and empty: systemd makes the machine's own at first boot
LOGS = "var/log"  # every file emptied, kept with its owner and mode (as vm_finalize does)


class TreeError(ImageBuildError):
    pass


def inside(rootfs: Path, rel: str) -> Path:
    """`rootfs/rel`, where every folder on the way is a real folder of the tree (no link)."""
    path = rootfs
    for part in Path(rel).parts[:-1]:
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return rootfs / rel  # nothing there to follow
        if not stat.S_ISDIR(mode):
            raise TreeError(f"/{rel}: /{path.relative_to(rootfs)} in the VM's tree is not a folder")
    return rootfs / rel


def write_file(rootfs: Path, rel: str, text: str) -> None:
    """Write `rootfs/rel` as a new regular file, mode 0644 (a link or file already there is
    replaced; missing folders made 0755: never the builder's umask)."""
    path = inside(rootfs, rel)
    missing = [p for p in reversed(path.parents) if not p.exists() and not p.is_symlink()]
    for folder in missing:
        folder.mkdir()
        folder.chmod(0o755)
    remove(rootfs, rel)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def remove(rootfs: Path, rel: str) -> None:
    """Remove `rootfs/rel` if there is anything there (a link as a link)."""
    path = inside(rootfs, rel)
    if path.is_symlink() or path.exists():
        _remove(path)


def copy_files(rootfs: Path, rel: str, dest: Path) -> Path:
    """The regular files of the tree's folder `rel` copied into `dest` (made), for a host tool
    to read: a link there is left out, never followed to a file of this host."""
    folder = inside(rootfs, rel + "/x").parent
    dest.mkdir()
    if folder.is_symlink() or not folder.is_dir():
        return dest
    for entry in sorted(folder.iterdir()):
        if not stat.S_ISREG(os.lstat(entry).st_mode):
            continue  # a link, a device node, a fifo: never opened
        fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as src:
            if stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                (dest / entry.name).write_bytes(src.read())
    return dest


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)  # never follows a link inside
    else:
        path.unlink()


def _matches(rootfs: Path, pattern: str) -> list[Path]:
    """Entries of the tree matching `pattern` (globs in any part), found one real folder at a
    time: a link is matched as itself, never entered."""
    found = [rootfs]
    parts = Path(pattern).parts
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        found = [
            p
            for folder in found
            if folder.is_dir() and not folder.is_symlink()
            for p in sorted(folder.iterdir())
            if fnmatch.fnmatchcase(p.name, part) and (last or not p.is_symlink())
        ]
    return found


def sysprep(rootfs: Path) -> list[str]:
    """Remove every instance's state (REMOVE, EMPTY, LOGS); returns what it removed."""
    gone = []
    for pattern in REMOVE:
        for p in _matches(rootfs, pattern):
            _remove(p)
            gone.append("/" + str(p.relative_to(rootfs)))
    for rel in EMPTY:
        write_file(rootfs, rel, "")
    for logs in _matches(rootfs, LOGS):
        if logs.is_symlink() or not logs.is_dir():
            continue
        for folder, _, files in os.walk(logs, onerror=_raise):  # never enters a linked folder
            for name in files:
                path = os.path.join(folder, name)
                if stat.S_ISREG(os.lstat(path).st_mode):
                    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
                    os.ftruncate(fd, 0)
                    os.close(fd)
    return gone


def _raise(e: OSError) -> None:
    raise TreeError(f"reading the VM's tree: {e}")


def clamp_times(rootfs: Path, sde: int) -> None:
    """Every entry's modification (and access) time no later than `sde`, as the container's
    layers have them (a package script's files carry the build's time otherwise). The change
    times mkfs copies are the kernel's; imagebuild.builders.ext4 pins those in the filesystem."""
    for folder, dirs, files in os.walk(rootfs, onerror=_raise):
        for name in (*dirs, *files):
            path = os.path.join(folder, name)
            m = min(int(os.lstat(path).st_mtime), sde)
            os.utime(path, (m, m), follow_symlinks=False)
    m = min(int(os.lstat(rootfs).st_mtime), sde)
    os.utime(rootfs, (m, m))
