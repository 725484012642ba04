"""VM outputs from Packer's disk, with real qemu-img on small images (no VM): which disk each
format reads, that the shipped qcow2 is compressed, and that a failure stops everything."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from imagebuild import vmboot
from imagebuild.builders import vm_outputs
from imagebuild.builders.formats import box, qcow2, vagrant
from imagebuild.cache import sha256_file
from imagebuild.errors import ImageBuildError

LOCK = SimpleNamespace(source_date_epoch=0)


def packer_disk(tmp_path: Path) -> Path:
    """An uncompressed qcow2 holding 16 MiB of very compressible data, as Packer leaves it."""
    tmp_path.mkdir(exist_ok=True)
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"imagebuild " * ((16 << 20) // 11))
    disk = tmp_path / "packer-out" / "vm.qcow2"
    disk.parent.mkdir()
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(disk)], check=True)
    return disk


def recorder(compressed: bool, seen: dict[str, tuple[Path, int]], fail: bool = False):
    def make(disk: Path, dest: Path, spec: object, sde: int) -> None:
        seen[dest.name] = (disk, disk.stat().st_size)
        if fail:
            raise RuntimeError("format failed")
        dest.write_text("made")

    return SimpleNamespace(SUFFIX=".x", COMPRESSED_INPUT=compressed, make=make)


def test_formats_read_the_right_disk_and_the_shipped_one_is_compressed(
    tmp_path: Path, monkeypatch
) -> None:
    written = packer_disk(tmp_path)
    size = written.stat().st_size
    seen: dict[str, tuple[Path, int]] = {}
    monkeypatch.setattr(
        vm_outputs, "FORMATS", {"a": recorder(False, seen), "b": recorder(True, seen)}
    )
    made = {"a": tmp_path / "a.out", "b": tmp_path / "b.out"}
    vm_outputs.make_formats(written, made, None, LOCK)  # type: ignore[arg-type]
    assert seen["a.out"] == (written, size)
    disk_b, size_b = seen["b.out"]
    assert disk_b == tmp_path / "compressed.qcow2" and size_b < size // 4  # beside the outputs
    assert not written.exists()  # read by then; not carried to the end of the build
    assert all(p.read_text() == "made" for p in made.values())
    base = packer_disk(tmp_path / "cache")  # the cached base disk the qemu target ships
    vm_outputs.make_formats(base, made, None, LOCK, keep=True)  # type: ignore[arg-type]
    assert base.exists() and base.stat().st_size == size


def test_a_failing_format_stops_the_compression(tmp_path: Path, monkeypatch) -> None:
    written = packer_disk(tmp_path)
    procs: list[subprocess.Popen[bytes]] = []
    real = qcow2.start_compress
    monkeypatch.setattr(qcow2, "start_compress", lambda *a: procs.append(real(*a)) or procs[-1])
    seen: dict[str, tuple[Path, int]] = {}
    fake = {"a": recorder(False, seen, fail=True), "b": recorder(True, seen)}
    monkeypatch.setattr(vm_outputs, "FORMATS", fake)
    with pytest.raises(RuntimeError, match="format failed"):
        vm_outputs.make_formats(written, {"a": tmp_path / "a", "b": tmp_path / "b"}, None, LOCK)  # type: ignore[arg-type]
    assert procs and procs[0].returncode is not None  # not left running
    assert "b" not in seen


def test_a_failed_compression_is_an_error_in_qemu_imgs_words(tmp_path: Path, monkeypatch) -> None:
    seen: dict[str, tuple[Path, int]] = {}
    monkeypatch.setattr(vm_outputs, "FORMATS", {"b": recorder(True, seen)})
    missing = tmp_path / "packer-out" / "vm.qcow2"
    with pytest.raises(ImageBuildError, match=r"qemu-img convert -c .* failed \(exit 1\)"):
        vm_outputs.make_formats(missing, {"b": tmp_path / "b"}, None, LOCK)  # type: ignore[arg-type]
    assert not seen


def test_the_vagrant_box_is_reproducible_and_carries_the_convention_on_its_seed(
    tmp_path: Path,
) -> None:
    """Real mkfs.fat, mcopy and qemu-img: two boxes made apart in time are the same bytes; the
    system disk is the input unchanged; the seed holds Vagrant's user and insecure key."""
    disk = packer_disk(tmp_path)
    spec = SimpleNamespace(name="demo", version="1.0", vm=SimpleNamespace(memory_mb=1024, cpus=2))
    boxes = [tmp_path / "a.box", tmp_path / "b.box"]
    vagrant.make(disk, boxes[0], spec, 1700000000)  # type: ignore[arg-type]
    time.sleep(2.1)  # FAT dates have a 2 s grain
    vagrant.make(disk, boxes[1], spec, 1700000000)  # type: ignore[arg-type]
    assert sha256_file(boxes[0]) == sha256_file(boxes[1])
    out = tmp_path / "unpacked"
    with tarfile.open(boxes[0]) as tar:
        assert tar.getnames() == ["metadata.json", "Vagrantfile", "box.img", "seed.img"]
        tar.extractall(out)  # our own four plain members
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["disks"] == [{"path": "box.img"}, {"path": "seed.img"}]
    assert sha256_file(out / "box.img") == sha256_file(disk)
    raw = tmp_path / "seed.raw"
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(out / "seed.img"), str(raw)], check=True
    )
    label = subprocess.run(["fatlabel", str(raw)], capture_output=True, text=True, check=True)
    assert label.stdout.strip() == "CIDATA"
    user_data = subprocess.run(
        ["mtype", "-i", str(raw), "::user-data"], capture_output=True, text=True, check=True
    ).stdout
    users = yaml.safe_load(user_data)["users"]
    assert users[0]["name"] == "vagrant" and users[0]["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    assert users[0]["ssh_authorized_keys"] == [box.INSECURE_KEY]
    assert "libvirt.memory = 1024" in (out / "Vagrantfile").read_text()


def test_the_spec_offers_every_format_there_is_a_module_for() -> None:
    from imagebuild import spec_sections as sections
    from imagebuild.builders.formats import FORMATS

    assert set(sections.VM_FORMATS) == set(FORMATS)
    assert set(sections.DEFAULT_VM_FORMATS) | set(sections.FORMAT_DATASOURCES) <= set(FORMATS)


def test_a_clouds_format_adds_its_cloud_init_datasource() -> None:
    from imagebuild.spec_sections import Vm

    assert Vm().datasources() == ["NoCloud", "ConfigDrive", "OVF", "Ec2"]
    both = Vm(formats=["qcow2", "vhd", "gce", "raw"]).datasources()
    assert both == ["NoCloud", "ConfigDrive", "OVF", "Ec2", "Azure", "GCE"]


def _seed_key(seed_vmdk: Path, tmp_path: Path) -> str:
    raw = tmp_path / "seed.raw"
    subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", seed_vmdk, raw], check=True)
    user_data = subprocess.run(
        ["mtype", "-i", str(raw), "::user-data"], capture_output=True, text=True, check=True
    ).stdout
    return yaml.safe_load(user_data)["users"][0]["ssh_authorized_keys"][0]


def _print_source(*args: str) -> tuple[list[str], str]:
    """virt-v2v's reading of a VM description: its disks' buses and its NIC line."""
    r = subprocess.run(
        ["virt-v2v", "--print-source", *args], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "warning" not in r.stderr, r.stdout + r.stderr
    disks = r.stdout.split("disks:")[1].split("removable media:")[0].split()
    return disks, r.stdout.split("NICs:")[1].strip()


@pytest.mark.parametrize("fmt", ["virtualbox", "vmware"])
def test_the_virtualbox_and_vmware_boxes_are_what_their_tools_read(
    fmt: str, tmp_path: Path
) -> None:
    """Box format v2 for each provider: metadata.json names it; its descriptor (VirtualBox's OVF,
    VMware's VMX), as virt-v2v reads it, attaches the system disk and the seed on the controller
    and NIC the image's cloud kernel drives (which verify boots it on); each disk is one
    self-contained VMDK, the system one the input's bytes, the seed with Vagrant's key; the real
    `vagrant box add` takes the box for its provider."""
    from imagebuild import diskimage
    from imagebuild.builders.formats import FORMATS, virtualbox, vmware

    disk = packer_disk(tmp_path)
    spec = SimpleNamespace(name="demo", version="1.0", vm=SimpleNamespace(memory_mb=1024, cpus=2))
    made = tmp_path / f"demo-1.0{FORMATS[fmt].SUFFIX}"
    FORMATS[fmt].make(disk, made, spec, 1_700_000_000)  # type: ignore[arg-type]
    out = tmp_path / "unpacked"
    with tarfile.open(made) as tar:
        names = tar.getnames()
        tar.extractall(out)  # our own plain members
    if fmt == "virtualbox":
        provider, system, seed = "virtualbox", virtualbox.SYSTEM, virtualbox.SEED
        assert names == ["metadata.json", "Vagrantfile", "box.ovf", system, seed]
        disks, nic = _print_source("-i", "ova", str(out))
        assert disks == ["0", "[ide]", "1", "[ide]"] and nic == 'Bridge "NAT" [virtio-net]'
        assert vmboot.Hardware("ide", "virtio") == FORMATS[fmt].HARDWARE
        vmdk_type = "streamOptimized"
    else:
        provider, system, seed = "vmware_desktop", vmware.SYSTEM, vmware.SEED
        assert names == ["metadata.json", "Vagrantfile", "box.vmx", system, seed]
        disks, nic = _print_source("-i", "vmx", str(out / "box.vmx"))
        assert disks == ["0", "[scsi]", "1", "[scsi]"] and nic == 'Network "ethernet0" [vmxnet3]'
        assert 'scsi0.virtualDev = "pvscsi"' in (out / "box.vmx").read_text()
        assert vmboot.Hardware("pvscsi", "vmxnet3") == FORMATS[fmt].HARDWARE
        vmdk_type = "monolithicSparse"
    assert json.loads((out / "metadata.json").read_text()) == {"provider": provider}
    for name in (system, seed):
        assert diskimage.info(out / name, "vmdk")["format-specific"]["data"]["create-type"] == (
            vmdk_type
        )
    same = ["qemu-img", "compare", "-q", "-f", "vmdk", "-F", "qcow2", out / system, disk]
    assert subprocess.run(same).returncode == 0
    assert _seed_key(out / seed, tmp_path) == box.INSECURE_KEY
    env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "vagrant.d")}
    r = subprocess.run(
        ["vagrant", "box", "add", "--name", "demo", str(made)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0 and f"for '{provider}'" in r.stdout, r.stdout + r.stderr


def test_the_virtualbox_box_copies_the_ovas_vmdk_instead_of_compressing_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same disk, same CID seed: the OVA's VMDK is the box's system disk, byte for byte; made
    after the OVA, the box copies it out of the OVA (checked against the OVA's manifest digest)
    instead of running qemu-img's compression a second time."""
    from imagebuild import tools
    from imagebuild.builders.formats import ova, virtualbox

    disk = packer_disk(tmp_path)
    spec = SimpleNamespace(name="demo", version="1.0", vm=SimpleNamespace(memory_mb=1024, cpus=2))
    converted: list[list[str]] = []
    run = tools.run

    def recording(argv: list[str], **kw: object) -> object:
        if "convert" in argv:
            converted.append([str(a) for a in argv])
        return run(argv, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(tools, "run", recording)
    with ova.sharing():  # as make_formats makes them
        ova.make(disk, tmp_path / "demo-1.0.ova", spec, 1_700_000_000)  # type: ignore[arg-type]
        virtualbox.make(disk, tmp_path / "demo-1.0.virtualbox.box", spec, 1_700_000_000)  # type: ignore[arg-type]
    assert len([a for a in converted if str(disk) in a]) == 1  # the OVA's; then only the seed
    # outside one make_formats call nothing is shared: the disk may have been replaced
    converted.clear()
    virtualbox.make(disk, tmp_path / "again.virtualbox.box", spec, 1_700_000_000)  # type: ignore[arg-type]
    assert len([a for a in converted if str(disk) in a]) == 1
    with (
        tarfile.open(tmp_path / "demo-1.0.ova") as a,
        tarfile.open(tmp_path / "demo-1.0.virtualbox.box") as b,
    ):
        ova_vmdk = a.extractfile("demo-1.0-disk1.vmdk")
        box_vmdk = b.extractfile(virtualbox.SYSTEM)
        assert ova_vmdk is not None and box_vmdk is not None
        assert ova_vmdk.read() == box_vmdk.read()


def test_pin_cid_rewrites_what_qemus_own_cid_update_leaves_behind(tmp_path: Path) -> None:
    """qemu's CID update leaves the old descriptor's last bytes after the new terminator when
    the new CID prints shorter (seen in CI: `\\0\\n` after the text): pinning still works and
    gives the bytes a clean descriptor gives."""
    import struct

    from imagebuild.builders.formats import ova

    disk = packer_disk(tmp_path)
    clean, dirty = tmp_path / "a" / "disk.vmdk", tmp_path / "b" / "disk.vmdk"  # one name: the
    for dest in (clean, dirty):  # descriptor names its extent file
        dest.parent.mkdir()
        argv = ["qemu-img", "convert", "-f", "qcow2", "-O", "vmdk"]
        subprocess.run([*argv, "-o", "subformat=streamOptimized", disk, dest], check=True)
    data = bytearray(dirty.read_bytes())
    offset = struct.unpack_from("<Q", data, 28)[0] * 512
    end = data.index(b"\0", offset)
    data[end + 1 : end + 3] = b"0\n"  # what a CID one digit shorter leaves
    dirty.write_bytes(bytes(data))
    for vmdk in (clean, dirty):
        ova.pin_cid(vmdk, "demo:1")
    a, b = clean.read_bytes(), dirty.read_bytes()
    # the descriptors (the only random part of either file) now agree byte for byte
    assert a[offset : offset + 10240] == b[offset : offset + 10240]
    assert b"CID=" + hashlib.sha256(b"demo:1").hexdigest()[:8].encode() + b"\n" in b[:20480]
