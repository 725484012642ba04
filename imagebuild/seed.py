"""A NoCloud seed: the small `cidata` ISO (user-data + meta-data) that libvirt and OpenStack
users hand a qcow2 so cloud-init logs them in (cloud-init's NoCloud datasource). Made with
cloud-image-utils' `cloud-localds`, the tool those users run themselves, so what the tests boot
is what users boot. A seed that ships inside an artifact (the Vagrant box's) is made with
dosfstools + mtools instead, with fixed dates and volume id: the same inputs give the same bytes,
which genisoimage (cloud-localds's ISO) does not."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from imagebuild import tools
from imagebuild.errors import ImageBuildError


class SeedError(ImageBuildError):
    pass


def user(name: str, public_key: str) -> dict[str, Any]:
    """A cloud-config user as clouds make them: the key only, passwordless sudo, bash."""
    return {
        "name": name,
        "ssh_authorized_keys": [public_key.strip()],
        "sudo": "ALL=(ALL) NOPASSWD:ALL",
        "shell": "/bin/bash",
        "lock_passwd": True,
    }


def _documents(
    tmp: str, instance_id: str, hostname: str, cloud_config: dict[str, Any]
) -> list[Path]:
    user_data, meta_data = Path(tmp, "user-data"), Path(tmp, "meta-data")
    user_data.write_text("#cloud-config\n" + yaml.safe_dump(cloud_config, sort_keys=False))
    meta_data.write_text(yaml.safe_dump({"instance-id": instance_id, "local-hostname": hostname}))
    return [user_data, meta_data]


def nocloud(dest: Path, *, instance_id: str, hostname: str, cloud_config: dict[str, Any]) -> Path:
    """Write the seed ISO to `dest` (atomically: a half-written seed would boot as no seed).
    A new `instance_id` is a new instance to cloud-init: it runs its first-boot modules again."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".seed-") as tmp:
        iso = Path(tmp, "seed.iso")
        docs = _documents(tmp, instance_id, hostname, cloud_config)
        tools.run(["cloud-localds", str(iso), *map(str, docs)])
        os.replace(iso, dest)
    return dest


def nocloud_vfat(
    dest: Path, *, instance_id: str, hostname: str, cloud_config: dict[str, Any], sde: int
) -> Path:
    """The same seed as a FAT filesystem labelled CIDATA (NoCloud reads both), reproducible:
    the files dated `sde`, the label entry and volume id constants (`mkfs.fat
    --invariant`). Written atomically to `dest` (raw)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(sde), "TZ": "UTC"}
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".seed-") as tmp:
        img = Path(tmp, "seed.img")
        tools.run(["mkfs.fat", "-C", "-n", "CIDATA", "--invariant", str(img), "1024"], env=env)
        for doc in _documents(tmp, instance_id, hostname, cloud_config):
            os.utime(doc, (sde, sde))
            tools.run(["mcopy", "-m", "-i", str(img), str(doc), f"::{doc.name}"], env=env)
        os.replace(img, dest)
    return dest
