"""Vagrant box for the VirtualBox provider (box format v2), the layout `vagrant package` writes
and Vagrant imports with `VBoxManage import box.ovf`: metadata.json + Vagrantfile + box.ovf +
box-disk001.vmdk (the system disk, streamOptimized) + box-disk002.vmdk (the NoCloud seed of
Vagrant's convention, `box.py`).

The descriptor is the OVA's with the hardware VirtualBox emulates and the image's cloud kernel
drives: the PIIX4 IDE controller (ata_piix) and a virtio NIC (VirtualBox reads "virtio-net");
VirtualBox's own defaults (AHCI, E1000, PCnet) have no driver in that kernel."""

from __future__ import annotations

import tempfile
from pathlib import Path

from imagebuild import vmboot
from imagebuild.builders.formats import box, ova
from imagebuild.diskimage import info
from imagebuild.spec import Spec

SUFFIX = ".virtualbox.box"
COMPRESSED_INPUT = False  # the VMDK is compressed anew: read the uncompressed disk
VIRTUALBOX = ova.Flavour(
    "virtualbox-2.2", "PIIX4", 5, "virtio-net", vmboot.Hardware("ide", "virtio")
)
HARDWARE = VIRTUALBOX.hardware
SYSTEM, SEED = "box-disk001.vmdk", "box-disk002.vmdk"
SYSTEM_DISK: tuple[str | None, str] = (SYSTEM, "vmdk")

PROVIDER = """\
  config.vm.provider :virtualbox do |vb|
    vb.memory = {memory}
    vb.cpus = {cpus}
  end
"""


def make(disk: Path, dest: Path, spec: Spec, sde: int) -> None:
    stem = dest.name.removesuffix(SUFFIX)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".box-") as tmp:
        system = ova.stream_vmdk(disk, Path(tmp, SYSTEM), f"{stem}:{sde}")
        seed = box.seed_disk(Path(tmp, SEED), spec, sde, "vmdk", "subformat=streamOptimized")
        ova.pin_cid(seed, f"{stem}:seed:{sde}")
        sizes = [(p, info(p, "vmdk")["virtual-size"]) for p in (system, seed)]
        ovf = Path(tmp, "box.ovf")
        ovf.write_text(ova.descriptor(spec, VIRTUALBOX, sizes))
        files = [("box.ovf", ovf), (SYSTEM, system), (SEED, seed)]
        box.write(dest, {"provider": "virtualbox"}, box.vagrantfile(spec, PROVIDER), files, sde)
