"""`build-vm --target ami`: the AMI is the very disk the qcow2 target builds.

import (the default, `vm.ami.method: import`): build-vm's qemu target runs (or is reused when
nothing changed), its qcow2 becomes a raw disk, and every 512 KiB block of it that holds data
is written into a new EBS snapshot through the EBS direct APIs (StartSnapshot,
PutSnapshotBlock with each block's sha256, CompleteSnapshot with their linear aggregate: the
way AWS's own coldsnap does it), which RegisterImage turns into the AMI (IMDSv2 required, ENA,
legacy BIOS boot, /dev/xvda). Why not Packer's amazon-import or ImportSnapshot: both need an S3
bucket and the `vmimport` service role and let AWS convert the disk; here the snapshot's
blocks are the disk's bytes, checked by AWS block by block, so the AMI's packages are the
qcow2's by construction (one package manifest for both, named in the record).

stock (`vm.ami.method: stock`): ami_stock.py.

Credentials, endpoints and the rest of the AWS configuration come from the standard AWS chain
(environment, profile, AWS_ENDPOINT_URL); without credentials nothing is built.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from imagebuild import checksums, distnames, machines, progress, provenance, tools
from imagebuild.builders import vm
from imagebuild.cache import sha256_file
from imagebuild.errors import ImageBuildError
from imagebuild.inputs import Inputs
from imagebuild.lock.lockfile import Lock
from imagebuild.spec import Spec

BLOCK = 512 * 1024  # the EBS direct APIs' block size
ROOT_DEVICE = "/dev/xvda"
WORKERS = 8  # PutSnapshotBlock calls in flight (coldsnap's default is 64; 2 cores here)


class AwsCredentialsError(ImageBuildError):
    pass


class AwsError(ImageBuildError):
    pass


def session(spec: Spec, region: str | None = None) -> Any:
    """A boto3 session in `region` (default the spec's), credentials from the standard chain;
    refused early (nothing built) without any."""
    import boto3
    import botocore.exceptions

    assert spec.vm.ami is not None
    if os.environ.get("AWS_PROFILE") == "":  # blanked (as CI jobs do): no profile, not ""
        del os.environ["AWS_PROFILE"]
    try:
        s = boto3.Session(region_name=region or spec.vm.ami.region)
        creds = s.get_credentials()
    except botocore.exceptions.BotoCoreError as e:  # e.g. AWS_PROFILE names no profile
        raise AwsCredentialsError(f"build-vm --target ami: AWS configuration: {e}") from e
    if creds is None:
        raise AwsCredentialsError(
            "build-vm --target ami needs AWS credentials (nothing was built): set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE / ~/.aws/credentials "
            "(AWS_ENDPOINT_URL for a local AWS API), and re-run"
        )
    return s


def data_blocks(raw: Path) -> Iterator[tuple[int, bytes]]:
    """(index, bytes) of every BLOCK of the raw disk that holds data: holes are skipped with
    SEEK_DATA/SEEK_HOLE and all-zero blocks dropped (an EBS block never written reads as
    zeros, as a hole does)."""
    size = raw.stat().st_size
    with raw.open("rb") as f:
        fd, pos = f.fileno(), 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                return
            end = os.lseek(fd, start, os.SEEK_HOLE)
            for index in range(start // BLOCK, -(-end // BLOCK)):
                f.seek(index * BLOCK)
                data = f.read(BLOCK).ljust(BLOCK, b"\0")
                if data.count(0) != BLOCK:
                    yield index, data
            pos = -(-end // BLOCK) * BLOCK


def _b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def write_snapshot(
    client: Any, raw: Path, size_gib: int, tags: list[dict[str, str]], encrypted: bool
) -> tuple[str, int]:
    """A completed EBS snapshot holding exactly the raw disk's bytes; (snapshot id, blocks
    written). A failure deletes the unfinished snapshot: nothing half-written stays."""
    ebs, ec2 = client.client("ebs"), client.client("ec2")
    sid = ebs.start_snapshot(
        VolumeSize=size_gib,
        Tags=tags,
        Encrypted=encrypted,
        Timeout=60,
        ClientToken=str(uuid.uuid4()),
        Description=tags[0]["Value"],
    )["SnapshotId"]
    try:

        def put(block: tuple[int, bytes]) -> tuple[int, bytes]:
            index, data = block
            digest = hashlib.sha256(data).digest()
            ebs.put_snapshot_block(
                SnapshotId=sid,
                BlockIndex=index,
                BlockData=data,
                DataLength=BLOCK,
                Checksum=base64.b64encode(digest).decode(),
                ChecksumAlgorithm="SHA256",
            )
            return index, digest

        with ThreadPoolExecutor(WORKERS) as pool:
            written = sorted(pool.map(put, data_blocks(raw)))
        ebs.complete_snapshot(
            SnapshotId=sid,
            ChangedBlocksCount=len(written),
            Checksum=_b64_sha256(b"".join(d for _, d in written)),
            ChecksumAlgorithm="SHA256",
            ChecksumAggregationMethod="LINEAR",
        )
        ec2.get_waiter("snapshot_completed").wait(
            SnapshotIds=[sid], WaiterConfig={"Delay": 5, "MaxAttempts": 360}
        )
    except BaseException:
        with contextlib.suppress(Exception):  # best effort: never hide the error itself
            ec2.delete_snapshot(SnapshotId=sid)
        raise
    return sid, len(written)


def register(
    client: Any,
    spec: Spec,
    name: str,
    sid: str,
    tags: list[dict[str, str]],
    machine: machines.Machine,
) -> str:
    """RegisterImage of the snapshot as an HVM AMI of the disk's architecture and firmware
    (amd64: x86_64, legacy BIOS; arm64: arm64, UEFI) with IMDSv2 required and ENA; an AMI of
    this name is replaced only with vm.ami.force_deregister."""
    assert spec.vm.ami is not None
    ec2 = client.client("ec2")
    same = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])
    for image in same["Images"]:
        if not spec.vm.ami.force_deregister:
            raise AwsError(
                f"{spec.where('vm.ami')}: an AMI named {name} exists ({image['ImageId']}); "
                "set vm.ami.force_deregister: true to replace it"
            )
        progress.say(f"build-vm: deregistering {image['ImageId']} ({name})")
        ec2.deregister_image(ImageId=image["ImageId"])
    return ec2.register_image(
        Name=name,
        Description=f"imagebuild {spec.name} {spec.version}",
        Architecture=machine.aws[0],
        VirtualizationType="hvm",
        BootMode=machine.aws[1],
        RootDeviceName=ROOT_DEVICE,
        EnaSupport=True,
        SriovNetSupport="simple",
        ImdsSupport="v2.0",
        BlockDeviceMappings=[
            {
                "DeviceName": ROOT_DEVICE,
                "Ebs": {"SnapshotId": sid, "VolumeType": "gp3", "DeleteOnTermination": True},
            }
        ],
        TagSpecifications=[{"ResourceType": "image", "Tags": tags}],
    )["ImageId"]


def ami_tags(spec: Spec, lock: Lock, dist: Path) -> list[dict[str, str]]:
    """What an AMI says about itself: the spec, the lock and the container it matches."""
    record = distnames.path(dist, spec, distnames.CONTAINER_RECORD)
    try:
        image_id = "sha256:" + json.loads(record.read_text())["image_id"]
    except (OSError, ValueError, KeyError):
        image_id = "none (no container record in dist)"
    pairs = {
        "Name": f"{spec.name} {spec.version}",
        "imagebuild:spec": spec.name,
        "imagebuild:version": spec.version,
        "imagebuild:lock-sha256": lock.digest,
        "imagebuild:container-image": image_id,
    }
    return [{"Key": k, "Value": v} for k, v in pairs.items()]


def build(inputs: Inputs, dist: Path, on_error: str, region: str | None = None) -> vm.VmResult:
    """vm.ami.method import: the qemu target's qcow2 (built or reused) as the AMI."""
    spec, lock, cache = inputs.spec, inputs.lock, inputs.cache
    assert spec.vm.ami is not None  # targets.py refuses a spec without it
    client = session(spec, region)  # the region is checked (targets.Options)
    qemu = vm.build(inputs, dist, on_error)
    out = vm.outputs(dist.resolve(), spec)
    qcow2 = out["qcow2"]
    name = vm.packer_values(spec, cache.root)["aws_ami_name"]
    tags = ami_tags(spec, lock, dist.resolve())
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="imagebuild-ami-", dir=cache.root) as tmp:
        raw = Path(tmp) / "disk.raw"
        with progress.stage("build-vm: ami: raw disk", qcow2.name):
            tools.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow2, raw])
            disk_sha = sha256_file(raw)
        size_gib = -(-raw.stat().st_size // (1 << 30))
        with progress.stage("build-vm: ami: EBS snapshot", f"{size_gib} GiB, direct APIs") as st:
            sid, blocks = write_snapshot(client, raw, size_gib, tags, spec.vm.ami.encrypt_boot)
            st["note"] = f"{sid}, {blocks} blocks of {BLOCK // 1024} KiB"
    with progress.stage("build-vm: ami: register", name) as st:
        image_id = register(client, spec, name, sid, tags, machines.MACHINES[lock.arch])
        st["note"] = image_id
    body = {
        "image_id": image_id,
        "name": name,
        "region": client.region_name,
        "snapshot_id": sid,
        "disk_sha256": disk_sha,
        "blocks_written": blocks,
        "block_size": BLOCK,
        "qcow2": qcow2.name,
        "qcow2_sha256": sha256_file(qcow2),
        # one manifest for both: the AMI is the qcow2's disk
        "packages": out["packages"].name,
        "packages_sha256": sha256_file(out["packages"]),
        "tags": {t["Key"]: t["Value"] for t in tags},
        "imds_support": "v2.0",
        "boot_mode": "legacy-bios",
        "root_device": ROOT_DEVICE,
    }
    prov = _provenance(inputs, dist, body, client.region_name)
    record = write_record(spec, body, dist)  # last: its presence means the rest is complete
    seconds = qemu.seconds | {"ami": round(time.monotonic() - start, 1)}
    parity = qemu.parity | {
        "ami": image_id,
        "ami packages": f"the qcow2's ({out['packages'].name})",
    }
    return replace(
        qemu,
        target="ami",
        outputs=qemu.outputs | {"ami_provenance": prov, "ami_record": record},
        seconds=seconds,
        parity=parity,
    )


def _provenance(inputs: Inputs, dist: Path, body: dict[str, Any], region: str) -> Path:
    """dist/NAME-VERSION.ami.intoto.jsonl: the AMI and its snapshot as subjects (by ARN), each
    with the sha256 of the raw disk written into the snapshot; made from the qcow2."""
    arn, disk = f"arn:aws:ec2:{region}::", {"sha256": body["disk_sha256"]}
    subjects: list[dict[str, Any]] = [
        {"name": f"{kind} {rid}", "uri": f"{arn}{path}/{rid}", "digest": disk}
        for kind, path, rid in (
            ("ami", "image", body["image_id"]),
            ("snapshot", "snapshot", body["snapshot_id"]),
        )
    ]
    dest = distnames.path(dist.resolve(), inputs.spec, distnames.AMI_PROVENANCE)
    made_from = provenance.subject(body["qcow2"], body["qcow2_sha256"])
    provenance.write(dest, inputs, "ami", subjects, made_from)
    checksums.record(dist.resolve(), [dest])
    return dest


def write_record(spec: Spec, body: dict[str, Any], dist: Path) -> Path:
    """dist/NAME-VERSION.ami.json (either method's), written whole, listed in SHA256SUMS."""
    record = distnames.path(dist.resolve(), spec, distnames.AMI_RECORD)
    record.parent.mkdir(parents=True, exist_ok=True)
    checksums.write_records(dist.resolve(), {record: body})
    return record
