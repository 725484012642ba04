"""Benchmark: build-vm per stage (base disk, Packer boot to SSH, provisioning, shutdown,
outputs) beside the container's cold build, a no-op rebuild, `--target ami` of that disk
into a local AWS API (moto's server on 127.0.0.1: raw disk, EBS snapshot, RegisterImage), and
verify split into container start, VM boot to SSH and the test run.

    .venv/bin/python bench/vm.py [--cache-dir DIR]

Private copy of examples/onnx-serve, empty stage and disk caches (downloads reused through
hard links). Issue #4's goal: VM build <= 3x the container's cold build (emulated CPU, no KVM).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common import bench, stage_seconds, table, timed


@contextmanager
def local_aws(work: Path) -> Iterator[dict[str, str]]:
    """moto_server on a free loopback port, and the AWS settings that point at it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = str(Path(sys.executable).with_name("moto_server"))
    proc = subprocess.Popen(
        [moto, "-H", "127.0.0.1", "-p", str(port)],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=2)
            break
        except OSError:
            time.sleep(0.3)
    try:
        yield {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_ENDPOINT_URL": url,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    with bench(__doc__, "ib-bench-vm-") as (cache_dir, work, spec, common):
        container_cold, _ = timed("build-container", *common)
        vm_cold, r = timed("build-vm", *common)
        vm_noop, _ = timed("build-vm", *common)
        with local_aws(work) as env:
            os.environ.update(env)
            ami_total, a = timed("build-vm", *common, "--target", "ami")
        ami_seconds = stage_seconds(a.stdout)["ami"]
        verify_total, _ = timed("verify", "--spec", spec, "--dist", str(work / "dist"))
        report = json.loads((work / "dist" / "verify" / "report.json").read_text())
        accel = next(ln for ln in r.stderr.splitlines() if "accelerator" in ln).split(": ", 1)[1]
        rows = [("container: build-container, cold", f"{container_cold:.1f} s", "")]
        rows += [
            (f"vm: {name}", f"{sec:.1f} s", "") for name, sec in stage_seconds(r.stdout).items()
        ]
        rows += [
            ("vm: build-vm total (container layers cached)", f"{vm_cold:.1f} s", ""),
            ("vm / container cold", f"{vm_cold / container_cold:.2f}x", "<= 3x"),
            ("vm: build-vm, nothing changed", f"{vm_noop:.1f} s", ""),
            ("ami: raw disk + EBS snapshot + register (local AWS API)", f"{ami_seconds:.1f} s", ""),
            ("ami: build-vm --target ami total", f"{ami_total:.1f} s", ""),
            *[(f"verify: {k}", f"{v:.1f} s", "") for k, v in report["seconds"].items()],
            *[
                (f"verify, {artifact} facts: {group}", f"{float(sec):.1f} s", "")
                for artifact, groups in report["group_seconds"].items()
                for group, sec in groups.items()
            ],
            ("verify: total", f"{verify_total:.1f} s", ""),
            ("vm: " + accel, "", ""),
        ]
        for f in sorted((work / "dist").glob("*")):
            if f.suffix in (".qcow2", ".ova", ".box"):
                rows.append((f"size {f.name}", f"{f.stat().st_size / 1e6:.0f} MB", ""))
        table(rows)


if __name__ == "__main__":
    main()
