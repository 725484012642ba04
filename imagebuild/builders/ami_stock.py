"""`build-vm --target ami` with `vm.ami.method: stock`: Packer's amazon-ebs provisions a stock
Debian AMI (vm.ami.source_ami) with the same vm.yml, through the same Packer runner as the qemu
target (validated offline first, `-on-error` honoured, the log kept in the cache's logs).
The stock AMI's own packages (kernel, cloud-init, ...) stay in versions the lock never saw, and
a stock package newer than the locked one makes the install fail: kept as an explicit option.
After Packer: the AMI is made to require IMDSv2 (Packer 1.6.6 cannot ask for it) and a record
of it is written to dist/ and SHA256SUMS, as the import method's is.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from imagebuild import distnames, packer, progress
from imagebuild.builders import ami, vm
from imagebuild.builders.ami import AwsError, session
from imagebuild.errors import ImageBuildError
from imagebuild.inputs import Inputs
from imagebuild.resolved import APP_ARCHIVE
from imagebuild.spec import Spec


def build(inputs: Inputs, dist: Path, on_error: str, region: str | None = None) -> vm.VmResult:
    """Packer's amazon-ebs from vm.ami.source_ami in `region` (default vm.ami.region); built
    only with AWS credentials (asked for before Packer runs)."""
    spec = inputs.spec
    ami = spec.vm.ami
    assert ami is not None
    client = session(spec, region)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="imagebuild-ami-", dir=inputs.cache.root) as tmp:
        work = Path(tmp)
        vm.make_build_key(work)
        tree = work / "sources"
        app_archive = stock_sources(inputs, tree)
        values = vm.packer_values(
            spec,
            work,
            sources_dir=str(tree),
            ansible_user=ami.ssh_username,
            ansible_become=True,
            ansible_vars_file=str(
                vm.ansible_vars_file(
                    inputs.resolved, "", work / "inventory.json", app_archive, trim=False
                )
            ),
            aws_region=client.region_name,
            aws_ssh_cidrs=list(ami.ssh_cidrs) or [f"{caller_public_ip()}/32"],
        )
        log = packer.log_file(inputs.cache.root, spec.name)
        what = f"amazon-ebs.vm in {client.region_name} from {ami.source_ami}"
        packer.build(values, work, "amazon-ebs.vm", on_error, log, what)
        manifest = Path(values["manifest_file"])
        with progress.stage("build-vm: ami: IMDSv2 required"):
            image_id = require_imdsv2(client, packer_ami_id(manifest))
        record = write_record(client, spec, image_id, values["aws_ami_name"], manifest, dist)
    return vm.VmResult(
        "ami",
        "",
        "",
        None,
        {"ami_record": record},
        {"ami": round(time.monotonic() - start, 1)},
        {"ami": image_id},
    )


def write_record(
    client: Any, spec: Spec, image_id: str, name: str, manifest: Path, dist: Path
) -> Path:
    """dist/NAME-VERSION.ami.json: the AMI as the API describes it after Packer (its
    snapshots, IMDSv2, where it came from) and Packer's own manifest; listed in SHA256SUMS."""
    assert spec.vm.ami is not None
    images = client.client("ec2").describe_images(ImageIds=[image_id])["Images"]
    image = images[0] if images else {}
    body = {
        "method": "stock",
        "image_id": image_id,
        "name": image.get("Name", name),
        "region": client.region_name,
        "source_ami": spec.vm.ami.source_ami,
        "instance_type": spec.vm.ami.instance_type,
        "root_device": image.get("RootDeviceName"),
        "snapshot_ids": sorted(
            m["Ebs"]["SnapshotId"]
            for m in image.get("BlockDeviceMappings", [])
            if m.get("Ebs", {}).get("SnapshotId")
        ),
        "imds_support": image.get("ImdsSupport"),
        "packer_manifest": json.loads(manifest.read_text()),
    }
    # an import build's provenance speaks of another AMI: gone (and its SHA256SUMS line with it)
    distnames.path(dist.resolve(), spec, distnames.AMI_PROVENANCE).unlink(missing_ok=True)
    return ami.write_record(spec, body, dist)


def packer_ami_id(manifest: Path) -> str:
    """The AMI Packer's manifest post-processor names (`artifact_id` is `REGION:AMI-ID`)."""
    try:
        artifact = json.loads(manifest.read_text())["builds"][-1]["artifact_id"]
        image_id = str(artifact).rsplit(":", 1)[-1]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise ImageBuildError(f"{manifest}: no AMI in Packer's manifest ({e})") from None
    if not re.fullmatch(r"ami-[0-9a-f]{8,17}", image_id):
        raise ImageBuildError(f"{manifest}: {image_id!r} is not an AMI ID")
    return image_id


def require_imdsv2(client: Any, image_id: str) -> str:
    """A stock AMI gets what the import path registers with: instances launched from it answer
    metadata requests only with IMDSv2 tokens. Debian's Packer 1.6.6 knows neither
    `imds_support` nor `metadata_options`, so the AMI Packer registered is changed after the
    fact (a one-way setting), the same call for every Packer version."""
    import botocore.exceptions

    try:
        client.client("ec2").modify_image_attribute(ImageId=image_id, ImdsSupport={"Value": "v2.0"})
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
        raise AwsError(
            f"build-vm --target ami: Packer registered {image_id}, but requiring IMDSv2 on it "
            f"failed ({e}); the AMI lacks it: deregister it, or give the role "
            "ec2:ModifyImageAttribute and build again"
        ) from None
    return image_id


def caller_public_ip(url: str = "https://checkip.amazonaws.com") -> str:
    """This machine's address as AWS sees it (the service Packer's
    temporary_security_group_source_public_ip asks), so the builder's SSH port is open to it
    alone; checked to be an address before it reaches a security group."""
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            text = r.read(64).decode().strip()
        return str(ipaddress.ip_address(text))
    except (OSError, ValueError) as e:
        raise ImageBuildError(
            f"build-vm --target ami: cannot learn this machine's public IP from {url} ({e}); "
            "set vm.ami.ssh_cidrs to the networks that may reach the builder's SSH port"
        ) from e


def stock_sources(inputs: Inputs, tree: Path) -> str:
    """The folder Packer uploads to a stock AMI's SOURCES_DIR: the apt repo and wheelhouse
    (hard links: the cache's bytes, no copy) and the app archive. A stock AMI, unlike the qemu
    base disk, does not hold the app yet, so the app role must unpack it there. Returns the
    archive's path on the instance ("" when the spec has no app)."""
    shutil.copytree(inputs.fetched.repo_vm, tree / "repo", copy_function=os.link)
    shutil.copytree(inputs.fetched.wheelhouse, tree / "wheels", copy_function=os.link)
    return APP_ARCHIVE if inputs.resolved.write_app_archive(tree / "app.tar") else ""
