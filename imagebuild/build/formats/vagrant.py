"""Vagrant box for the libvirt provider: metadata.json + Vagrantfile + box.img (the qcow2), in a
tar with fixed owners and times (vagrant-libvirt's box format, v1)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from imagebuild.spec import Spec

SUFFIX = ".libvirt.box"
COMPRESSED_INPUT = True  # box.img is the shipped qcow2

VAGRANTFILE = """\
# Defaults of the imagebuild box; a project's own Vagrantfile overrides them.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.driver = "qemu"
    libvirt.memory = {memory}
    libvirt.cpus = {cpus}
    libvirt.disk_bus = "virtio"
  end
end
"""


def _add(tar: tarfile.TarFile, name: str, data: bytes, sde: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), sde, 0o644
    tar.addfile(info, io.BytesIO(data))


def make(disk: Path, dest: Path, spec: Spec, sde: int) -> None:
    meta = {"provider": "libvirt", "format": "qcow2", "virtual_size": spec.vm.disk_gb}
    vf = VAGRANTFILE.format(memory=spec.vm.memory_mb, cpus=spec.vm.cpus)
    with tarfile.open(dest, "w", format=tarfile.GNU_FORMAT) as tar:
        _add(tar, "metadata.json", json.dumps(meta).encode(), sde)
        _add(tar, "Vagrantfile", vf.encode(), sde)
        info = tar.gettarinfo(disk, "box.img")
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime, info.mode = sde, 0o644
        with disk.open("rb") as f:
            tar.addfile(info, f)
