"""The VM targets behind one small factory, as the output formats are: the name `--target`
takes -> its builder, all with one signature. A new target (another cloud) is one new module
and one line here."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from imagebuild.builders import ami, vm
from imagebuild.errors import ImageBuildError
from imagebuild.inputs import Inputs


class Target(Protocol):
    def __call__(
        self, inputs: Inputs, dist: Path, on_error: str, region: str | None
    ) -> vm.VmResult: ...


def _qemu(inputs: Inputs, dist: Path, on_error: str, region: str | None) -> vm.VmResult:
    if region is not None:
        raise ImageBuildError("--aws-region is for --target ami only")
    return vm.build(inputs, dist, on_error)


TARGETS: dict[str, Target] = {"qemu": _qemu, "ami": ami.build}
