"""Benchmark: build-vm per stage (base disk, Packer boot to SSH, provisioning, shutdown,
convert, outputs) beside the container's cold build, and a no-op rebuild.

    .venv/bin/python bench/vm.py [--cache-dir DIR]

Private copy of examples/onnx-serve, empty stage and disk caches (downloads reused through
hard links). Issue #4's goal: VM build <= 3x the container's cold build (emulated CPU, no KVM).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from common import DEFAULT_CACHE, cold_cache, private_example, table, timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default=DEFAULT_CACHE)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ib-bench-vm-"))
    try:
        spec = private_example(work, args.cache_dir)
        cache = cold_cache(args.cache_dir, work / "cache")
        common = ["--spec", spec, "--cache-dir", str(cache), "--dist", str(work / "dist")]
        container_cold, _ = timed("build-container", *common)
        vm_cold, r = timed("build-vm", *common)
        vm_noop, _ = timed("build-vm", *common)
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith("seconds "))
        stages = [part.rsplit(" ", 1) for part in line.removeprefix("seconds ").split(", ")]
        accel = next(ln for ln in r.stderr.splitlines() if "accelerator" in ln).split(": ", 1)[1]
        rows = [("container: build-container, cold", f"{container_cold:.1f} s", "")]
        rows += [(f"vm: {name}", f"{float(sec):.1f} s", "") for name, sec in stages]
        rows += [
            ("vm: build-vm total (container layers cached)", f"{vm_cold:.1f} s", ""),
            ("vm / container cold", f"{vm_cold / container_cold:.2f}x", "<= 3x"),
            ("vm: build-vm, nothing changed", f"{vm_noop:.1f} s", ""),
            ("vm: " + accel, "", ""),
        ]
        for f in sorted((work / "dist").glob("*")):
            if f.suffix in (".qcow2", ".ova", ".box"):
                rows.append((f"size {f.name}", f"{f.stat().st_size / 1e6:.0f} MB", ""))
        table(rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
