"""Benchmark: the registry build cache between two machines (#16): A cold with --cache-to, B
warm from the registry (an empty cache, the image removed from the engine), B no-op.

    .venv/bin/python bench/registry_cache.py [--cache-dir DIR]

Both "machines" are this one: A and B get their own cache (downloads linked, no stage or disk
caches) and dist; a real docker-registry on 127.0.0.1 stands between them. Times are wall
seconds of the task; bytes are what the registry stores after A and what B pulled. Prints a
Markdown table.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import docker
from common import bench, cold_cache, table, timed


def _registry(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (root / "registry.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root / 'store'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(root / "registry.yml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1)
    return proc, f"127.0.0.1:{port}/imagebuild-cache"


def _bytes(path: Path, skip: str = "") -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name != skip)


def main() -> None:
    with bench(__doc__, "ib-bench-reg-") as (cache_dir, work, spec, common):
        reg, ref = _registry(work)
        try:
            a = ["--spec", spec, "--cache-dir", str(work / "cache"), "--dist", str(work / "a")]
            cache_b = cold_cache(cache_dir, work / "cache-b")
            b = ["--spec", spec, "--cache-dir", str(cache_b), "--dist", str(work / "b")]
            rows, out = [], {}
            for task in ("build-container", "build-vm"):
                sec, out[task] = timed(task, *a, "--cache-to", ref)
                rows.append((f"A {task}, cold, --cache-to", f"{sec:.1f} s", ""))
            pushed = _bytes(work / "store")
            lines = out["build-container"].stdout.splitlines()
            tag = next(ln.split()[1] for ln in lines if ln.startswith("image "))
            docker.from_env().images.remove(tag, noprune=False)  # B's engine never saw it
            for task in ("build-container", "build-vm"):
                sec, _ = timed(task, *b, "--cache-from", ref)
                rows.append((f"B {task}, empty cache, --cache-from", f"{sec:.1f} s", ""))
            pulled = _bytes(cache_b / "stages") + _bytes(cache_b / "disks", skip="sources.img")
            for task in ("build-container", "build-vm"):
                sec, _ = timed(task, *b, "--cache-from", ref)
                rows.append((f"B {task}, nothing changed", f"{sec:.1f} s", ""))
            rows += [
                ("registry after A (stages + base disk)", f"{pushed / 1e6:.0f} MB", ""),
                ("B pulled (stages + base disk, files)", f"{pulled / 1e6:.0f} MB", ""),
            ]
            table(rows, last="note")
        finally:
            reg.terminate()
            reg.wait()
            shutil.rmtree(work / "store", ignore_errors=True)


if __name__ == "__main__":
    main()
