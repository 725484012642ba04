"""One writer at a time on a dist folder (flock on `dist/.lock`, as the cache's): the builds,
verify and push hold it for their whole run, so two builds into one dist, or a build beside
verify/push, neither lose each other's SHA256SUMS lines nor read an artifact half-replaced.
A second one waits, saying who holds it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imagebuild import cache

# Dist folders this process holds: a task's own writes (SHA256SUMS under build-container) go
# through without waiting on the task itself (an flock taken twice by one process would).
_held: set[Path] = set()


@contextmanager
def exclusive(dist: Path, task: str) -> Iterator[None]:
    key = dist.resolve()
    if key in _held:
        yield
        return
    with cache.exclusive(key, task, f"the dist folder {dist}"):
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)
