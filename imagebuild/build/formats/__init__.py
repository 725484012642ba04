"""One module per VM output format, behind a small factory (as KIWI does): each takes the qcow2
Packer wrote and makes its file. A new format is one new module + one line in FORMATS."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from imagebuild.build.formats import ova, qcow2, vagrant
from imagebuild.spec import Spec


class Format(Protocol):
    SUFFIX: str

    def make(self, disk: Path, dest: Path, spec: Spec, sde: int) -> None: ...


FORMATS: dict[str, Format] = {"qcow2": qcow2, "ova": ova, "vagrant": vagrant}


def filename(fmt: str, spec: Spec) -> str:
    return f"{spec.name}-{spec.version}{FORMATS[fmt].SUFFIX}"
