"""Boot a built disk under plain QEMU (no Packer, no libvirt) and reach it over SSH on 127.0.0.1.

The disk is never written: the guest runs on a throw-away qcow2 overlay. A fresh key goes in
as systemd's own login credential (`guest_args`), so the image itself needs no authorized key
and no hook of ours. The QEMU process is always stopped on exit, also on error or Ctrl-C.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from imagebuild import tools
from imagebuild.diskimage import info as image_info
from imagebuild.errors import ImageBuildError
from imagebuild.machines import HOST, Machine


class BootError(ImageBuildError):
    pass


# A throw-away guest on 127.0.0.1 with a fresh key: no host key to trust or remember.
SSH_OPTIONS = {
    "BatchMode": "yes",
    "StrictHostKeyChecking": "no",
    "UserKnownHostsFile": "/dev/null",
    "ConnectTimeout": "5",
    "LogLevel": "ERROR",
}


@dataclass(frozen=True)
class Booted:
    port: int
    key: Path
    serial_log: Path
    seconds_to_ssh: float
    user: str = "root"

    def ssh_argv(self) -> list[str]:
        opts = [arg for k, v in SSH_OPTIONS.items() for arg in ("-o", f"{k}={v}")]
        login = f"{self.user}@127.0.0.1"
        return ["ssh", "-q", "-i", str(self.key), "-p", str(self.port), *opts, login]

    def ssh(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.ssh_argv(), command], capture_output=True, text=True, timeout=timeout
        )


# systemd.system-credentials(7), systemd >= 252: PID 1 imports credentials from the SMBIOS OEM
# strings (type 11; the cloud kernel has DMI_SYSFS built in, so nothing has to load first), and
# systemd-tmpfiles (provision.conf) writes this one to /root/.ssh/authorized_keys if it is absent.
# Stock Debian behaviour, also reachable from libvirt's <sysinfo><oemStrings>: images ship no
# login hook of imagebuild's, and vm_finalize removes the key Packer's boot wrote.
LOGIN_CREDENTIAL = "io.systemd.credential:ssh.authorized_keys.root"


@dataclass(frozen=True)
class Hardware:
    """The disk controller and NIC a format declares to its hypervisor (the OVF's, the VMX's),
    as QEMU emulates them: verify boots a format's disk on them, so a kernel without their
    drivers fails there, not on the user's hypervisor."""

    disk_bus: str = "virtio"  # virtio | virtio-scsi | pvscsi | ide
    nic: str = "virtio"  # virtio | vmxnet3

    def __str__(self) -> str:
        return f"disk on {self.disk_bus}, NIC {self.nic}"


VIRTIO = Hardware()
NIC_DEVICES = {"virtio": "virtio-net-pci", "vmxnet3": "vmxnet3"}
SCSI_DEVICES = {"virtio-scsi": "virtio-scsi-pci", "pvscsi": "pvscsi"}


def drive_args(disk: Path, hardware: Hardware) -> list[str]:
    """QEMU's arguments for the system disk (qcow2) on `hardware`'s controller."""
    if hardware.disk_bus in ("virtio", "ide"):
        return ["-drive", f"file={_opt(disk)},if={hardware.disk_bus},format=qcow2"]
    return [
        "-device",
        f"{SCSI_DEVICES[hardware.disk_bus]},id=scsi0",
        "-drive",
        f"file={_opt(disk)},if=none,id=disk0,format=qcow2",
        "-device",
        "scsi-hd,drive=disk0,bus=scsi0.0",
    ]


def guest_args(port: int | str, public_key: str, nic: str = "virtio") -> list[str]:
    """The QEMU arguments every boot of an image shares (Packer's, verify's, the tests'): user
    networking that forwards only SSH, on 127.0.0.1 (restrict=on: the guest reaches nothing
    else, so builds stay hermetic), and the login key as systemd's credential."""
    if "," in public_key or "\n" in public_key.strip():
        raise BootError(f"not a one-line OpenSSH public key: {public_key[:60]!r}")
    return [
        "-netdev",
        f"user,id=ibnet0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device",
        f"{NIC_DEVICES[nic]},netdev=ibnet0,addr=0x10",
        "-smbios",
        f"type=11,value={LOGIN_CREDENTIAL}={public_key.strip()}",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe_accelerator(arch: str = HOST.arch) -> tuple[str, str]:
    """KVM only where it can really run a guest; else TCG. $IMAGEBUILD_ACCEL overrides."""
    if arch != HOST.arch:
        return "tcg", f"an {arch} guest on this {HOST.arch} host: full-system emulation"
    forced = os.environ.get("IMAGEBUILD_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced, "forced by IMAGEBUILD_ACCEL"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "no usable /dev/kvm"
    flags = Path("/proc/cpuinfo").read_text()
    if " vmx" not in flags and " svm" not in flags:
        # Seen here: /dev/kvm exists, but without vmx/svm guests crawl and -cpu host aborts.
        return "tcg", "/dev/kvm exists but the CPU has no vmx/svm flag"
    probe = subprocess.Popen(
        [
            "qemu-system-x86_64",
            "-machine",
            "pc,accel=kvm",
            "-cpu",
            "host",
            "-nodefaults",
            "-display",
            "none",
            "-S",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        probe.wait(timeout=3)
        return "tcg", "a KVM probe VM with -cpu host failed to start"
    except subprocess.TimeoutExpired:
        return "kvm", "vmx/svm present and a KVM probe VM with -cpu host started"
    finally:
        probe.kill()
        probe.wait()


def _opt(path: Path) -> str:
    """A path as a QEMU option value: a comma in it would start another option."""
    return str(path).replace(",", ",,")


def make_key(workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    key = workdir / "key"
    if not key.exists():
        tools.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    return key


def overlay(disk: Path, workdir: Path) -> Path:
    """A throw-away qcow2 on top of `disk`: the guest never writes the artifact."""
    out = workdir / "overlay.qcow2"
    out.unlink(missing_ok=True)
    tools.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            str(disk.resolve()),
            str(out),
        ]
    )
    return out


def wait_for_ssh(booted: Booted, start: float, timeout: float, alive: Callable[[], bool]) -> Booted:
    while booted.ssh("true", timeout=30).returncode != 0:
        if not alive():
            raise BootError("the VM stopped before SSH answered")
        if time.monotonic() - start > timeout:
            log = booted.serial_log
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise BootError(f"no SSH after {timeout:.0f}s; serial console:\n{tail}")
        time.sleep(0.5)  # a refused try costs little: the next one comes soon
    return replace(booted, seconds_to_ssh=round(time.monotonic() - start, 1))


@contextmanager
def boot(
    disk: Path,
    workdir: Path,
    accel: str = "tcg",
    memory_mb: int = 2048,
    cpus: int = 2,
    name: str = "imagebuild-boot",
    timeout: float = 300,
    keep: bool = False,
    hardware: Hardware = VIRTIO,
    extra: Sequence[str] = (),
    machine: Machine = HOST,
) -> Iterator[Booted]:
    """Boot `disk` on an overlay; with `keep`, power the guest off cleanly at the end and leave
    the overlay (workdir/overlay.qcow2, backed by `disk`) as a modified copy. `extra`: more
    QEMU arguments (a second disk)."""
    key, disk_overlay = make_key(workdir), overlay(disk, workdir)
    port, serial = free_port(), workdir / "serial.log"
    cmd = [
        machine.qemu,
        "-name",
        name,
        *machine.accel_args(accel),
        "-m",
        str(memory_mb),
        "-smp",
        str(cpus),
        "-display",
        "none",
        "-nodefaults",
        "-serial",
        f"file:{serial}",
        *drive_args(disk_overlay, hardware),
        *extra,
        *guest_args(port, Path(f"{key}.pub").read_text(), hardware.nic),
    ]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        booted = wait_for_ssh(
            Booted(port, key, serial, 0.0), start, timeout, lambda: proc.poll() is None
        )
        yield booted
        if keep:
            booted.ssh("systemctl poweroff", timeout=30)
            proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.wait()
        if not keep:
            disk_overlay.unlink(missing_ok=True)


def partition_image(disk: Path, dest_dir: Path, offset: int = 1 << 20) -> Path:
    """The root partition of a disk image as a raw file (for debugfs), via qemu-img's raw
    driver with an offset over the qcow2: no loop device, no mount."""
    out = dest_dir / "root.raw"
    tools.run(partition_argv(disk, out, offset))
    return out


def partition_argv(disk: Path, out: Path, offset: int = 1 << 20) -> list[str]:
    """partition_image's qemu-img command, for a caller that runs it beside other work."""
    size = int(image_info(disk)["virtual-size"]) - offset
    opts = (
        f"driver=raw,offset={offset},size={size},file.driver=qcow2,"
        f"file.file.driver=file,file.file.filename={_opt(disk)}"
    )
    return ["qemu-img", "convert", "--image-opts", opts, "-O", "raw", str(out)]


def jail(reads: Sequence[str | Path], *binds: str) -> list[str]:
    """bubblewrap for a tool reading a disk that is anyone's (should its parser be fooled): it
    sees only this host's programs and libraries (/usr, the merged-/usr links, the linker's
    cache) and `reads`, read-only, then `binds`; no network, no namespace shared, a session of
    its own (no terminal to write to)."""
    out = ["bwrap", "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            out += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            out += ["--ro-bind", top, top]
    for path in ["/etc/ld.so.cache", *map(str, reads)]:
        out += ["--ro-bind-try", path, path]
    out += [*binds, "--dev", "/dev", "--proc", "/proc", "--chdir", "/"]
    return [*out, "--unshare-all", "--die-with-parent", "--new-session"]


def dump_argv(fs: str, tree: Path) -> list[str]:
    """debugfs dumping filesystem image `fs` (a path, `?offset=N` allowed) into the empty
    folder `tree`. Its names may hold `/` or `..` and debugfs writes each entry under the name
    the disk gives it: in the jail, only `tree` is writable."""
    image = fs.partition("?")[0]
    return [
        *jail([image], "--bind", str(tree), str(tree)),
        *["debugfs", "-R", f'rdump / "{tree}"', fs],
    ]


def debugfs_cat(fs_image: Path, path: str) -> bytes:
    r = subprocess.run(
        ["debugfs", "-R", f"cat {shlex.quote(path)}", str(fs_image)], capture_output=True
    )
    if r.returncode != 0:
        raise BootError(f"debugfs cat {path}: {r.stderr.decode(errors='replace')}")
    return r.stdout
