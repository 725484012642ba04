"""OVA: an OVF 1.0 descriptor, one streamOptimized VMDK and a SHA256 manifest, in a ustar
archive with the descriptor first (OVF spec DSP0243 section 5.3). Its hardware is VMware's
paravirtual SCSI and VMXNET3 (the drivers the image's cloud kernel has); the VirtualBox box
(`virtualbox.py`) writes the same descriptor with VirtualBox's."""

from __future__ import annotations

import hashlib
import re
import struct
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from imagebuild import tarnorm, tools, vmboot
from imagebuild.cache import sha256_file
from imagebuild.diskimage import info
from imagebuild.spec import Spec

SUFFIX = ".ova"
CHUNK = 8 << 20
COMPRESSED_INPUT = False  # the VMDK is compressed anew: read the uncompressed disk

OVF = """<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData">
  <References>
{files}
  </References>
  <DiskSection>
    <Info>Virtual disks</Info>
{disks}
  </DiskSection>
  <NetworkSection>
    <Info>Logical networks</Info>
    <Network ovf:name="NAT"><Description>NAT network</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>{name} {version}, built by imagebuild</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="96">
      <Info>Guest operating system</Info>
      <Description>Debian GNU/Linux (64-bit)</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>{system_type}</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:ElementName>{cpus} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory size</rasd:Description>
        <rasd:ElementName>{memory} MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{memory}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:ElementName>{controller} controller</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>{controller}</rasd:ResourceSubType>
        <rasd:ResourceType>{controller_type}</rasd:ResourceType>
      </Item>
{disk_items}
      <Item>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>NAT</rasd:Connection>
        <rasd:ElementName>ethernet0</rasd:ElementName>
        <rasd:InstanceID>{nic_id}</rasd:InstanceID>
        <rasd:ResourceSubType>{nic}</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""
FILE = '    <File ovf:id="file{n}" ovf:href="{href}" ovf:size="{size}"/>'
DISK = """    <Disk ovf:diskId="vmdisk{n}" ovf:fileRef="file{n}" ovf:capacity="{capacity}"
      ovf:capacityAllocationUnits="byte"
      ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>"""
DISK_ITEM = """      <Item>
        <rasd:AddressOnParent>{address}</rasd:AddressOnParent>
        <rasd:ElementName>disk{n}</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk{n}</rasd:HostResource>
        <rasd:InstanceID>{id}</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>"""


@dataclass(frozen=True)
class Flavour:
    """What a hypervisor's importer reads from the descriptor and the image's cloud kernel
    drives (it has neither the LSI Logic SCSI nor the E1000 drivers, the usual OVF defaults)."""

    system_type: str
    controller: str  # rasd:ResourceSubType of the disk controller
    controller_type: int  # rasd:ResourceType: 5 IDE, 6 SCSI
    nic: str  # rasd:ResourceSubType of the NIC
    hardware: vmboot.Hardware  # the same, as QEMU emulates it (verify boots on it)


# VMware (vSphere, Workstation, Fusion): paravirtual SCSI and VMXNET3.
VMWARE = Flavour("vmx-10", "VirtualSCSI", 6, "VmxNet3", vmboot.Hardware("pvscsi", "vmxnet3"))
HARDWARE = VMWARE.hardware
SYSTEM_DISK: tuple[str | None, str] = ("*.vmdk", "vmdk")  # the one disk the OVF names


def descriptor(spec: Spec, flavour: Flavour, disks: list[tuple[Path, int]]) -> str:
    """The OVF for `disks` (each VMDK and its virtual size), attached in that order."""
    n = range(1, len(disks) + 1)
    return OVF.format(
        files="\n".join(
            FILE.format(n=i, href=escape(p.name), size=p.stat().st_size)
            for i, (p, _) in zip(n, disks, strict=True)
        ),
        disks="\n".join(DISK.format(n=i, capacity=c) for i, (_, c) in zip(n, disks, strict=True)),
        disk_items="\n".join(DISK_ITEM.format(n=i, address=i - 1, id=3 + i) for i in n),
        nic_id=4 + len(disks),
        name=escape(spec.name),
        version=escape(spec.version),
        cpus=spec.vm.cpus,
        memory=spec.vm.memory_mb,
        system_type=flavour.system_type,
        controller=flavour.controller,
        controller_type=flavour.controller_type,
        nic=flavour.nic,
    )


# Within `sharing()` (one make_formats call: one disk, which nothing replaces meanwhile), the
# streamOptimized VMDKs made so far, each where it now lies inside an archive: the OVA and the
# VirtualBox box carry the same bytes (same disk, same CID seed), so the second is copied out
# of the first, not compressed again (17.5 -> 1.2 s on wordcount-api here). The copy must hash
# to what was recorded.
_MADE: dict[tuple[int, int, int, str], tuple[Path, int, int, str]] | None = None


@contextmanager
def sharing() -> Iterator[None]:
    global _MADE
    _MADE = {}
    try:
        yield
    finally:
        _MADE = None


def _identity(disk: Path, seed: str) -> tuple[int, int, int, str]:
    st = disk.stat()
    return (st.st_dev, st.st_ino, st.st_ctime_ns, seed)


def stream_vmdk(disk: Path, dest: Path, seed: str) -> Path:
    """`disk` (a qcow2) as a streamOptimized VMDK (what OVF packages carry), its CID derived
    from `seed`."""
    made = _MADE.get(_identity(disk, seed)) if _MADE is not None else None
    if made and _copy_out(made, dest):
        return dest
    tools.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "vmdk", "-o", "subformat=streamOptimized"]
        + [disk, dest]
    )
    pin_cid(dest, seed)
    return dest


def remember(disk: Path, seed: str, archive: Path, member: str, sha256: str) -> None:
    """`member` of `archive` is `disk`'s VMDK for `seed` (its sha256 as written)."""
    if _MADE is None:
        return
    with tarfile.open(archive) as tar:
        info = tar.getmember(member)
    _MADE[_identity(disk, seed)] = (archive, info.offset_data, info.size, sha256)


def _copy_out(made: tuple[Path, int, int, str], dest: Path) -> bool:
    archive, offset, size, sha256 = made
    digest, left = hashlib.sha256(), size
    try:
        with archive.open("rb") as src, dest.open("wb") as out:
            src.seek(offset)
            while left and (chunk := src.read(min(CHUNK, left))):
                digest.update(chunk)  # checked as it is copied: one read
                out.write(chunk)
                left -= len(chunk)
    except OSError:
        return False
    if left == 0 and digest.hexdigest() == sha256:
        return True
    dest.unlink()
    return False


def pin_cid(vmdk: Path, seed: str) -> None:
    """qemu-img writes a random content ID (`CID=` in the VMDK's embedded descriptor, which
    VMware reads to pair a disk with its children, printed without leading zeros): one of 8 hex
    digits derived from `seed` instead, so the same disk gives the same VMDK. The descriptor is
    NUL-terminated text in its own sectors (the header's desc_offset/desc_size), not
    checksummed. The whole region is rewritten: qemu's own CID update (vmdk_write_cid) leaves
    the old text's last bytes after the new terminator when the new CID prints shorter, so what
    follows the text there is not zeros, and differs between runs (a CI failure, once in a few
    hundred conversions)."""
    cid = hashlib.sha256(seed.encode()).hexdigest()[:8].encode()
    with vmdk.open("r+b") as f:
        header = f.read(512)
        offset, sectors = struct.unpack_from("<QQ", header, 28) if len(header) == 512 else (0, 0)
        f.seek(offset * 512)
        region = f.read(sectors * 512) if header[:4] == b"KDMV" and 0 < sectors <= 128 else b""
        text = region.split(b"\0", 1)[0]
        new, n = re.subn(rb"(?m)^CID=[0-9a-f]{1,8}$", b"CID=" + cid, text)
        if not text.startswith(b"# Disk DescriptorFile") or n != 1 or len(new) >= len(region):
            found = f"{n} CID lines in {text[:160]!r}" if region else "no descriptor"
            raise tools.ToolError(
                f"{vmdk}: no CID=<hex> line in its embedded descriptor ({found}; "
                f"{vmdk.stat().st_size} bytes)"
            )
        f.seek(offset * 512)
        f.write(new.ljust(len(region), b"\0"))


def _add(tar: tarfile.TarFile, path: Path, sde: int) -> None:
    tarnorm.add_file(tar, path.name, path, sde)


def make(disk: Path, dest: Path, spec: Spec, sde: int) -> None:
    stem = dest.name.removesuffix(SUFFIX)
    work = dest.parent / f".{stem}.ova.d"
    work.mkdir()
    try:
        vmdk = stream_vmdk(disk, work / f"{stem}-disk1.vmdk", f"{stem}:{sde}")
        ovf = work / f"{stem}.ovf"
        ovf.write_text(descriptor(spec, VMWARE, [(vmdk, info(disk)["virtual-size"])]))
        mf = work / f"{stem}.mf"
        digests = {p.name: sha256_file(p) for p in (ovf, vmdk)}
        mf.write_text("".join(f"SHA256({n})= {d}\n" for n, d in digests.items()))
        with tarfile.open(dest, "w", format=tarfile.USTAR_FORMAT) as tar:
            for p in (ovf, mf, vmdk):  # descriptor first, then manifest, then the disk
                _add(tar, p, sde)
        remember(disk, f"{stem}:{sde}", dest, vmdk.name, digests[vmdk.name])
    finally:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()
