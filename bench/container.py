"""Benchmark: warm fetch, cold build-container, app-only rebuild, no-op rebuild, image size.

    .venv/bin/python bench/container.py [--cache-dir DIR]

Uses a private copy of examples/onnx-serve; the cold build gets an empty stage cache (the
verified downloads are reused through hard links, so no network time is counted). Prints a
Markdown table. Targets from issue #3: app-only <= 5 s, no-op <= 1 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parent.parent
INVOKE = str(Path(sys.executable).with_name("invoke"))


def timed(*args: str) -> tuple[float, str]:
    start = time.monotonic()
    r = subprocess.run([INVOKE, *args], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{r.stderr[-2000:]}")
    return time.monotonic() - start, r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--cache-dir",
        default=os.environ.get("IMAGEBUILD_CACHE", str(Path.home() / ".cache/imagebuild")),
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ib-bench-"))
    try:
        proj = work / "onnx-serve"
        shutil.copytree(
            ROOT / "examples/onnx-serve", proj, ignore=shutil.ignore_patterns("__pycache__")
        )
        spec = str(proj / "imagebuild.yaml")
        timed("lock", "--spec", spec, "--cache-dir", args.cache_dir)
        timed("fetch", "--spec", spec, "--cache-dir", args.cache_dir)
        warm_fetch, _ = timed("fetch", "--spec", spec, "--cache-dir", args.cache_dir)
        cache = work / "cache"
        shutil.copytree(
            args.cache_dir,
            cache,
            copy_function=os.link,
            ignore=shutil.ignore_patterns("stages", "apt"),
        )
        common = ["--spec", spec, "--cache-dir", str(cache), "--dist", str(work / "dist")]
        cold, out = timed("build-container", *common)
        (proj / "app" / "app" / "__init__.py").open("a").write("# bench touch\n")
        app_only, _ = timed("build-container", *common)
        noop, _ = timed("build-container", *common)
        tag = next(ln.split()[1] for ln in out.splitlines() if ln.startswith("image "))
        size = docker.from_env().images.get(tag).attrs["Size"]
        rows = [
            ("fetch, warm cache", f"{warm_fetch:.1f} s", "< 2 s"),
            ("build-container, cold (empty stage cache)", f"{cold:.1f} s", ""),
            ("build-container, app file changed", f"{app_only:.1f} s", "<= 5 s"),
            ("build-container, nothing changed", f"{noop:.1f} s", "<= 1 s"),
            ("image size", f"{size / 1e6:.0f} MB", ""),
        ]
        print("| measure | value | target |\n|---|---|---|")
        for r in rows:
            print(f"| {r[0]} | {r[1]} | {r[2]} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
