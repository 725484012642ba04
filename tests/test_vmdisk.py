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
