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
from imagebuild import requested
from imagebuild import spec as specmod
from imagebuild.keys import STAGES
from imagebuild.resolved import resolve
from tests.conftest import EXAMPLE, copy_example


def _keys(spec_path: Path) -> dict[str, str]:
    spec = specmod.load(spec_path)
    lock = locking.read(spec_path.with_suffix(".lock"))
    keys = keying.compute(resolve(requested.of(spec), lock))
    return keys.stages | {"disk": keys.disk, "vm": keys.vm, "vm_but_app": keys.vm_but_app}


def _changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [k for k in before if before[k] != after[k]]


@pytest.fixture
def example(tmp_path: Path) -> Path:
    spec = copy_example(tmp_path / "onnx-serve")
    shutil.copy(EXAMPLE / "imagebuild.lock", spec.with_suffix(".lock"))
    return spec


ABOVE = {s: list(STAGES[i:]) + ["disk", "vm", "vm_but_app"] for i, s in enumerate(STAGES)}


def APP_FILE_EDIT(p: Path) -> None:  # noqa: N802 (a constant: the one edit of the app's files)
    (p.parent / "app" / "app" / "__init__.py").write_text('__version__ = "9"\n')


@pytest.mark.parametrize(
    ("edit", "first"),
    [
        (APP_FILE_EDIT, "app"),
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
    moved = _changed(before, _keys(example))
    # An app file moves everything above the app stage but `vm_but_app` (what an app-only
    # change overlays); the env, as every other input of the app stage, moves it too.
    own_files = edit is APP_FILE_EDIT
    assert moved == [k for k in ABOVE[first] if not (own_files and k == "vm_but_app")]


def test_nothing_changed_nothing_moves(example: Path) -> None:
    assert _keys(example) == _keys(example)


def test_vm_settings_move_no_layer(example: Path) -> None:
    """The VM's disk size is the base disk's input; its memory only the finished VM's (the
    OVA and the box record it)."""
    before = _keys(example)
    example.write_text(example.read_text().replace("  disk_gb: 6", "  disk_gb: 7"))
    assert _changed(before, _keys(example)) == ["disk", "vm", "vm_but_app"]
    before = _keys(example)
    example.write_text(example.read_text().replace("memory_mb: 2048", "memory_mb: 4096"))
    assert _changed(before, _keys(example)) == ["vm", "vm_but_app"]
