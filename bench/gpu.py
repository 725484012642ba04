"""Benchmark: the GPU images' sizes and build times (issue #12): examples/onnx-gpu (onnxruntime
on CUDA 12.2 with cuDNN 9) and examples/gpu-probe (CUDA runtime + probe), their layers, the CUDA
wheels, and the probe's packed root filesystem (what bench/gpu_proof.py carries to a GPU host).

    .venv/bin/python bench/gpu.py [--cache-dir DIR]

The first run downloads about 1.9 GB (the CUDA wheels). The VM side is in bench/vm.py's table
for the CPU example; the GPU VM adds the DKMS module build to the base disk.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
from common import DEFAULT_CACHE, ROOT, cold_cache, private_example, table, timed

LAYER_RX = r"(?m)^layer (\w+)\s+\S+\s+([\d.]+ MB)"


def build(example: str, cache_dir: str, work: Path) -> tuple[dict[str, str], str, float, dict]:
    start = time.monotonic()
    spec = private_example(work / example, cache_dir, example=example)
    lock_fetch = time.monotonic() - start
    cache = cold_cache(cache_dir, work / example / "cache")
    args = ["--spec", spec, "--cache-dir", str(cache), "--dist", str(work / example / "dist")]
    cold, r = timed("build-container", *args)
    layers = {m[1]: m[2] for m in re.finditer(LAYER_RX, r.stdout)}
    tag = next(ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("image "))
    lock = json.loads(Path(spec).with_suffix(".lock").read_text())
    return layers, tag, cold, {"lock_fetch": lock_fetch, "lock": lock}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default=DEFAULT_CACHE)
    cache_dir = ap.parse_args().cache_dir
    work = Path(tempfile.mkdtemp(prefix="ib-bench-gpu-"))
    rows: list[tuple[str, str, str]] = []
    try:
        for example in ("onnx-gpu", "gpu-probe"):
            layers, tag, cold, info = build(example, cache_dir, work)
            cuda = [w for w in info["lock"]["python"] if w["name"].startswith("nvidia-")]
            size = docker.from_env().images.get(tag).attrs["Size"]
            rows += [
                (f"{example}: lock + fetch", f"{info['lock_fetch']:.0f} s", ""),
                (
                    f"{example}: CUDA wheels (locked)",
                    f"{len(cuda)}, {sum(w['size'] for w in cuda) / 1e6:.0f} MB",
                    "",
                ),
                (f"{example}: build-container, cold", f"{cold:.0f} s", ""),
                *[(f"{example}: layer {n}", v, "") for n, v in layers.items()],
                (f"{example}: image size", f"{size / 1e9:.2f} GB", ""),
            ]
            if example == "gpu-probe":
                out = work / "gpu-probe.rootfs.tar.xz"
                start = time.monotonic()
                subprocess.run(
                    [sys.executable, str(ROOT / "bench/gpu_proof.py"), "pack", tag, str(out)],
                    check=True,
                    capture_output=True,
                )
                took = time.monotonic() - start
                packed = f"{out.stat().st_size / 2**20:.1f} MiB in {took:.0f} s"
                rows += [(f"{example}: packed root filesystem (xz)", packed, "< 60 MiB")]
        table(rows, last="target")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
