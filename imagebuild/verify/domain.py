"""verify's libvirt domain: the transient domain XML of a guest, from its architecture's row
(imagebuild.machines: the board, features, firmware) and the hardware its format declares, with
the QEMU arguments every boot shares passed through libvirt's qemu namespace. Every value a
path or argument carries is escaped: nothing in it is read as XML."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from imagebuild import machines, vmboot

DOMAIN_XML = """<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>{cpus}</vcpu>
  <os><type arch={arch} machine={board}>hvm</type>{flash}<boot dev='hd'/></os>
  <features>{features}</features>
  <cpu mode='maximum' check='none'/>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>{emulator}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file={disk}/>
      {target}
    </disk>{controller}
    <serial type='file'><source path={serial}/><target port='0'/></serial>{seed}
  </devices>
  <qemu:commandline>
{qemu_args}
  </qemu:commandline>
</domain>
"""

SERIAL = "serial.log"
# UEFI as flash (code read-only, the variables a copy of the template in the VM's work folder):
# the firmware libvirt knows as UEFI (machines: arm64's ACPI needs it).
FLASH_XML = (
    "<loader readonly='yes' type='pflash'>{code}</loader><nvram template={template}>{vars}</nvram>"
)


# The seed as a second, read-only disk, as OpenStack attaches its config drive: cloud-init finds
# it by its label (cidata) on any block device, and virtio needs no IDE/CD-ROM driver.
SEED_XML = """
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file={iso}/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>"""


# libvirt's words for vmboot.Hardware's disk buses: the target, and the controller it needs.
DISK_TARGETS = {
    "virtio": ("<target dev='vda' bus='virtio'/>", ""),
    "ide": ("<target dev='hda' bus='ide'/>", ""),
    "pvscsi": ("<target dev='sda' bus='scsi'/>", "vmpvscsi"),
    "virtio-scsi": ("<target dev='sda' bus='scsi'/>", "virtio-scsi"),
}


@dataclass(frozen=True)
class Guest:
    """A VM verify boots: its disk, working folder, size, seed, and the hardware and machine
    it is made for."""

    disk: Path
    work: Path
    memory: int
    cpus: int
    seed: Path | None = None
    hardware: vmboot.Hardware = vmboot.VIRTIO
    machine: machines.Machine = machines.HOST


def domain_xml(guest: Guest, overlay: Path, args: list[str]) -> str:
    """A transient libvirt domain of the guest's machine booting `overlay` (on its disk) with
    QEMU `args`."""
    machine, work, seed = guest.machine, guest.work, guest.seed
    target, controller = DISK_TARGETS[guest.hardware.disk_bus]
    flash = ""
    if machine.flash:
        code, template = machine.flash
        flash = FLASH_XML.format(
            code=escape(code), template=quoteattr(template), vars=escape(str(work / "VARS.fd"))
        )
    return DOMAIN_XML.format(
        arch=quoteattr(machine.qemu.removeprefix("qemu-system-")),
        board=quoteattr(machine.board),
        flash=flash,
        features=machine.libvirt_features,
        emulator=escape(f"/usr/bin/{machine.qemu}"),  # Debian's, not whatever PATH has first
        target=target,
        controller=f"\n    <controller type='scsi' model='{controller}'/>" if controller else "",
        name=f"imagebuild-verify-{uuid.uuid4().hex[:8]}",
        memory=guest.memory,
        cpus=guest.cpus,
        disk=quoteattr(str(overlay)),
        serial=quoteattr(str(work / SERIAL)),
        seed=SEED_XML.format(iso=quoteattr(str(seed.resolve()))) if seed else "",
        qemu_args="\n".join(f"    <qemu:arg value={quoteattr(a)}/>" for a in args),
    )
