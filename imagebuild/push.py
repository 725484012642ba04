"""`invoke push`: the built image to a registry, by digest. What is pushed is the image ID that
`build-container` recorded in dist/ (not whatever REPOSITORY:VERSION points to now: a tag is
moved by any `docker tag` or `docker build`); the tag the engine pushes is only a vehicle, put
on that ID; what is printed and recorded is `REGISTRY/REPOSITORY@sha256:...`, which names
exactly the bytes `build-container` made (same layers, same config)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import docker.errors
import requests

from imagebuild import attach, checksums, distnames, progress, provenance
from imagebuild.cache import atomic_file
from imagebuild.engine import describe, engine
from imagebuild.errors import ImageBuildError
from imagebuild.spec import Spec


class PushError(ImageBuildError):
    pass


@dataclass(frozen=True)
class PushResult:
    reference: str  # REGISTRY/REPO@sha256:...
    image_id: str
    attached: list[str]  # the SBOM's and attestations' tags (imagebuild.attach)


def remote_repository(spec: Spec, registry: str) -> str:
    # `local/` only means "this machine"; it is not part of the name in a registry.
    return f"{registry}/{spec.repository.removeprefix('local/')}"


def recorded_id(spec: Spec, dist: Path) -> str:
    """`sha256:<hex>` of the image build-container recorded in `dist`, its record checked
    against dist/SHA256SUMS (as verify checks the artifacts it reads)."""
    record = distnames.path(dist, spec, distnames.CONTAINER_RECORD)
    if not record.is_file():
        raise PushError(
            f"{record}: no such file; push sends the image `invoke build-container "
            f"--dist {dist}` built and recorded there: build it first"
        )
    if problems := checksums.check(dist, [record]):
        raise PushError(f"{record}: {problems[0]}; refusing to push what it names")
    try:
        image_id = json.loads(record.read_text()).get("image_id")
    except (ValueError, AttributeError):
        image_id = None
    if not isinstance(image_id, str) or not re.fullmatch(r"[0-9a-f]{64}", image_id):
        raise PushError(f"{record}: no image_id of 64 hex digits; run `invoke build-container`")
    return f"sha256:{image_id}"


def _attachments(spec: Spec, dist: Path) -> dict[str, list[tuple[Path, str]]]:
    """What goes beside the image: its SBOM, its provenance, the scan's statement and verify's
    equivalence statement (those of them in `dist`, each checked against dist/SHA256SUMS
    first, as the record is)."""
    sbom = distnames.path(dist, spec, distnames.CONTAINER_SBOM)
    envelopes = [
        distnames.path(dist, spec, distnames.CONTAINER_PROVENANCE),
        distnames.path(dist, spec, distnames.SCAN_ATTESTATION),
        dist / "verify" / "equivalence.intoto.jsonl",
    ]
    listed = [f for f in (sbom, *envelopes[:2]) if f.is_file()]
    if problems := checksums.check(dist, listed):
        raise PushError(f"{problems[0]}; refusing to push it")
    scanned = envelopes[1]
    if scanned.is_file() and not _same_subjects(scanned, envelopes[0]):
        progress.say(f"push: {scanned.name} is about another build than this image: not attached")
        envelopes.remove(scanned)
    return {
        "sbom": [(sbom, attach.SBOM_TYPE)] if sbom.is_file() else [],
        "att": [(f, attach.DSSE_TYPE) for f in envelopes if f.is_file()],
    }


def _same_subjects(statement: Path, built: Path) -> bool:
    """Does `statement` speak of every subject of the image's provenance `built`?"""
    if not built.is_file():
        return False
    of = {(s["name"], s["digest"]["sha256"]) for s in provenance.read_statement(built)["subject"]}
    about = provenance.read_statement(statement)["subject"]
    return of <= {(s["name"], s["digest"]["sha256"]) for s in about}


def push(spec: Spec, registry: str | None, dist: Path) -> PushResult:
    registry = registry or spec.container.registry
    if not registry:
        raise spec.error(
            "container.registry", "not set; give it in the spec or with --registry HOST:PORT"
        )
    image_id = recorded_id(spec, dist)
    extras = _attachments(spec, dist)  # checked before anything is pushed
    client = engine()
    progress.say(f"push: engine {describe(client)}")
    try:
        image = client.images.get(image_id)
    except docker.errors.ImageNotFound:
        raise PushError(
            f"{image_id} (recorded in {dist}) is not in this engine; run "
            "`invoke build-container` again"
        ) from None
    local = f"{spec.repository}:{spec.version}"
    try:
        tagged = client.images.get(local).id
    except docker.errors.ImageNotFound:
        tagged = "no image"
    if tagged != image_id:
        progress.say(
            f"push: {local} now points to {tagged}, not the built {image_id}; pushing the built one"
        )
    remote = remote_repository(spec, registry)
    image.tag(remote, spec.version)
    digest, size = "", 0
    try:
        with progress.stage("push", f"{remote}:{spec.version} ({image_id[:19]})"):
            for line in client.api.push(remote, spec.version, stream=True, decode=True):
                if "error" in line:
                    raise PushError(f"push to {registry} failed: {line['error']}")
                digest = line.get("aux", {}).get("Digest", digest)
                size = line.get("aux", {}).get("Size", size)
        if not digest:
            raise PushError(f"push to {registry}: the registry reported no digest")
        # The engine pushes a name, not an ID: had the vehicle tag been moved meanwhile, the
        # digest would belong to another image (the engine records it on the one it pushed).
        image.reload()
        # By digest: the engine records Docker Hub's names normalised (`user/x`, not
        # `docker.io/user/x`), so the repository part is not compared.
        pushed = {d.rpartition("@")[2] for d in image.attrs.get("RepoDigests") or []}
        if digest not in pushed:
            raise PushError(
                f"push to {registry}: {remote}@{digest} is not {image_id} (was "
                f"{remote}:{spec.version} re-tagged during the push?)"
            )
    except docker.errors.APIError as e:
        raise PushError(f"push to {registry} failed: {e.explanation or e}") from None
    finally:
        client.api.remove_image(f"{remote}:{spec.version}", noprune=True)
    with progress.stage("push: SBOM and attestations", f"referring to {digest[:19]}"):
        try:
            tags = attach.attach(attach.Pushed(remote, digest, size), extras)
        except (requests.RequestException, ValueError, OSError) as e:
            raise PushError(f"pushed {remote}@{digest}, not its SBOM/attestations: {e}") from None
    result = PushResult(f"{remote}@{digest}", image.id, tags)
    with atomic_file(distnames.path(dist, spec, distnames.PUSH_RECORD)) as t:
        t.write_text(json.dumps(result.__dict__, indent=1))
    return result
