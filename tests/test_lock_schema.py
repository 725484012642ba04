"""Tampered locks are refused before anything is built from them: exit 3 naming the lock file,
the line and the field, and nothing outside the cache is created, changed or removed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from imagebuild.lock import lockfile
from tests.conftest import EXAMPLE, run_invoke

# (section, row, field, hostile value)
TAMPERED = [
    ("os_shared", 0, "sha256", "../../../sentinel"),
    ("os_shared", 0, "name", "apt;touch /tmp/imagebuild-pwned"),
    ("os_shared", 2, "version", "1.0$(touch /tmp/imagebuild-pwned)"),
    ("os_vm_only", 0, "filename", "pool/../../../../sentinel.deb"),
    ("os_vm_only", 1, "arch", "amd64 && id"),
    ("python", 0, "url", "http://files.pythonhosted.org/x.whl"),
    ("python", 0, "url", "https://evil.example/packages/x.whl"),
    ("python", 1, "filename", "../../sentinel.whl"),
    ("python", 1, "name", "numpy\nEvil"),
    ("python", 2, "sha256", "A" * 64),
    ("python", 2, "group", "../app"),
    ("header", None, "mirror", "http://deb.debian.org/debian' ; touch /tmp/imagebuild-pwned ; '"),
    ("header", None, "source_date_epoch", "0; id"),
    ("header", None, "suite", "bookworm/../../x"),
    ("header", None, "resolved_at", "2026-11-30T04:00:00Z\n; id"),
    ("header", None, "index_date", 10**30),
]


def _tampered(tmp_path: Path, section: str, row: int | None, field: str, value: object) -> Path:
    shutil.copytree(EXAMPLE, tmp_path / "onnx-serve", ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / "onnx-serve" / "imagebuild.lock"
    data = json.loads(path.read_text())
    if row is None:
        data[section][field] = value
    else:
        data[section][row][field] = value
    lock = lockfile.Lock(
        data["header"], data["inputs"],
        [lockfile.DebPackage(**r) for r in data["os_shared"]],
        [lockfile.DebPackage(**r) for r in data["os_vm_only"]],
        [lockfile.Wheel(**r) for r in data["python"]], path,
    )  # fmt: skip
    path.write_text(lockfile.render(lock))  # the one-row-per-line layout `invoke lock` writes
    return path


IDS = [f"{s}-{f}-{i}" for i, (s, _, f, _) in enumerate(TAMPERED)]


@pytest.mark.parametrize(("section", "row", "field", "value"), TAMPERED, ids=IDS)
def test_a_tampered_lock_is_refused_naming_line_and_field(
    tmp_path: Path, section: str, row: int | None, field: str, value: object
) -> None:
    path = _tampered(tmp_path, section, row, field, value)
    sentinel = tmp_path / "sentinel"
    sentinel.write_text("keep me\n")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    cache = tmp_path / "cache"
    r = run_invoke("fetch", "--spec", str(path.with_suffix(".yaml")), "--cache-dir", str(cache))
    assert r.returncode == 3, r.stderr
    lines = path.read_text().splitlines()
    if row is None:
        where = next(i for i, ln in enumerate(lines) if ln.startswith('  "header"')) + 1
        name = f"header.{field}"
    else:
        start = next(i for i, ln in enumerate(lines) if ln.startswith(f'  "{section}"'))
        where, name = start + 2 + row, f"{section}[{row}].{field}"
    assert f"{path}:{where}: {name}:" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert sentinel.read_text() == "keep me\n" and not Path("/tmp/imagebuild-pwned").exists()
    assert not cache.exists() or not any(cache.rglob("*.deb"))
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p in before} == before


def test_the_committed_example_locks_are_well_formed() -> None:
    for path in EXAMPLE.parent.glob("*/imagebuild.lock"):
        lockfile.read(path)  # raises StaleLockError naming the problem
