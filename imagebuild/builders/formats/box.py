"""What every Vagrant box shares (box format v2): metadata.json + a Vagrantfile + the provider's
files in a tar with fixed owners and times, and Vagrant's convention on a NoCloud seed disk.

Vagrant's convention (a `vagrant` user with Vagrant's published insecure key and passwordless
sudo, the key replaced by a fresh one on the first `vagrant up`) lives on the seed disk, which
cloud-init reads at first boot: the system disk is the same bytes as the qcow2, and neither the
qcow2 nor the OVA carries a known key. Not a format: the box formats' modules use it."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

from imagebuild import distnames, seed, tarnorm, tools
from imagebuild.spec import Spec

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
{provider}end
"""


def vagrantfile(spec: Spec, provider: str) -> bytes:
    """The box's Vagrantfile: the shared lines, then `provider`'s block (its {memory}/{cpus})."""
    block = provider.format(memory=spec.vm.memory_mb, cpus=spec.vm.cpus)
    return VAGRANTFILE.format(name=spec.name, provider=block).encode()


def seed_disk(dest: Path, spec: Spec, sde: int, fmt: str, *options: str) -> Path:
    """The NoCloud seed carrying Vagrant's convention, as a `fmt` disk at `dest`."""
    raw = seed.nocloud_vfat(
        dest.with_name(dest.name + ".raw"),
        instance_id=f"{distnames.stem(spec)}-vagrant",
        hostname=spec.name,
        cloud_config={"users": [seed.user("vagrant", INSECURE_KEY)]},
        sde=sde,
    )
    opts = ["-o", ",".join(options)] if options else []
    tools.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", fmt, *opts, str(raw), str(dest)])
    raw.unlink()
    return dest


def write(
    dest: Path, meta: dict[str, Any], vagrantfile: bytes, files: list[tuple[str, Path]], sde: int
) -> None:
    """The box: metadata.json, the Vagrantfile, then `files` (name in the box, path here)."""
    with tarfile.open(dest, "w", format=tarfile.GNU_FORMAT) as tar:
        tarnorm.add_bytes(tar, "metadata.json", json.dumps(meta).encode(), sde)
        tarnorm.add_bytes(tar, "Vagrantfile", vagrantfile, sde)
        for name, path in files:
            tarnorm.add_file(tar, name, path, sde)
