"""Benchmark: what cloud-init costs the VM image. The example built from cold twice (stage and
disk caches empty, downloads reused): as shipped, and with cloud-init dropped from
`vm.packages`; then the shipped qcow2 booted under libvirt without a seed (ds-identify keeps
cloud-init off) and with a NoCloud seed (cloud-init creates a user and runs its first-boot
modules), timed to SSH and to `cloud-init status --wait`.

    .venv/bin/python bench/cloud_init.py [--cache-dir DIR]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from common import bench, cold_cache, private_example, stage_seconds, table, timed

from imagebuild import seed, vmboot
from imagebuild import spec as specmod
from imagebuild.spec_sections import DEFAULT_VM_PACKAGES
from imagebuild.verify import hosts


def without_cloud_init(spec: Path) -> None:
    data = yaml.safe_load(spec.read_text())
    packages = [p for p in DEFAULT_VM_PACKAGES if p != "cloud-init"]
    data.setdefault("vm", {})["packages"] = packages
    spec.write_text(yaml.safe_dump(data, sort_keys=False))


def build(common: list[str]) -> tuple[float, dict[str, float]]:
    timed("build-container", *common)
    total, r = timed("build-vm", *common)
    return total, stage_seconds(r.stdout)


def first_boot(disk: Path, spec: specmod.Spec, with_seed: bool) -> tuple[float, float, str]:
    """Seconds from domain start to SSH and to cloud-init's end, and its final status."""
    with tempfile.TemporaryDirectory(prefix="ib-bench-boot-") as tmp:
        work = Path(tmp)
        iso = None
        if with_seed:
            key = vmboot.make_key(work / "user")
            user = seed.user("bench", Path(f"{key}.pub").read_text())
            iso = seed.nocloud(
                work / "seed.iso",
                instance_id="iid-bench",
                hostname="bench",
                cloud_config={"users": [user]},
            )
        start = time.monotonic()
        with hosts.vm(disk, work / "vm", spec.vm.memory_mb, spec.vm.cpus, "libvirt", iso) as h:
            port = urlsplit(h.url).port
            assert port is not None
            root = vmboot.Booted(port, work / "vm" / "key", work / "vm" / "serial.log", 0.0)
            status = root.ssh("cloud-init status --wait | tail -1", timeout=600).stdout.strip()
            done = time.monotonic() - start
            return h.seconds, done, status


def main() -> None:
    with bench(__doc__, "ib-bench-cloud-init-") as (cache_dir, work, spec, common):
        with_total, with_stages = build(common)
        bare_spec = private_example(work / "bare", cache_dir, without_cloud_init)
        bare_cache = cold_cache(cache_dir, work / "bare" / "cache")
        bare_dist = work / "bare" / "dist"
        bare = ["--spec", bare_spec, "--cache-dir", str(bare_cache), "--dist", str(bare_dist)]
        bare_total, bare_stages = build(bare)
        s = specmod.load(Path(spec))
        name = f"{s.name}-{s.version}.qcow2"
        rows = [
            ("build-vm total", f"{with_total:.1f} s", f"{bare_total:.1f} s"),
            *[
                (f"build-vm: {k}", f"{v:.1f} s", f"{bare_stages.get(k, 0.0):.1f} s")
                for k, v in with_stages.items()
            ],
            (
                f"size {name}",
                f"{(work / 'dist' / name).stat().st_size / 1e6:.0f} MB",
                f"{(bare_dist / name).stat().st_size / 1e6:.0f} MB",
            ),
        ]
        for label, with_seed in (("no seed", False), ("NoCloud seed", True)):
            ssh_s, done_s, status = first_boot(work / "dist" / name, s, with_seed)
            rows.append((f"first boot, {label}: to SSH", f"{ssh_s:.1f} s", ""))
            rows.append((f"first boot, {label}: to cloud-init {status!r}", f"{done_s:.1f} s", ""))
        table(rows, last="without cloud-init")


if __name__ == "__main__":
    main()
