"""The VM targets behind one small factory, as the output formats are: the name `--target`
takes -> its builder, all with one signature and one set of options, checked once before
anything runs. A new target (another cloud) is one new module and one line here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from imagebuild import machines
from imagebuild.builders import ami, ami_stock, gce_image, vm
from imagebuild.errors import SpecError
from imagebuild.inputs import Inputs
from imagebuild.spec import Spec, option_problem
from imagebuild.spec_sections import HOST_ARCH


@dataclass(frozen=True)
class Options:
    """What `build-vm` hands every target."""

    on_error: str = "cleanup"  # Packer's -on-error: cleanup, or abort (keep the failed VM)
    region: str | None = None  # --aws-region: the AMI's region instead of vm.ami.region

    def problems(self, target: str) -> list[str]:
        """What is wrong with these options for `target`, each naming its option (empty: all
        good); the task exits 2 on any, before it reads the spec or builds anything."""
        found = []
        if target not in TARGETS:
            found.append(f"--target: {target!r} is not one of {', '.join(TARGETS)}")
        if self.on_error not in vm.ON_ERROR:
            found.append(f"--on-error: {self.on_error!r} is not one of {', '.join(vm.ON_ERROR)}")
        if self.region is not None and target != "ami":
            found.append("--aws-region: for --target ami only")
        elif self.region is not None and (
            problem := option_problem("--aws-region", "vm.ami.region", self.region)
        ):
            found.append(problem)
        return found


class Target(Protocol):
    def __call__(self, inputs: Inputs, dist: Path, options: Options) -> vm.VmResult: ...


def _qemu(inputs: Inputs, dist: Path, options: Options) -> vm.VmResult:
    return vm.build(inputs, dist, options.on_error)


def spec_problems(target: str, spec: Spec, arch: str = HOST_ARCH) -> list[SpecError]:
    """What `target` needs of the spec and it lacks, each at its field's line (empty: all
    good); the task exits 2 on any, before the cache is read or anything is built."""
    if arch != HOST_ARCH:
        return _foreign_problems(target, spec, arch)
    if target == "ami" and spec.vm.ami is None:
        return [spec.error("vm.ami", "missing; `--target ami` needs vm.ami (at least region)")]
    if target != "gce":
        return []
    if spec.vm.gce is None:
        return [spec.error("vm.gce", "missing; `--target gce` needs vm.gce (bucket, project)")]
    if "gce" not in spec.vm.formats:
        return [spec.error("vm.formats", "`--target gce` uploads the gce format: add gce")]
    return []


# The formats that are the disk alone; the others describe amd64 hardware (OVF, VMX, the box's
# libvirt domain: BIOS firmware, a PC board) and would not boot another architecture's disk.
DISK_ONLY = ("qcow2", "raw", "vhd")


def made_as(spec: Spec, arch: str) -> tuple[Spec, list[str]]:
    """The spec a VM of `arch` is built from: another architecture's has the disk-only formats
    of vm.formats (its key, outputs and cloud-init datasources follow them), and the formats
    left out."""
    if arch == HOST_ARCH:
        return spec, []
    kept = [f for f in spec.vm.formats if f in DISK_ONLY]
    vm_section = dataclasses.replace(spec.vm, formats=kept)
    return dataclasses.replace(spec, vm=vm_section), [f for f in spec.vm.formats if f not in kept]


def _foreign_problems(target: str, spec: Spec, arch: str) -> list[SpecError]:
    if target == "ami" and spec.vm.ami is None:
        return [spec.error("vm.ami", "missing; `--target ami` needs vm.ami (at least region)")]
    if target == "ami" and spec.vm.ami is not None and spec.vm.ami.method == "import":
        target = "qemu"  # the qcow2's disk registered as the AMI (ami.register: its firmware)
    if target != "qemu":
        return [
            spec.error(
                "base.architectures",
                f"an {arch} VM is built by --target qemu or ami (vm.ami.method: import) only",
            )
        ]
    found = []
    if spec.vm.cpus > (most := machines.MACHINES[arch].max_cpus):
        found.append(spec.error("vm.cpus", f"{spec.vm.cpus}: an {arch} VM boots {most} at most"))
    if not set(spec.vm.formats) & set(DISK_ONLY):
        found.append(
            spec.error(
                "vm.formats",
                f"{', '.join(spec.vm.formats)}: describe {HOST_ARCH} hardware; an {arch} VM is "
                f"made as {', '.join(DISK_ONLY)}: list one of them",
            )
        )
    return found


def _ami(inputs: Inputs, dist: Path, options: Options) -> vm.VmResult:
    assert inputs.spec.vm.ami is not None  # spec_problems
    method = ami_stock.build if inputs.spec.vm.ami.method == "stock" else ami.build
    return method(inputs, dist, options.on_error, options.region)


def _gce(inputs: Inputs, dist: Path, options: Options) -> vm.VmResult:
    return gce_image.build(inputs, dist, options.on_error)


TARGETS: dict[str, Target] = {"qemu": _qemu, "ami": _ami, "gce": _gce}
