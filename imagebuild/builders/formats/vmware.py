"""Vagrant box for the VMware provider (`vmware_desktop`: Workstation, Fusion; box format v2):
metadata.json + Vagrantfile + box.vmx + disk.vmdk (the system disk, monolithicSparse: a VMDK
VMware runs, where a streamOptimized one is only imported) + seed.vmdk (the NoCloud seed of
Vagrant's convention, `box.py`). Its hardware is the OVA's: paravirtual SCSI and VMXNET3, the
drivers the image's cloud kernel has."""

from __future__ import annotations

import tempfile
from pathlib import Path

from imagebuild import tools
from imagebuild.builders.formats import box, ova
from imagebuild.spec import Spec

SUFFIX = ".vmware.box"
COMPRESSED_INPUT = False  # the VMDK is written anew: read the uncompressed disk
HARDWARE = ova.VMWARE.hardware
SYSTEM, SEED = "disk.vmdk", "seed.vmdk"
SYSTEM_DISK: tuple[str | None, str] = (SYSTEM, "vmdk")

# virtualHW 14: Workstation 14 / Fusion 10 and later; BIOS firmware (no `firmware` key). The
# name is the spec's (a-z, 0-9, -).
VMX = """\
.encoding = "UTF-8"
config.version = "8"
virtualHW.version = "14"
displayName = "{name}"
guestOS = "debian10-64"
memsize = "{memory}"
numvcpus = "{cpus}"
scsi0.present = "TRUE"
scsi0.virtualDev = "pvscsi"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "{system}"
scsi0:1.present = "TRUE"
scsi0:1.fileName = "{seed}"
ethernet0.present = "TRUE"
ethernet0.virtualDev = "vmxnet3"
ethernet0.connectionType = "nat"
ethernet0.addressType = "generated"
pciBridge0.present = "TRUE"
""" + "".join(  # the PCIe root ports pvscsi and vmxnet3 sit on, as Workstation writes them
    f'pciBridge{n}.present = "TRUE"\npciBridge{n}.virtualDev = "pcieRootPort"\n'
    f'pciBridge{n}.functions = "8"\n'
    for n in range(4, 8)
)

PROVIDER = """\
  config.vm.provider :vmware_desktop do |v|
    v.vmx["memsize"] = "{memory}"
    v.vmx["numvcpus"] = "{cpus}"
  end
"""


def make(disk: Path, dest: Path, spec: Spec, sde: int) -> None:
    stem = dest.name.removesuffix(SUFFIX)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".box-") as tmp:
        system = Path(tmp, SYSTEM)
        tools.run(
            ["qemu-img", "convert", "-f", "qcow2", "-O", "vmdk"]
            + ["-o", "subformat=monolithicSparse", disk, system]
        )
        ova.pin_cid(system, f"{stem}:{sde}")
        seed = box.seed_disk(Path(tmp, SEED), spec, sde, "vmdk", "subformat=monolithicSparse")
        ova.pin_cid(seed, f"{stem}:seed:{sde}")
        vmx = Path(tmp, "box.vmx")
        vmx.write_text(
            VMX.format(
                name=spec.name,
                memory=spec.vm.memory_mb,
                cpus=spec.vm.cpus,
                system=SYSTEM,
                seed=SEED,
            )
        )
        files = [("box.vmx", vmx), (SYSTEM, system), (SEED, seed)]
        meta = {"provider": "vmware_desktop"}
        box.write(dest, meta, box.vagrantfile(spec, PROVIDER), files, sde)
