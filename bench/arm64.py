"""Benchmark: arm64 from the same spec (issue #30), built here under emulation: lock + fetch of
both architectures, each stage's time for arm64 beside amd64's, the image ID of two clean arm64
builds, a no-op and an app change, the arm64 image's own `--check` run under qemu-user, then the
arm64 VM (`build-vm --arch arm64`, booted by Packer under TCG) and `verify --arch arm64`, its VM
booted by libvirt (the virt board, UEFI flash) and by plain QEMU.

    .venv/bin/python bench/arm64.py [--cache-dir DIR]

A private copy of examples/onnx-serve with `base.architectures: [amd64, arm64]` (so its lock is
re-resolved: amd64's pins kept where the mirror still has them) and `vm.formats: [qcow2]` (the
formats another architecture's VM is made as). Needs qemu-user-static's binfmt entry,
qemu-system-arm and qemu-efi-aarch64 (`bash scripts/bootstrap.sh true`). About 30 minutes on 2
cores.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import docker
from common import bench, cold_cache, stage_seconds, table, timed

from imagebuild import emulation


def both(spec: Path) -> None:
    text = spec.read_text().replace(
        "  components: [main]\n", "  components: [main]\n  architectures: [amd64, arm64]\n", 1
    )
    assert "architectures" in text, f"{spec}: no components line"
    formats = "  formats: [qcow2, ova, vagrant]\n"
    assert formats in text, f"{spec}: no {formats.strip()!r} line"
    spec.write_text(text.replace(formats, "  formats: [qcow2]\n"))


def stages(stdout: str) -> dict[str, str]:
    """`layer NAME ... built in S s` lines of a build, as NAME -> seconds."""
    return {m[1]: m[2] for m in re.finditer(r"(?m)^layer (\w+) .* built in ([\d.]+)s", stdout)}


def image(stdout: str) -> tuple[str, str]:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("image "))
    return line.split()[1], line.split()[2]


def last_line(stdout: str) -> str:
    return stdout.strip().splitlines()[-1]


def qcow2_sha(dist: Path) -> str:
    """The qcow2's sha256 as the build's SHA256SUMS lists it."""
    sums = (dist / "SHA256SUMS").read_text().splitlines()
    return next(ln.split()[0] for ln in sums if ln.endswith(".qcow2"))


def main() -> None:
    start = time.monotonic()
    with bench(__doc__, "ib-bench-arm64-", both) as (cache_dir, work, spec, common):
        lock_fetch = time.monotonic() - start
        amd_s, amd = timed("build-container", *common, "--arch", "amd64")
        arm_s, arm = timed("build-container", *common, "--arch", "arm64")
        noop_s, _ = timed("build-container", *common, "--arch", "arm64")
        again = [*common[:2], "--cache-dir", str(cold_cache(cache_dir, work / "cache2"))]
        again += ["--dist", str(work / "dist2")]
        arm2_s, arm2 = timed("build-container", *again, "--arch", "arm64")
        app = Path(spec).parent / "app" / "app" / "__init__.py"
        app.write_text(app.read_text() + "\n# bench: an app change\n")
        app_s, _ = timed("build-container", *common, "--arch", "arm64")
        vm_s, vm = timed("build-vm", *common, "--arch", "arm64")
        verify_s, verify = timed("verify", *common, "--arch", "arm64")  # libvirt's domain
        plain_s, plain = timed("verify", *common, "--arch", "arm64", "--backend", "qemu")
        # The same inputs from the second clean cache (its stages and base disk its own): the
        # same disk bytes?
        timed("build-vm", *again, "--arch", "arm64")
        disks = [qcow2_sha(d / "arm64") for d in (work / "dist", work / "dist2")]
        tag, arm_id = image(arm.stdout)
        out = docker.from_env().containers.run(
            tag,
            ["--check"],
            network_mode="none",
            remove=True,
            **emulation.container_options("arm64"),
        )
        a, b = stages(amd.stdout), stages(arm.stdout)
        rows = [
            ("lock + fetch, both architectures", f"{lock_fetch:.0f} s", ""),
            *((f"stage {n}: amd64 / arm64", f"{a.get(n, '?')} s / {b[n]} s", "") for n in b),
            ("build-container cold, amd64", f"{amd_s:.0f} s", ""),
            ("build-container cold, arm64 (emulated)", f"{arm_s:.0f} s", f"{arm_s / amd_s:.1f}x"),
            ("arm64, nothing changed", f"{noop_s:.1f} s", ""),
            ("arm64, one app file changed", f"{app_s:.1f} s", ""),
            (
                "arm64 image ID, two clean builds",
                f"{arm_id[7:19]} / {image(arm2.stdout)[1][7:19]}",
                "same" if arm_id == image(arm2.stdout)[1] else "DIFFER",
            ),
            ("arm64 second clean build", f"{arm2_s:.0f} s", ""),
            ("arm64 image's --check (qemu-user)", out.decode().strip()[:60], ""),
            ("build-vm --arch arm64 (stages cached)", f"{vm_s:.0f} s", ""),
            *((f"  {k}", f"{v} s", "") for k, v in stage_seconds(vm.stdout).items()),
            ("verify --arch arm64 (libvirt)", f"{verify_s:.0f} s", last_line(verify.stdout)),
            ("verify --arch arm64 --backend qemu", f"{plain_s:.0f} s", last_line(plain.stdout)),
            (
                "arm64 qcow2, two clean caches",
                f"{disks[0][:12]} / {disks[1][:12]}",
                "same" if disks[0] == disks[1] else "DIFFER",
            ),
        ]
        table(rows, last="note")


if __name__ == "__main__":
    main()
