"""verify --vm over what ships: the disk inside a Vagrant box is taken out (streamed, by name)
and must hold the qcow2's bytes. Real tar, qemu-img and the real box maker on small disks."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from imagebuild.builders.formats import vagrant
from imagebuild.cache import sha256_file
from imagebuild.verify import vmdisk

SPEC = SimpleNamespace(name="demo", version="1.0", vm=SimpleNamespace(memory_mb=512, cpus=1))
GB = 2  # the spec's vm.disk_gb: every disk verify takes must have that virtual size


def disk(path: Path, fill: bytes) -> Path:
    """A qcow2 of GB GiB whose first 4 MiB are `fill`."""
    raw = path.with_suffix(".raw")
    raw.write_bytes(fill * ((4 << 20) // len(fill)))
    with raw.open("r+b") as f:
        f.truncate(GB << 30)
    subprocess.run(
        ["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True
    )
    return path


def test_the_box_disk_is_booted_and_must_be_the_qcow2(tmp_path: Path) -> None:
    qcow2 = disk(tmp_path / "demo-1.0.qcow2", b"same bytes ")
    box = tmp_path / "demo-1.0.libvirt.box"
    vagrant.make(qcow2, box, SPEC, 0)  # type: ignore[arg-type]
    got = vmdisk.bootable(box, tmp_path / "work", GB)
    assert got.kind == "vagrant" and sha256_file(got.bootable) == sha256_file(qcow2)
    vmdisk.same_as(got, qcow2)  # equal: no error
    other = disk(tmp_path / "other.qcow2", b"other build ")
    with pytest.raises(vmdisk.DiskError, match="differs from other.qcow2"):
        vmdisk.same_as(got, other)


def test_what_is_not_a_vm_artifact_is_named(tmp_path: Path) -> None:
    with pytest.raises(vmdisk.DiskError, match="not a VM artifact"):
        vmdisk.bootable(tmp_path / "demo.iso", tmp_path, GB)
    fake = tmp_path / "demo.ova"
    fake.write_text("not a tar")
    with pytest.raises(vmdisk.DiskError, match="not a readable tar"):
        vmdisk.bootable(fake, tmp_path / "work", GB)
    box = tmp_path / "demo.libvirt.box"  # the system disk is box.img itself, not a look-alike
    with tarfile.open(box, "w") as tar:
        tar.add(disk(tmp_path / "d.qcow2", b"x"), "evilbox.img")
    with pytest.raises(vmdisk.DiskError, match=r"expected one box.img disk at its top, found none"):
        vmdisk.bootable(box, tmp_path / "work", GB)


@pytest.mark.parametrize("fmt", ["vhd", "gce", "raw", "ova", "virtualbox", "vmware"])
def test_every_format_is_the_qcow2s_disk_and_reproducible(fmt: str, tmp_path: Path) -> None:
    """Each format made twice from one qcow2 gives the same bytes (the VHD footer's time and
    UUID, the VMDK's CID and the tar and gzip headers fixed); verify --vm takes it, and its disk
    holds the qcow2's guest-visible bytes, and not another's."""
    from imagebuild.builders.formats import FORMATS, filename

    qcow2 = disk(tmp_path / "demo-1.0.qcow2", b"same bytes ")
    made = []
    for n in (1, 2):
        (tmp_path / str(n)).mkdir()
        dest = tmp_path / str(n) / filename(fmt, SPEC)  # type: ignore[arg-type]
        FORMATS[fmt].make(qcow2, dest, SPEC, 1_700_000_000)  # type: ignore[arg-type]
        made.append(dest)
    assert sha256_file(made[0]) == sha256_file(made[1])
    other = disk(tmp_path / "other.qcow2", b"other build ")
    for to_qcow2 in (False, True):  # compared as it is, and as verify boots it
        got = vmdisk.bootable(made[0], tmp_path / f"work-{to_qcow2}", GB, to_qcow2)
        assert got.kind == fmt and (got.fmt == "qcow2") == (to_qcow2 or fmt == "qcow2")
        vmdisk.same_as(got, qcow2)
        with pytest.raises(vmdisk.DiskError, match="differs from other.qcow2"):
            vmdisk.same_as(got, other)


def test_the_vhd_is_fixed_exact_and_stamped_with_the_lock_date(tmp_path: Path) -> None:
    """Azure's rules: a fixed VHD whose virtual size is whole MiB and exact (no CHS rounding)."""
    import json
    import struct

    from imagebuild.builders.formats import vhd

    qcow2 = disk(tmp_path / "demo-1.0.qcow2", b"x")
    dest = tmp_path / "demo-1.0.vhd"
    vhd.make(qcow2, dest, SPEC, 1_700_000_000)  # type: ignore[arg-type]
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", "-f", "vpc", str(dest)],
            capture_output=True,
            check=True,
        ).stdout
    )
    assert info["format"] == "vpc" and info["virtual-size"] == GB << 30
    assert dest.stat().st_size == (GB << 30) + 512  # the disk, then the footer
    footer = dest.read_bytes()[-512:]
    assert struct.unpack_from(">I", footer, 60)[0] == 2  # fixed
    assert struct.unpack_from(">I", footer, 24)[0] == 1_700_000_000 - vhd.VHD_EPOCH
    assert struct.unpack_from(">I", footer, 64)[0] == vhd.footer_checksum(footer)
    # a dynamic VHD (other structures, a differencing one names a parent) is refused
    dynamic = tmp_path / "dyn" / "demo-1.0.vhd"
    dynamic.parent.mkdir()
    subprocess.run(
        ["qemu-img", "convert", "-O", "vpc", "-o", "subformat=dynamic", str(qcow2), str(dynamic)],
        check=True,
    )
    with pytest.raises(Exception, match="not a fixed one"):
        vmdisk.bootable(dynamic, tmp_path / "work", GB)


def test_the_gce_tarball_is_what_compute_engine_reads(tmp_path: Path) -> None:
    """One member, disk.raw, sparse (GNU), fixed owner and time; gzip without name or time."""
    from imagebuild.builders.formats import gce

    qcow2 = disk(tmp_path / "demo-1.0.qcow2", b"x")
    dest = tmp_path / "demo-1.0.gce.tar.gz"
    gce.make(qcow2, dest, SPEC, 1_700_000_000)  # type: ignore[arg-type]
    head = dest.read_bytes()[:10]
    assert head[:2] == b"\x1f\x8b" and head[3] & 0x08 == 0 and head[4:8] == b"\0\0\0\0"
    with tarfile.open(dest) as tar:
        (member,) = tar.getmembers()
    assert (member.name, member.size, member.mtime) == ("disk.raw", GB << 30, 1_700_000_000)
    assert member.issparse() and (member.uid, member.gid, member.mode) == (0, 0, 0o644)
    assert dest.stat().st_size < 1 << 20  # 2 GiB of mostly holes


def test_a_disk_member_larger_than_the_spec_allows_is_refused_unread(tmp_path: Path) -> None:
    """A GCE tarball whose disk.raw says it is 3 GiB for a 2 GiB spec: refused from its header,
    before gigabytes of holes are streamed out."""
    raw = tmp_path / "disk.raw"
    with raw.open("wb") as f:
        f.truncate(3 << 30)
    tarball = tmp_path / "demo-1.0.gce.tar.gz"
    subprocess.run(["tar", "-S", "-czf", str(tarball), "-C", str(tmp_path), "disk.raw"], check=True)
    with pytest.raises(vmdisk.DiskError, match="disk.raw is 3221225472 bytes, more than"):
        vmdisk.bootable(tarball, tmp_path / "work", GB)
    assert not (tmp_path / "work" / "disk.raw").exists()
