"""Which input change invalidates which cache key, computed from the committed example and its
lock (no engine, no network, well under a second): a change reaches its own stage and the
stages above it, never a stage below; the VM's base disk key follows the container's and the
finished VM's follows the base disk's."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from imagebuild import keys as keying
from imagebuild import lock as locking
from imagebuild import spec as specmod
from imagebuild.keys import STAGES
from imagebuild.resolved import resolve
from tests.conftest import EXAMPLE, copy_example


def _keys(spec_path: Path) -> dict[str, str]:
    spec = specmod.load(spec_path)
    lock = locking.read(spec_path.with_suffix(".lock"))
    keys = keying.compute(resolve(spec, lock))
    return keys.stages | {"disk": keys.disk, "vm": keys.vm}


def _changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [k for k in before if before[k] != after[k]]


@pytest.fixture
def example(tmp_path: Path) -> Path:
    spec = copy_example(tmp_path / "onnx-serve")
    shutil.copy(EXAMPLE / "imagebuild.lock", spec.with_suffix(".lock"))
    return spec


ABOVE = {s: list(STAGES[i:]) + ["disk", "vm"] for i, s in enumerate(STAGES)}


@pytest.mark.parametrize(
    ("edit", "first"),
    [
        (
            lambda p: (p.parent / "app" / "app" / "__init__.py").write_text('__version__ = "9"\n'),
            "app",
        ),
        (
            lambda p: p.write_text(
                p.read_text().replace('OMP_NUM_THREADS: "1"', 'OMP_NUM_THREADS: "2"')
            ),
            "app",
        ),
        (lambda p: p.write_text(p.read_text().replace("user: app", "user: svc")), "os"),
    ],
    ids=["app file", "runtime env", "runtime user"],
)
def test_a_change_reaches_its_stage_and_those_above(example: Path, edit, first: str) -> None:
    before = _keys(example)
    edit(example)
    assert _changed(before, _keys(example)) == ABOVE[first]


def test_nothing_changed_nothing_moves(example: Path) -> None:
    assert _keys(example) == _keys(example)


def test_vm_settings_move_no_layer(example: Path) -> None:
    """The VM's disk size is the base disk's input; its memory only the finished VM's (the
    OVA and the box record it)."""
    before = _keys(example)
    example.write_text(example.read_text().replace("  disk_gb: 6", "  disk_gb: 7"))
    assert _changed(before, _keys(example)) == ["disk", "vm"]
    before = _keys(example)
    example.write_text(example.read_text().replace("memory_mb: 2048", "memory_mb: 4096"))
    assert _changed(before, _keys(example)) == ["vm"]
