"""What a task starts from, each read once: the spec, what it requests (imagebuild.requested),
and its lock, checked fresh on first use. `all` hands the one it loaded to each of its tasks."""

from __future__ import annotations

import copy
from functools import cached_property

from imagebuild import lock as locking
from imagebuild import requested
from imagebuild.spec import Spec, load


class Project:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.req = requested.of(spec)

    @classmethod
    def named(cls, spec: str | Spec | Project) -> Project:
        """The project of a task's `--spec` (a path), or the one `all` already loaded."""
        if isinstance(spec, Project):
            return spec
        return cls(spec if isinstance(spec, Spec) else load(spec))

    @cached_property
    def lock(self) -> locking.Lock:
        """The spec's lock, refused when stale (StaleLockError names every difference)."""
        return locking.load_fresh(self.req)

    def for_arch(self, arch: str) -> Project:
        """The project as a build of `arch` reads it: its lock is that section's view
        (Lock.for_arch), checked fresh as the file's."""
        view = copy.copy(self)
        view.__dict__["lock"] = self.lock.for_arch(arch)
        return view

    def check(self) -> locking.Lock:
        """The lock, read and checked now: a stale one is refused before anything runs."""
        return self.lock
