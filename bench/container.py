"""Benchmark: warm fetch, cold build-container, app-only rebuild, no-op rebuild, image size.

    .venv/bin/python bench/container.py [--cache-dir DIR]

Uses a private copy of examples/onnx-serve; the cold build gets an empty stage cache (the
verified downloads are reused through hard links, so no network time is counted). Prints a
Markdown table. Targets from issue #3: app-only <= 5 s, no-op <= 1 s.
"""

from __future__ import annotations

from pathlib import Path

import docker
from common import bench, table, timed


def main() -> None:
    with bench(__doc__, "ib-bench-") as (cache_dir, work, spec, common):
        warm_fetch, _ = timed("fetch", "--spec", spec, "--cache-dir", cache_dir)
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


if __name__ == "__main__":
    main()
