"""The VM targets behind one small factory, as the output formats are: the name `--target`
takes -> its builder, all with one signature. A new target (another cloud) is one new module
and one line here."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from imagebuild.builders import ami, vm
from imagebuild.cache import Cache
from imagebuild.errors import ImageBuildError
from imagebuild.fetch import FetchResult
from imagebuild.lock.lockfile import Lock
from imagebuild.spec import Spec


class Target(Protocol):
    def __call__(self, spec: Spec, lock: Lock, cache: Cache, fetched: FetchResult, dist: Path,
                 on_error: str, region: str | None) -> vm.VmResult: ...  # fmt: skip


def _qemu(spec: Spec, lock: Lock, cache: Cache, fetched: FetchResult, dist: Path,
          on_error: str, region: str | None) -> vm.VmResult:  # fmt: skip
    if region is not None:
        raise ImageBuildError("--aws-region is for --target ami only")
    return vm.build(spec, lock, cache, fetched, dist, on_error)


TARGETS: dict[str, Target] = {"qemu": _qemu, "ami": ami.build}
