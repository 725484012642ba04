"""One writer at a time on a dist folder (an flock, as the cache's): the builds, verify and push
hold it for their whole run, so two builds into one dist, or a build beside verify/push, neither
lose each other's SHA256SUMS lines nor read an artifact half-replaced. A second one waits,
saying who holds it. The lock file lives outside dist/ (named by the folder's real path), so
dist/ holds only outputs and a task refused early creates nothing there."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imagebuild import cache
from imagebuild.errors import ImageBuildError


def lock_dir() -> Path:
    """This user's own lock folder in the temp folder, mode 0700: made if absent, refused if
    it is a link, another user's or open to others (a shared folder such as /tmp or
    /run/lock would let anyone plant the files root then writes)."""
    d = Path(tempfile.gettempdir()) / f"imagebuild-locks-{os.geteuid()}"
    with contextlib.suppress(FileExistsError):
        d.mkdir(mode=0o700)
    st = d.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise ImageBuildError(f"{d} is not this user's own folder (mode 0700): remove it")
    return d


def lock_file(dist: Path) -> Path:
    return lock_dir() / f"dist-{hashlib.sha256(str(dist.resolve()).encode()).hexdigest()[:32]}"


# Dist folders this process holds: a task's own writes (SHA256SUMS under build-container) go
# through without waiting on the task itself (an flock taken twice by one process would).
_held: set[Path] = set()


@contextmanager
def exclusive(dist: Path, task: str) -> Iterator[None]:
    key = dist.resolve()
    if key in _held:
        yield
        return
    with cache.exclusive(lock_file(key), task, f"the dist folder {dist}"):
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)
