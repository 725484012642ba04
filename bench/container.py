"""Benchmark: warm fetch, cold build-container, app-only rebuild, no-op rebuild, image size.

    .venv/bin/python bench/container.py [--cache-dir DIR]

Uses a private copy of examples/onnx-serve; the cold build gets an empty stage cache (the
verified downloads are reused through hard links, so no network time is counted). Prints a
Markdown table. Targets from issue #3: app-only <= 5 s, no-op <= 1 s.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import docker
from common import DEFAULT_CACHE, cold_cache, private_example, table, timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default=DEFAULT_CACHE)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ib-bench-"))
    try:
        spec = private_example(work, args.cache_dir)
        warm_fetch, _ = timed("fetch", "--spec", spec, "--cache-dir", args.cache_dir)
        cache = cold_cache(args.cache_dir, work / "cache")
        common = ["--spec", spec, "--cache-dir", str(cache), "--dist", str(work / "dist")]
        cold, r = timed("build-container", *common)
        with (Path(spec).parent / "app" / "app" / "__init__.py").open("a") as f:
            f.write("# bench touch\n")
        app_only, _ = timed("build-container", *common)
        noop, _ = timed("build-container", *common)
        tag = next(ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("image "))
        size = docker.from_env().images.get(tag).attrs["Size"]
        table(
            [
                ("fetch, warm cache", f"{warm_fetch:.1f} s", "< 2 s"),
                ("build-container, cold (empty stage cache)", f"{cold:.1f} s", ""),
                ("build-container, app file changed", f"{app_only:.1f} s", "<= 5 s"),
                ("build-container, nothing changed", f"{noop:.1f} s", "<= 1 s"),
                ("image size", f"{size / 1e6:.0f} MB", ""),
            ]
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
