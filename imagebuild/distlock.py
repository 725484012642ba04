"""One writer at a time on a dist folder (an flock, as the cache's): the builds, verify and push
hold it for their whole run, so two builds into one dist, or a build beside verify/push, neither
lose each other's SHA256SUMS lines nor read an artifact half-replaced. A second one waits,
saying who holds it. The lock file lives outside dist/ (named by the folder's real path), so
dist/ holds only outputs and a task refused early creates nothing there."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imagebuild import cache

# Root's lock folder (a tmpfs on Debian: no lock outlives a reboot); else the temp folder.
LOCK_DIR = Path(
    "/run/lock/imagebuild" if os.access("/run/lock", os.W_OK) else "/tmp/imagebuild-locks"
)


def lock_file(dist: Path) -> Path:
    return LOCK_DIR / f"dist-{hashlib.sha256(str(dist.resolve()).encode()).hexdigest()[:32]}"


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
