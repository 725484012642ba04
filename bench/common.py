"""Shared by the bench scripts: run a task timed, a private copy of the example, a cache that
reuses the verified downloads (hard links) but none of the build caches, a Markdown table."""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INVOKE = str(Path(sys.executable).with_name("invoke"))
DEFAULT_CACHE = os.environ.get("IMAGEBUILD_CACHE", str(Path.home() / ".cache/imagebuild"))


def timed(*args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.monotonic()
    r = subprocess.run([INVOKE, *args], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{r.stderr[-2000:]}")
    return time.monotonic() - start, r


def stage_seconds(stdout: str) -> dict[str, float]:
    """The `seconds NAME S, NAME S` line a build prints, as a dict."""
    line = next(ln for ln in stdout.splitlines() if ln.startswith("seconds "))
    parts = [part.rsplit(" ", 1) for part in line.removeprefix("seconds ").split(", ")]
    return {name: float(sec) for name, sec in parts}


BENCH_REPOSITORY = "imagebuild-bench"  # the benches' images: never a user's tag


def private_example(
    work: Path,
    cache_dir: str,
    edit: Callable[[Path], None] | None = None,
    example: str = "onnx-serve",
) -> str:
    """A copy of examples/ (some examples share files) with its committed lock, its image
    tagged under BENCH_REPOSITORY; `edit` may change the spec. The lock is used as it is
    (what a user builds); only an edit that changes its inputs re-resolves it (`lock` on an
    existing lock keeps every pin it can). Fetched into `cache_dir`; returns the spec."""
    shutil.copytree(
        ROOT / "examples",
        work / "examples",
        ignore=shutil.ignore_patterns("__pycache__", "dist"),
        dirs_exist_ok=True,
    )
    spec = work / "examples" / example / "imagebuild.yaml"
    text, n = re.subn(
        r"(?m)^(  repository: )\S+$", rf"\1{BENCH_REPOSITORY}/{example}", spec.read_text(), count=1
    )
    assert n == 1, f"{spec}: no container.repository line to replace"
    spec.write_text(text)
    if edit:
        edit(spec)
    check = subprocess.run(
        [INVOKE, "lock", "--check", "--spec", str(spec)], cwd=ROOT, capture_output=True, text=True
    )
    if check.returncode != 0:
        timed("lock", "--spec", str(spec), "--cache-dir", cache_dir)
    timed("fetch", "--spec", str(spec), "--cache-dir", cache_dir)
    return str(spec)


def cold_cache(cache_dir: str, dest: Path) -> Path:
    """Downloads and repos linked, nothing a build derives (stages, disks, the app overlay's VMs,
    inventories): a cold build without network time."""
    from imagebuild.builders.rebuild import DERIVED  # what `rebuild --check` leaves out too
    from imagebuild.leftovers import SCRATCH

    root = Path(cache_dir)

    def ignore(folder: str, names: list[str]) -> set[str]:
        # The cache's lock files, linked, would make a build here hold (and wait on) the
        # source's lock; every other dot file stays (an entry's .seal.json: without it the
        # repos and wheelhouse are refused).
        top = Path(folder) == root
        return {
            n
            for n in names
            if fnmatch.fnmatch(n, SCRATCH) or (top and (n in DERIVED or n.startswith(".lock")))
        }

    shutil.copytree(cache_dir, dest, copy_function=os.link, ignore=ignore)
    return dest


def table(rows: list[tuple[str, str, str]], last: str = "target", value: str = "value") -> None:
    print(f"| measure | {value} | {last} |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


@contextmanager
def bench(
    doc: str, prefix: str, edit: Callable[[Path], None] | None = None
) -> Iterator[tuple[str, Path, str, list[str]]]:
    """Parse `--cache-dir`, make a scratch folder with a private locked example and a cold cache;
    yield (cache_dir, work, spec, the common task options); remove the folder afterwards."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--cache-dir", default=DEFAULT_CACHE)
    cache_dir = ap.parse_args().cache_dir
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        spec = private_example(work, cache_dir, edit)
        cache = cold_cache(cache_dir, work / "cache")
        yield (
            cache_dir,
            work,
            spec,
            ["--spec", spec, "--cache-dir", str(cache), "--dist", str(work / "dist")],
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
