"""Benchmark: are the VM images bit-identical across clean builds, and does `rebuild --check`
name a non-deterministic input?

    .venv/bin/python bench/rebuild.py [--cache-dir DIR]

1. A private copy of examples/onnx-serve built twice (build-container, build-vm) from two cold
   caches (the downloads linked, nothing a build derives): every artifact's sha256 side by side.
2. `rebuild --check` of the first build's dist (a private cache of its own): exit 0, its time.
3. The same example whose app.build also writes the build time into the app: built, then
   `rebuild --check`: exit 1, naming the artifacts and the file.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from common import DEFAULT_CACHE, INVOKE, ROOT, cold_cache, private_example, table, timed

STAMP = "/opt/app/built-at"


def build(spec: str, cache: Path, dist: Path) -> float:
    args = ["--spec", spec, "--cache-dir", str(cache), "--dist", str(dist)]
    took = timed("build-container", *args)[0]
    return took + timed("build-vm", *args)[0]


def sums(dist: Path) -> dict[str, str]:
    lines = (dist / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, _, name in (ln.partition("  ") for ln in lines)}


def check(spec: str, cache: Path, dist: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.monotonic()
    args = ["rebuild", "--check", "--spec", spec, "--cache-dir", str(cache), "--dist", str(dist)]
    r = subprocess.run([INVOKE, *args], cwd=ROOT, capture_output=True, text=True)
    return time.monotonic() - start, r


def stamped(spec: Path) -> None:
    """app.build also writes the time of the build into the app (a shell in the build
    container: the spec's own command, as any build step)."""
    text = spec.read_text()
    text, n = re.subn(
        r"(?m)^  build: \[(.*)\]$",
        lambda m: f'  build: [/bin/sh, -c, \'date +%s.%N > {STAMP} && exec "$0" "$@"\', {m[1]}]',
        text,
    )
    assert n == 1, "no app.build line"
    spec.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default=DEFAULT_CACHE)
    cache_dir = ap.parse_args().cache_dir
    work = Path(tempfile.mkdtemp(prefix="imagebuild-bench-rebuild-"))
    try:
        spec = private_example(work, cache_dir)
        seconds, digests = [], []
        for n in (1, 2):
            cache = cold_cache(cache_dir, work / f"cache{n}")
            seconds.append(build(spec, cache, work / f"dist{n}"))
            digests.append(sums(work / f"dist{n}"))
        one, two = digests
        print("| artifact | build 1 | build 2 | same |\n|---|---|---|---|")
        for name in sorted(one):
            print(f"| {name} | {one[name][:12]} | {two[name][:12]} | {one[name] == two[name]} |")
        took, r = check(spec, work / "cache1", work / "dist1")
        print(f"\nrebuild --check of build 1: exit {r.returncode} in {took:.1f} s")
        print(r.stdout)
        (work / "stamped").mkdir()
        other = private_example(work / "stamped", cache_dir, stamped)
        cache = cold_cache(cache_dir, work / "stamped" / "cache")
        dist = work / "stamped" / "dist"
        build(other, cache, dist)
        stamp_took, s = check(other, cache, dist)
        print(f"rebuild --check of a build that stamps {STAMP}: exit {s.returncode}")
        print(s.stdout + s.stderr.splitlines()[-1])
        table(
            [
                ("cold build, container + VM: 1 / 2", f"{seconds[0]:.0f} / {seconds[1]:.0f} s", ""),
                ("artifacts identical", f"{sum(one[k] == two[k] for k in one)} of {len(one)}", ""),
                ("rebuild --check, clean build", f"exit {r.returncode}, {took:.1f} s", "exit 0"),
                ("rebuild --check, stamped build", f"exit {s.returncode}, {stamp_took:.1f} s", "1"),
            ],
            last="expected",  # the targets of issue #27
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
