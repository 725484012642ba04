"""Vagrant box for the libvirt provider, vagrant-libvirt's box format v2: metadata.json +
Vagrantfile + box.img (the shipped qcow2, unchanged) + seed.img (a NoCloud seed), in a tar with
fixed owners and times.

Vagrant's convention (a `vagrant` user with Vagrant's published insecure key and passwordless
sudo, the key replaced by a fresh one on the first `vagrant up`) lives on the seed disk, which
cloud-init reads at first boot: the system disk is the same bytes as the qcow2, and neither the
qcow2 nor the OVA carries a known key."""

from __future__ import annotations

import json
import tarfile
import tempfile
from pathlib import Path

from imagebuild import distnames, seed, tarnorm, tools
from imagebuild.spec import Spec

SUFFIX = ".libvirt.box"
COMPRESSED_INPUT = True  # box.img is the shipped qcow2

# hashicorp/vagrant keys/vagrant.pub: the key every Vagrant knows the private half of, and
# replaces (config.ssh.insert_key) before anything else runs.
INSECURE_KEY = (
    "ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp22WDkTkyrtvp9eWW6A8YVr+kz4TjGYe7gHzIw+niNlt"
    "GEFHzD8+v1I2YJ6oXevct1YeS0o9HZyN1Q9qgCgzUFtdOKLv6IedplqoPkcmF0aYet2PkEDo3MlTBckFXPITAMzF8d"
    "JSIFo9D8HfdOV0IAdx4O7PtixWKn5y2hMNG0zQPyUecp4pzC6kivAIhyfHilFR61RGL+GPXQ2MWZWFYbAGjyiYJnAmC"
    "P3NOTd0jMZEnDkbUvxhMmBYSdETk1rRgm+R4LOzFUGaHqHDLKLX+FIPKcF96hrucXzcWyLbIbEgE98OHlnVYCzRdK8jl"
    "qm8tehUc9c9WhQ== vagrant insecure public key"
)

# What a box should set, and nothing about the user's networking: a project's Vagrantfile
# overrides it (vagrant/Vagrantfile shows the lines for QEMU user networking on 127.0.0.1).
VAGRANTFILE = """\
# Defaults of the {name} box (imagebuild); a project's own Vagrantfile overrides them.
Vagrant.configure("2") do |config|
  # no rsync or NFS client in the image
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.provider :libvirt do |libvirt|
    # KVM where the CPU can virtualise (a /dev/kvm without vmx/svm only crawls), else TCG
    kvm = File.writable?("/dev/kvm") && File.read("/proc/cpuinfo").match?(/\b(vmx|svm)\b/)
    libvirt.driver = kvm ? "kvm" : "qemu"
    libvirt.memory = {memory}
    libvirt.cpus = {cpus}
    libvirt.disk_bus = "virtio"
    # the wheels need SSE4.2/AVX: the host's CPU under KVM, QEMU's "max" under TCG
    libvirt.cpu_mode = "maximum"
  end
end
"""


def _seed(dest: Path, spec: Spec, sde: int) -> Path:
    """seed.img: the NoCloud seed as the qcow2 vagrant-libvirt requires of every box disk."""
    raw = seed.nocloud_vfat(
        dest.with_suffix(".raw"),
        instance_id=f"{distnames.stem(spec)}-vagrant",
        hostname=spec.name,
        cloud_config={"users": [seed.user("vagrant", INSECURE_KEY)]},
        sde=sde,
    )
    tools.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(dest)])
    raw.unlink()
    return dest


def make(disk: Path, dest: Path, spec: Spec, sde: int) -> None:
    meta = {
        "provider": "libvirt",
        "format": "qcow2",
        "disks": [{"path": "box.img"}, {"path": "seed.img"}],
    }
    vf = VAGRANTFILE.format(name=spec.name, memory=spec.vm.memory_mb, cpus=spec.vm.cpus)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".box-") as tmp:
        seed_img = _seed(Path(tmp, "seed.img"), spec, sde)
        with tarfile.open(dest, "w", format=tarfile.GNU_FORMAT) as tar:
            for name, data in (
                ("metadata.json", json.dumps(meta).encode()),
                ("Vagrantfile", vf.encode()),
            ):
                tarnorm.add_bytes(tar, name, data, sde)
            for name, path in (("box.img", disk), ("seed.img", seed_img)):
                tarnorm.add_file(tar, name, path, sde)
