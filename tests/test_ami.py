"""--target ami against a local AWS API (moto's server on 127.0.0.1: EC2, EBS direct APIs):
the AMI is registered from a snapshot whose blocks are the qcow2's disk, byte for byte. What
moto cannot show (an instance booting from the AMI) is listed in the README's AMI section."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuild import machines, provenance
from imagebuild import spec as specmod
from imagebuild.builders import ami, ami_stock
from tests.conftest import build_vm, stamps

pytestmark = [pytest.mark.network, pytest.mark.engine, pytest.mark.vm]


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """moto_server on a free loopback port; the standard AWS settings that point at it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = tmp_path_factory.mktemp("moto")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=work,
        env={"PATH": "/usr/bin:/bin", "MOTO_RECORDER_FILEPATH": str(work / "recording")},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=2)
            break
        except OSError:
            time.sleep(0.3)
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": url,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(work / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(work / "none"),
    }
    yield env | {"recording": str(work / "recording")}
    server.terminate()
    server.wait(timeout=30)


def _client(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch, region: str):
    import boto3

    for k, v in aws.items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    return boto3.Session(region_name=region)


def test_the_ami_is_the_qcow2s_disk(vm_built, cache_dir: Path, aws, monkeypatch) -> None:
    spec, dist, _ = vm_built
    env = {k: v for k, v in aws.items() if k.startswith("AWS_")}
    qcow2 = dist / f"{spec.name}-{spec.version}.qcow2"
    before = stamps(qcow2.parent)[str(qcow2)]
    r = build_vm(spec.path, cache_dir, dist, "--target", "ami", env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    assert stamps(qcow2.parent)[str(qcow2)] == before  # the qcow2 of this build, not a second one
    record = json.loads((dist / f"{spec.name}-{spec.version}.ami.json").read_text())
    assert record["image_id"] in r.stdout and record["image_id"].startswith("ami-")
    vm_record = json.loads((dist / f"{spec.name}-{spec.version}.vm.json").read_text())
    assert record["packages"] == Path(vm_record["outputs"]["packages"]).name

    session = _client(aws, monkeypatch, spec.vm.ami.region)
    ec2, ebs = session.client("ec2"), session.client("ebs")
    image = ec2.describe_images(ImageIds=[record["image_id"]])["Images"][0]
    assert image["Name"] == record["name"] and image["Name"].startswith(
        f"{spec.name}-{spec.version}-"
    )
    # moto's RegisterImage keeps the name but not the block device mapping it was sent (the
    # request itself is checked in the next test); the snapshot is read back by its own ID.
    snap = record["snapshot_id"]
    (found,) = ec2.describe_snapshots(SnapshotIds=[snap])["Snapshots"]
    assert found["State"] == "completed"
    assert {t["Key"]: t["Value"] for t in found["Tags"]}["imagebuild:spec"] == spec.name

    # The snapshot read back block by block is the qcow2's disk (holes read as zeros).
    raw = dist.parent / "ami-check.raw"
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(dist / record["qcow2"]), str(raw)], check=True
    )
    size = raw.stat().st_size
    raw.unlink()
    blocks, token = {}, None
    while True:
        page = ebs.list_snapshot_blocks(SnapshotId=snap, **({"NextToken": token} if token else {}))
        blocks.update({b["BlockIndex"]: b["BlockToken"] for b in page["Blocks"]})
        token = page.get("NextToken")
        if not token:
            break
    assert len(blocks) == record["blocks_written"] > 0
    h, zero = hashlib.sha256(), bytes(ami.BLOCK)
    for index in range(-(-size // ami.BLOCK)):
        if index in blocks:
            got = ebs.get_snapshot_block(
                SnapshotId=snap, BlockIndex=index, BlockToken=blocks[index]
            )
            h.update(got["BlockData"].read())
        else:
            h.update(zero)
    assert h.hexdigest() == record["disk_sha256"]
    # its provenance: the AMI and the snapshot by ARN with that disk's sha256, from the qcow2
    stmt = provenance.read_statement(dist / f"{spec.name}-{spec.version}.ami.intoto.jsonl")
    arn = f"arn:aws:ec2:{spec.vm.ami.region}::"
    assert stmt["subject"] == [
        {
            "name": f"ami {record['image_id']}",
            "uri": f"{arn}image/{record['image_id']}",
            "digest": {"sha256": record["disk_sha256"]},
        },
        {
            "name": f"snapshot {snap}",
            "uri": f"{arn}snapshot/{snap}",
            "digest": {"sha256": record["disk_sha256"]},
        },
    ]
    build_def = stmt["predicate"]["buildDefinition"]
    assert build_def["buildType"] == "urn:imagebuild:buildtype:ami:v1"
    assert build_def["resolvedDependencies"][0] == {
        "name": record["qcow2"],
        "digest": {"sha256": record["qcow2_sha256"]},
    }
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=dist).returncode == 0


@contextlib.contextmanager
def recorded(aws: dict[str, str]) -> Iterator[list[dict[str, list[str]]]]:
    """The requests moto received inside the block, as parsed query bodies (filled on exit)."""
    base = aws["AWS_ENDPOINT_URL"] + "/moto-api/recorder"
    urllib.request.urlopen(urllib.request.Request(f"{base}/reset-recording", method="POST"))
    urllib.request.urlopen(urllib.request.Request(f"{base}/start-recording", method="POST"))
    bodies: list[dict[str, list[str]]] = []
    yield bodies
    urllib.request.urlopen(urllib.request.Request(f"{base}/stop-recording", method="POST"))
    lines = urllib.request.urlopen(f"{base}/download-recording").read().decode().splitlines()
    calls = [json.loads(ln) for ln in lines if ln.strip()]
    raw = [
        base64.b64decode(c["body"]).decode() if c.get("body_encoded") else c.get("body") or ""
        for c in calls
    ]
    bodies += [urllib.parse.parse_qs(b) for b in raw]


def test_stock_ami_gets_imdsv2_required_and_a_record(tmp_path: Path, aws, monkeypatch) -> None:
    """The stock path's AMI (Packer 1.6.6 cannot ask for IMDSv2) is changed after Packer: the
    AMI ID read from Packer's manifest, ModifyImageAttribute as the API receives it. Then its
    record (it returned no output before): the AMI as the API describes it, in SHA256SUMS."""
    from tests.conftest import EXAMPLE

    session = _client(aws, monkeypatch, "us-east-2")
    ec2 = session.client("ec2")
    image_id = ec2.register_image(Name="stock", RootDeviceName="/dev/xvda")["ImageId"]
    manifest = tmp_path / "packer-manifest.json"
    manifest.write_text(json.dumps({"builds": [{"artifact_id": f"us-east-2:{image_id}"}]}))
    with recorded(aws) as bodies:
        ami_stock.require_imdsv2(session, ami_stock.packer_ami_id(manifest))
    (call,) = [b for b in bodies if b.get("Action") == ["ModifyImageAttribute"]]
    assert call["ImageId"] == [image_id] and call["ImdsSupport.Value"] == ["v2.0"]
    spec = specmod.load(EXAMPLE / "imagebuild.yaml")
    dist = tmp_path / "dist"
    record = ami_stock.write_record(session, spec, image_id, "stock", manifest, dist)
    body = json.loads(record.read_text())
    assert (body["method"], body["image_id"], body["region"]) == ("stock", image_id, "us-east-2")
    assert body["source_ami"] == spec.vm.ami.source_ami and body["name"] == "stock"
    assert body["packer_manifest"]["builds"][0]["artifact_id"].endswith(image_id)
    digest = hashlib.sha256(record.read_bytes()).hexdigest()
    assert f"{digest}  {record.name}" in (dist / "SHA256SUMS").read_text()
    manifest.write_text(json.dumps({"builds": [{"artifact_id": "eu-west-1:ami-x; rm -rf /"}]}))
    with pytest.raises(ami.ImageBuildError, match="is not an AMI ID"):
        ami_stock.packer_ami_id(manifest)


def test_register_asks_for_imdsv2_ena_and_tags(tmp_path: Path, aws, monkeypatch) -> None:
    """RegisterImage as the API receives it (moto's request recorder): IMDSv2 required, ENA,
    legacy BIOS, x86_64, the root device, the tags; an AMI of the same name is refused unless
    force_deregister."""
    from tests.conftest import EXAMPLE

    spec = specmod.load(EXAMPLE / "imagebuild.yaml")
    session = _client(aws, monkeypatch, spec.vm.ami.region)
    ec2 = session.client("ec2")
    vol = ec2.create_volume(Size=1, AvailabilityZone=f"{spec.vm.ami.region}a")["VolumeId"]
    sid = ec2.create_snapshot(VolumeId=vol)["SnapshotId"]
    tags = [{"Key": "imagebuild:spec", "Value": spec.name}]
    with recorded(aws) as bodies:
        image_id = ami.register(session, spec, "t-1", sid, tags, machines.HOST)
    reg = next(b for b in bodies if b.get("Action") == ["RegisterImage"])
    assert {
        k: reg[k][0]
        for k in (
            "ImdsSupport",
            "EnaSupport",
            "BootMode",
            "Architecture",
            "RootDeviceName",
            "VirtualizationType",
            "Name",
        )
    } == {
        "ImdsSupport": "v2.0",
        "EnaSupport": "true",
        "BootMode": "legacy-bios",
        "Architecture": "x86_64",
        "RootDeviceName": "/dev/xvda",
        "VirtualizationType": "hvm",
        "Name": "t-1",
    }
    assert reg["BlockDeviceMapping.1.Ebs.SnapshotId"] == [sid]
    assert reg["TagSpecification.1.Tag.1.Key"] == ["imagebuild:spec"]
    assert image_id.startswith("ami-")
    with recorded(aws) as bodies:  # an arm64 disk: its architecture and UEFI
        ami.register(session, spec, "t-arm64", sid, tags, machines.MACHINES["arm64"])
    reg = next(b for b in bodies if b.get("Action") == ["RegisterImage"])
    assert (reg["Architecture"], reg["BootMode"]) == (["arm64"], ["uefi"])

    with pytest.raises(ami.AwsError, match="force_deregister"):
        ami.register(session, spec, "t-1", sid, tags, machines.HOST)
    forced = dataclasses.replace(
        spec,
        vm=dataclasses.replace(
            spec.vm, ami=dataclasses.replace(spec.vm.ami, force_deregister=True)
        ),
    )
    again = ami.register(session, forced, "t-1", sid, tags, machines.HOST)
    assert again != image_id
    assert [
        i["ImageId"]
        for i in ec2.describe_images(Filters=[{"Name": "name", "Values": ["t-1"]}])["Images"]
    ] == [again]


def test_a_refused_imdsv2_change_names_the_ami(aws, monkeypatch) -> None:
    """An AMI the API will not change (here: one that does not exist) is an AwsError naming it
    and what to do, not a botocore traceback."""
    session = _client(aws, monkeypatch, "eu-west-1")
    with pytest.raises(ami.AwsError, match="ami-0123456789abcdef0.*ModifyImageAttribute"):
        ami_stock.require_imdsv2(session, "ami-0123456789abcdef0")
