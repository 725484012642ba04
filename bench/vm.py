"""Benchmark: build-vm per stage (base disk, Packer boot to SSH, provisioning, shutdown,
outputs) beside the container's cold build, a no-op rebuild, and verify split into
container start, VM boot to SSH and the test run.

    .venv/bin/python bench/vm.py [--cache-dir DIR]

Private copy of examples/onnx-serve, empty stage and disk caches (downloads reused through
hard links). Issue #4's goal: VM build <= 3x the container's cold build (emulated CPU, no KVM).
"""

from __future__ import annotations

import json

from common import bench, table, timed


def main() -> None:
    with bench(__doc__, "ib-bench-vm-") as (cache_dir, work, spec, common):
        container_cold, _ = timed("build-container", *common)
        vm_cold, r = timed("build-vm", *common)
        vm_noop, _ = timed("build-vm", *common)
        verify_total, _ = timed("verify", "--spec", spec, "--dist", str(work / "dist"))
        report = json.loads((work / "dist" / "verify" / "report.json").read_text())
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith("seconds "))
        stages = [part.rsplit(" ", 1) for part in line.removeprefix("seconds ").split(", ")]
        accel = next(ln for ln in r.stderr.splitlines() if "accelerator" in ln).split(": ", 1)[1]
        rows = [("container: build-container, cold", f"{container_cold:.1f} s", "")]
        rows += [(f"vm: {name}", f"{float(sec):.1f} s", "") for name, sec in stages]
        rows += [
            ("vm: build-vm total (container layers cached)", f"{vm_cold:.1f} s", ""),
            ("vm / container cold", f"{vm_cold / container_cold:.2f}x", "<= 3x"),
            ("vm: build-vm, nothing changed", f"{vm_noop:.1f} s", ""),
            *[(f"verify: {k}", f"{v:.1f} s", "") for k, v in report["seconds"].items()],
            ("verify: total", f"{verify_total:.1f} s", ""),
            ("vm: " + accel, "", ""),
        ]
        for f in sorted((work / "dist").glob("*")):
            if f.suffix in (".qcow2", ".ova", ".box"):
                rows.append((f"size {f.name}", f"{f.stat().st_size / 1e6:.0f} MB", ""))
        table(rows)


if __name__ == "__main__":
    main()
