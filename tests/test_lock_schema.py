"""Tampered locks are refused before anything is built from them: exit 3 naming the lock file,
the line and the field, and nothing outside the cache is created, changed or removed."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
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
    ("python", 0, "size", None),  # every download stops at the row's size
    ("header", None, "mirror", "http://deb.debian.org/debian' ; touch /tmp/imagebuild-pwned ; '"),
    ("header", None, "source_date_epoch", "0; id"),
    ("header", None, "suite", "bookworm/../../x"),
    ("header", None, "resolved_at", "2026-11-30T04:00:00Z\n; id"),
    ("header", None, "index_date", 10**30),
    ("header", None, "pypi_index", "https://evil.example/simple"),
    ("header", None, "mirror", "http://evil.example/debian"),  # a URL, but not the spec's
    ("header", None, "suite", "trixie"),
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
        data["header"],
        data["inputs"],
        [lockfile.DebPackage(**r) for r in data["os_shared"]],
        [lockfile.DebPackage(**r) for r in data["os_vm_only"]],
        [lockfile.Wheel(**r) for r in data["python"]],
        path,
    )
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


def _section_line(lines: list[str], section: str) -> int:
    return next(i for i, ln in enumerate(lines) if ln.startswith(f'  "{section}"')) + 1


def _dup_in_row(lines: list[str]) -> tuple[int, str]:
    n = _section_line(lines, "os_shared") + 2  # os_shared[1]
    lines[n - 1] = lines[n - 1].replace('{"arch"', '{"size":1,"arch"', 1)
    return n, "'size' given twice in one object"


def _dup_in_header(lines: list[str]) -> tuple[int, str]:
    n = _section_line(lines, "header")
    lines[n - 1] = lines[n - 1].replace(
        '{"arch"', '{"pypi_index": "https://evil.example/s", "arch"'
    )
    return n, "'pypi_index' given twice in one object"


def _dup_section(lines: list[str]) -> tuple[int, str]:
    """A second, empty os_vm_only: json.loads would keep it and drop every VM package."""
    close = lines.index("}")  # the top-level object's end, after the python section's
    lines[close - 1] += ',\n  "os_vm_only": []'
    return close + 1, "'os_vm_only' given twice in one object"


def _in_both_sections(lines: list[str]) -> tuple[int, str]:
    shared, vm = _section_line(lines, "os_shared"), _section_line(lines, "os_vm_only")
    lines.insert(vm, lines[shared + 1])  # os_shared[1] (apt) again, as os_vm_only[0]
    return vm + 1, f"os_vm_only[0].name: 'apt' is also os_shared[1] (line {shared + 2})"


def _index_and_wheel(lines: list[str]) -> tuple[int, str]:
    """What passed before: the index and a wheel's URL moved to one other host together."""
    n = _section_line(lines, "header")
    lines[n - 1] = lines[n - 1].replace("https://pypi.org/simple", "https://evil.example/simple")
    first = _section_line(lines, "python") + 1
    lines[first - 1] = lines[first - 1].replace("files.pythonhosted.org", "evil.example")
    return first, "python[0].url: 'evil.example' is not https://pypi.org/simple's file host"


EDITS = [_dup_in_row, _dup_in_header, _dup_section, _in_both_sections, _index_and_wheel]


@pytest.mark.parametrize("edit", EDITS, ids=[e.__name__.strip("_") for e in EDITS])
def test_keys_twice_rows_twice_and_other_hosts_are_refused_at_their_line(
    tmp_path: Path, edit: Callable[[list[str]], tuple[int, str]]
) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "onnx-serve", ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / "onnx-serve" / "imagebuild.lock"
    lines = path.read_text().split("\n")
    line, message = edit(lines)
    path.write_text("\n".join(lines))
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    r = run_invoke("lock", "--check", "--spec", str(path.with_suffix(".yaml")))
    assert r.returncode == 3, r.stdout + r.stderr
    assert f"{path}:{line}: {message}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "up to date" not in r.stdout
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
