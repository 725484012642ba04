"""Shared fixtures. Real engines only: tests that need the network or an engine are marked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "onnx-serve"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # "No tests collected" (5) must fail CI just like a failure does.
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def run_invoke(
    *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run a task exactly as a user would, from the project root."""
    invoke = str(Path(sys.executable).with_name("invoke"))
    return subprocess.run(
        [*prefix, invoke, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=1800,
    )


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.exists() else set()


def copy_example(dest: Path) -> Path:
    """A private copy of the bundled example, so tests never write into the repo."""
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("*.lock", "__pycache__"))
    return dest / "imagebuild.yaml"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def locked_example(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """The example, locked and fetched once per session (real mirror, real PyPI)."""
    spec = copy_example(tmp_path_factory.mktemp("example") / "onnx-serve")
    for task in ("lock", "fetch"):
        r = run_invoke(task, "--spec", str(spec), "--cache-dir", str(cache_dir))
        assert r.returncode == 0, r.stderr
    return spec
