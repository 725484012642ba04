"""The QEMU machine a VM of each architecture boots on, in one table: Packer's build, verify's
plain-QEMU boot, the AMI's registration and the disk's kernel console all read it, so an
architecture is one row here (and its firmware's boot layout in builders.bootloader); verify's
libvirt domain (verify.hosts) reads its libvirt columns.

amd64: the PC machine, SeaBIOS, the console on the first UART. arm64: QEMU's `virt` board with
Debian's EDK2 build (qemu-efi-aarch64) as its firmware, loaded as a ROM with `-bios` (no
variable store: it boots the disk's removable-media path, EFI/BOOT/BOOTAA64.EFI), the console on
the PL011 UART. Under TCG, `-cpu max` with QEMU's own pointer-authentication algorithm
(`pauth-impdef`): the architected one costs emulation time and nothing here needs it. Under
libvirt the same package's flash build (AAVMF_CODE.fd, 64 MiB; it can do Secure Boot) with a
variable store made from the empty AAVMF_VARS.fd: libvirt 9.0 refuses ACPI on arm64 unless the
firmware is flash it knows as UEFI; the empty store leaves Secure Boot off and boots the same
removable path.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any

from imagebuild.errors import ImageBuildError
from imagebuild.spec_sections import HOST_ARCH


class MachineError(ImageBuildError):
    pass


@dataclass(frozen=True)
class Machine:
    arch: str  # Debian's name
    qemu: str  # the system emulator
    board: str  # QEMU's -machine type
    tcg_cpu: str
    console: str  # the kernel's serial console device
    aws: tuple[str, str]  # RegisterImage's Architecture and BootMode
    max_cpus: int = 255  # what the board takes (arm64's virt: GICv2 here, 8)
    firmware: str = ""  # a ROM loaded with -bios ("": the emulator's default BIOS)
    packages: tuple[str, ...] = ()  # Debian packages that hold `qemu` and `firmware`
    # libvirt's domain: its <features>, the QOM type of tcg_cpu's model (its properties go to
    # -global: <cpu mode='maximum'/> names the model alone), the UEFI flash and variables template
    libvirt_features: str = "<acpi/><apic/>"
    qom_cpu: str = "max-x86_64-cpu"
    flash: tuple[str, str] | None = None

    def accel_args(self, accel: str) -> list[str]:
        """-machine, -cpu and the firmware for `accel` (kvm only for this host's architecture)."""
        return ["-machine", f"{self.board},accel={accel}", *self.cpu_args(accel)]

    def cpu_args(self, accel: str) -> list[str]:
        """-cpu and the firmware (Packer's template gives -machine its own way)."""
        # TCG's default x86 CPU lacks SSE4.2/AVX, which numpy and onnxruntime wheels need.
        cpu = "host" if accel == "kvm" else self.tcg_cpu
        return ["-cpu", cpu, *(["-bios", self.firmware] if self.firmware else [])]

    def packer_values(self, accel: str) -> dict[str, Any]:
        """The Packer template's machine variables (qemuargs rows: `-opt value` pairs)."""
        args = self.cpu_args(accel)
        rows = [args[i : i + 2] for i in range(0, len(args), 2)]
        return {"qemu_binary": self.qemu, "machine_type": self.board, "machine_qemuargs": rows}

    def libvirt_cpu_args(self) -> list[str]:
        """tcg_cpu's properties as QEMU -global options (the domain's CPU is its model)."""
        _, *props = self.tcg_cpu.split(",")
        return [a for prop in props for a in ("-global", f"{self.qom_cpu}.{prop}")]

    def problem(self) -> str | None:
        """Why this host cannot boot the machine (None: it can)."""
        missing = [] if shutil.which(self.qemu) else [self.qemu]
        for firmware in (self.firmware, *(self.flash or ())):
            if firmware and not os.path.exists(firmware):
                missing.append(firmware)
        if not missing:
            return None
        return (
            f"booting an {self.arch} VM needs {' and '.join(missing)} "
            f"(Debian packages {', '.join(self.packages)}; `bash scripts/bootstrap.sh true` "
            "installs them)"
        )


MACHINES = {
    "amd64": Machine(
        "amd64", "qemu-system-x86_64", "pc", "max", "ttyS0", ("x86_64", "legacy-bios")
    ),
    "arm64": Machine(
        "arm64",
        "qemu-system-aarch64",
        "virt",
        "max,pauth-impdef=on",
        "ttyAMA0",
        ("arm64", "uefi"),
        max_cpus=8,
        firmware="/usr/share/qemu-efi-aarch64/QEMU_EFI.fd",
        packages=("qemu-system-arm", "qemu-efi-aarch64"),
        libvirt_features="<acpi/><gic version='2'/>",
        qom_cpu="max-arm-cpu",
        flash=("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
    ),
}
HOST = MACHINES[HOST_ARCH]


def of(arch: str) -> Machine:
    """`arch`'s machine, refused where this host cannot boot it."""
    machine = MACHINES[arch]
    if why := machine.problem():
        raise MachineError(why)
    return machine
