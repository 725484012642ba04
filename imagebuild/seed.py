"""A NoCloud seed: the small `cidata` ISO (user-data + meta-data) that libvirt and OpenStack
users hand a qcow2 so cloud-init logs them in (cloud-init's NoCloud datasource). Made with
cloud-image-utils' `cloud-localds`, the tool those users run themselves, so what the tests boot
is what users boot."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

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


def nocloud(dest: Path, *, instance_id: str, hostname: str, cloud_config: dict[str, Any]) -> Path:
    """Write the seed ISO to `dest` (atomically: a half-written seed would boot as no seed).
    A new `instance_id` is a new instance to cloud-init: it runs its first-boot modules again."""
    tool = shutil.which("cloud-localds")
    if tool is None:
        raise SeedError("cloud-localds not found: apt-get install cloud-image-utils")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".seed-") as tmp:
        user_data, meta_data = Path(tmp, "user-data"), Path(tmp, "meta-data")
        user_data.write_text("#cloud-config\n" + yaml.safe_dump(cloud_config, sort_keys=False))
        meta_data.write_text(
            yaml.safe_dump({"instance-id": instance_id, "local-hostname": hostname})
        )
        iso = Path(tmp, "seed.iso")
        r = subprocess.run(
            [tool, str(iso), str(user_data), str(meta_data)], capture_output=True, text=True
        )
        if r.returncode != 0:
            raise SeedError(f"cloud-localds failed (exit {r.returncode}): {r.stderr.strip()}")
        os.replace(iso, dest)
    return dest
