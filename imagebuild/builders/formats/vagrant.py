"""Vagrant box for the libvirt provider, vagrant-libvirt's box format v2: metadata.json +
Vagrantfile + box.img (the shipped qcow2, unchanged) + seed.img (the NoCloud seed of Vagrant's
convention, `box.py`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from imagebuild import vmboot
from imagebuild.builders.formats import box
from imagebuild.spec import Spec

SUFFIX = ".libvirt.box"
COMPRESSED_INPUT = True  # box.img is the shipped qcow2
HARDWARE = vmboot.VIRTIO
SYSTEM_DISK: tuple[str | None, str] = ("box.img", "qcow2")

PROVIDER = """\
  config.vm.provider :libvirt do |libvirt|
    # KVM where the CPU can virtualise (a /dev/kvm without vmx/svm only crawls), else TCG
    kvm = File.writable?("/dev/kvm") && File.read("/proc/cpuinfo").match?(/\\b(vmx|svm)\\b/)
    libvirt.driver = kvm ? "kvm" : "qemu"
    libvirt.memory = {memory}
    libvirt.cpus = {cpus}
    libvirt.disk_bus = "virtio"
    # the wheels need SSE4.2/AVX: the host's CPU under KVM, QEMU's "max" under TCG
    libvirt.cpu_mode = "maximum"
  end
"""


def make(disk: Path, dest: Path, spec: Spec, sde: int) -> None:
    meta = {
        "provider": "libvirt",
        "format": "qcow2",
        "disks": [{"path": "box.img"}, {"path": "seed.img"}],
    }
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".box-") as tmp:
        # vagrant-libvirt requires every box disk to be a qcow2
        seed_img = box.seed_disk(Path(tmp, "seed.img"), spec, sde, "qcow2")
        files = [("box.img", disk), ("seed.img", seed_img)]
        box.write(dest, meta, box.vagrantfile(spec, PROVIDER), files, sde)
