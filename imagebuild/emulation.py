"""What building another architecture here needs: its binaries (mmdebstrap's maintainer scripts,
Ansible's Python in the stage containers) run through Debian's qemu-user-static, registered in
binfmt_misc with the F flag (the interpreter is opened when registered, so it also runs inside
containers, which do not hold it). Checked before a build starts, never set up by a build:
`scripts/bootstrap.sh` registers it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imagebuild.errors import ImageBuildError
from imagebuild.spec_sections import HOST_ARCH

BINFMT = Path("/proc/sys/fs/binfmt_misc")
HANDLERS = {"arm64": "qemu-aarch64"}  # binfmt-support's names for qemu-user-static's entries


def problem(arch: str, binfmt: Path = BINFMT) -> str | None:
    """Why `arch`'s binaries cannot run here (None: they can)."""
    entry = binfmt / HANDLERS[arch]
    try:
        lines = entry.read_text().splitlines()
    except OSError:
        return f"{entry} is not registered (qemu-user-static and binfmt-support, binfmt_misc)"
    if "enabled" not in lines:
        return f"{entry} is registered but disabled"
    flags = next((ln.partition(":")[2].split() for ln in lines if ln.startswith("flags:")), [])
    if "F" not in "".join(flags):
        return f"{entry} lacks the F flag (its interpreter would not be found in a container)"
    return None


def container_options(arch: str) -> dict[str, Any]:
    """What a container of `arch` is created with here (docker SDK keywords). qemu-user 7.2
    passes the host's x86 /proc/cpuinfo through while sysfs lists the host's CPUs: cpuinfo
    (onnxruntime's, PyTorch's) then finds CPUs it cannot describe and crashes the process
    (onnxruntime's import: SIGSEGV). With sysfs's CPU list hidden it falls back to defaults,
    as in a chroot without /sys. Nothing is hidden from the host's own architecture."""
    return {} if arch == HOST_ARCH else {"tmpfs": {"/sys/devices/system/cpu": "ro"}}


class EmulationError(ImageBuildError):
    pass


def require(arch: str, binfmt: Path = BINFMT) -> None:
    """Refuse to start a build of `arch` that could not run its binaries."""
    if arch != HOST_ARCH and (why := problem(arch, binfmt)):
        raise EmulationError(
            f"building {arch} on this {HOST_ARCH} host needs its binaries emulated: {why}; "
            "`bash scripts/bootstrap.sh true` sets it up (or build only this host's "
            f"architecture: --arch {HOST_ARCH})"
        )
