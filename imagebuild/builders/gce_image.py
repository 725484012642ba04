"""`build-vm --target gce`: the Compute Engine image is the very disk the qcow2 target builds.

The qemu target runs (or is reused when nothing changed); its `.gce.tar.gz` (format `gce`:
`disk.raw` in a sparse tar, what Compute Engine imports) is uploaded to gs://BUCKET/ under its
own name with Google's client (google-cloud-storage: a resumable upload whose CRC32C the client
checks; the stored object's CRC32C, MD5 and size are checked again here). An object of that
name already there is taken only if those are the file's, never overwritten (a precondition on
generation 0). Then the images.insert request that makes the image from it is written beside it,
as the REST call Google's client sends (dist/NAME-VERSION.gce-image.json), and not sent: no
Compute Engine emulator exists to test it against (README: what has never run). Endpoint and
credentials come from Google's standard chain (STORAGE_EMULATOR_HOST, Application Default
Credentials); without them nothing is built.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from imagebuild import checksums, distnames, progress
from imagebuild.builders import vm
from imagebuild.errors import ImageBuildError
from imagebuild.inputs import Inputs
from imagebuild.lock.lockfile import Lock
from imagebuild.spec import Spec
from imagebuild.spec_clouds import Gce

COMPUTE = "https://compute.googleapis.com/compute/v1"
STORAGE = "https://storage.googleapis.com"  # rawDisk.source's form, also for an emulator's
IMAGE_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")  # Compute Engine's resource names
CHUNK = 16 << 20  # resumable upload chunk (a multiple of 256 KiB)


class GcpError(ImageBuildError):
    pass


def image_name(spec: Spec) -> str:
    """NAME-VERSION as a Compute Engine image name (dots and pluses become dashes)."""
    name = re.sub(r"[^a-z0-9-]", "-", distnames.stem(spec).lower())
    if not IMAGE_NAME.fullmatch(name):
        raise spec.error(
            "name", f"{name!r} (with the version) is not a Compute Engine image name: a-z first"
        )
    return name


def digests(path: Path) -> tuple[str, str, str]:
    """The file's CRC32C and MD5 as Cloud Storage reports them (base64 of the raw values), and
    its sha256 (hex, for the record): one read for the three."""
    import google_crc32c

    crc, md5, sha = google_crc32c.Checksum(), hashlib.md5(), hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            crc.update(chunk)
            md5.update(chunk)
            sha.update(chunk)
    b64 = [base64.b64encode(h.digest()).decode() for h in (crc, md5)]
    return b64[0], b64[1], sha.hexdigest()


def bucket(settings: Gce) -> Any:
    """The bucket, reached with the standard chain's credentials; refused early (nothing built)
    without credentials or without the bucket."""
    from google.api_core import exceptions
    from google.auth.exceptions import DefaultCredentialsError, GoogleAuthError
    from google.cloud import storage

    try:
        client = storage.Client(project=settings.project)
        found = client.lookup_bucket(settings.bucket)
    except DefaultCredentialsError as e:
        raise GcpError(f"--target gce: no Google Cloud credentials ({e})") from None
    # OSError: requests' connection errors (an unreachable endpoint)
    except (exceptions.GoogleAPIError, GoogleAuthError, OSError) as e:
        raise GcpError(f"--target gce: gs://{settings.bucket}: {e}") from None
    if found is None:
        raise GcpError(f"--target gce: bucket gs://{settings.bucket} not found (vm.gce.bucket)")
    return found


def upload(target: Any, tarball: Path) -> dict[str, Any]:
    """`tarball` as the object of its own name; an existing one only if its CRC32C, MD5 and
    size are the file's (CRC32C alone can be forged: it is linear; a composite object has no
    MD5 and is refused). Looked up first; the upload's precondition, generation 0, also refuses
    an object made since. Whoever may write to the bucket can still replace the object before
    the image is made from it: the bucket is trusted as far as that."""
    from google.api_core import exceptions
    from google.auth.exceptions import GoogleAuthError
    from google.cloud.storage.exceptions import DataCorruption

    crc, md5, sha256 = digests(tarball)
    size = tarball.stat().st_size
    where = f"gs://{target.name}/{tarball.name}"
    try:
        blob = target.get_blob(tarball.name)
        how = "already there"
        if blob is None:
            blob = target.blob(tarball.name, chunk_size=CHUNK)
            blob.upload_from_filename(str(tarball), if_generation_match=0, checksum="crc32c")
            blob.reload()
            how = "uploaded"
    # DataCorruption: the client's CRC32C of what arrived differs (it deletes the object)
    except (exceptions.GoogleAPIError, GoogleAuthError, DataCorruption, OSError) as e:
        raise GcpError(f"{where}: upload failed ({e})") from None
    if (blob.crc32c, blob.md5_hash, blob.size) != (crc, md5, size):
        raise GcpError(
            f"{where} exists and is not this build's {tarball.name} (crc32c {blob.crc32c}, "
            f"md5 {blob.md5_hash}, {blob.size} bytes; this one {crc}, {md5}, {size}): delete "
            "it, or build another version"
        )
    return {
        "object": blob.name,
        "generation": blob.generation,
        "crc32c": crc,
        "md5": md5,
        "size": size,
        "how": how,
        "sha256": sha256,
    }


def image_request(spec: Spec, lock: Lock, settings: Gce, object_name: str) -> dict[str, Any]:
    """images.insert as Google's client sends it: the URL and the Image resource."""
    body: dict[str, Any] = {
        "name": image_name(spec),
        "description": f"{spec.name} {spec.version}, built by imagebuild, lock sha256 "
        + lock.digest,
        "rawDisk": {"source": f"{STORAGE}/{settings.bucket}/{object_name}", "containerType": "TAR"},
        "architecture": "X86_64",
        # legacy BIOS boot (no UEFI_COMPATIBLE); the cloud kernel has virtio-scsi's multiqueue
        "guestOsFeatures": [{"type": "VIRTIO_SCSI_MULTIQUEUE"}],
        "labels": {"imagebuild-spec": spec.name, "imagebuild-lock": lock.digest[:63]},
    }
    if settings.family:
        body["family"] = settings.family
    url = f"{COMPUTE}/projects/{settings.project}/global/images"
    return {"method": "POST", "url": url, "body": body}


def build(inputs: Inputs, dist: Path, on_error: str) -> vm.VmResult:
    """The qemu target's `.gce.tar.gz` (built or reused) in Cloud Storage, and the request."""
    spec, lock = inputs.spec, inputs.lock
    settings = spec.vm.gce
    assert settings is not None and "gce" in spec.vm.formats  # targets.spec_problems
    name = image_name(spec)
    target = bucket(settings)
    qemu = vm.build(inputs, dist, on_error)
    tarball = vm.outputs(dist.resolve(), spec)["gce"]
    start = time.monotonic()
    request = distnames.path(dist.resolve(), spec, distnames.GCE_REQUEST)
    record = distnames.path(dist.resolve(), spec, distnames.GCE_RECORD)
    # a last run's record and request describe its upload, not this one: gone until it is done
    for stale in (record, request):
        stale.unlink(missing_ok=True)
    checksums.record(dist.resolve(), [])  # drops their lines
    with progress.stage("build-vm: gce: upload", f"gs://{settings.bucket}/{tarball.name}") as st:
        stored = upload(target, tarball)
        st["note"] = f"{stored['how']}, generation {stored['generation']}"
    body = {
        "image": name,
        "project": settings.project,
        "bucket": settings.bucket,
        **{k: v for k, v in stored.items() if k not in ("how", "sha256")},
        "tarball": tarball.name,
        "tarball_sha256": stored["sha256"],
        "request": request.name,
        "request_sent": False,
    }
    requested = image_request(spec, lock, settings, stored["object"])
    # the record last: its presence means the rest is complete
    checksums.write_records(dist.resolve(), {request: requested, record: body})
    return replace(
        qemu,
        target="gce",
        outputs=qemu.outputs | {"gce_request": request, "gce_record": record},
        seconds=qemu.seconds | {"gce": round(time.monotonic() - start, 1)},
        parity=qemu.parity | {"gce image": f"{name}: the qcow2's disk ({tarball.name})"},
    )
