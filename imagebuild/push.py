"""`invoke push`: the built image to a registry, by digest. What is pushed is the image ID that
`build-container` recorded in dist/ (not whatever REPOSITORY:VERSION points to now: a tag is
moved by any `docker tag` or `docker build`); the tag the engine pushes is only a vehicle, put
on that ID; what is printed and recorded is `REGISTRY/REPOSITORY@sha256:...`, which names
exactly the bytes `build-container` made (same layers, same config)."""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import requests

from imagebuild import attach, checksums, distnames, platform_index, progress, provenance
from imagebuild.cache import atomic_file
from imagebuild.engine import describe, engine
from imagebuild.errors import ImageBuildError
from imagebuild.spec import Spec
from imagebuild.spec_sections import HOST_ARCH


class PushError(ImageBuildError):
    pass


@dataclass(frozen=True)
class PushResult:
    reference: str  # REGISTRY/REPO@sha256:... (with several architectures: their index's)
    image_id: str  # the host's image
    attached: list[str]  # the SBOM's and attestations' tags (imagebuild.attach)
    # With several architectures (base.architectures): each one's image, REGISTRY/REPO@sha256.
    platforms: dict[str, str] = field(default_factory=dict)


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
    # The host's image, then each other architecture's built beside it (DIST/ARCH/).
    built = [
        (a, d)
        for a in spec.base.architectures
        if (d := distnames.arch_dir(dist, a)) == dist
        or distnames.path(d, spec, distnames.CONTAINER_RECORD).is_file()
    ]
    if missing := [a for a in spec.base.architectures if a not in dict(built)]:
        progress.say(
            f"push: {', '.join(missing)}: no image built in {dist} "
            f"(build-container --arch {missing[0]}); pushing {', '.join(dict(built))} only"
        )
    ids = {a: recorded_id(spec, d) for a, d in built}
    extras = {a: _attachments(spec, d) for a, d in built}  # checked before anything is pushed
    client = engine()
    progress.say(f"push: engine {describe(client)}")
    found = {a: _in_engine(client, ids[a], d, a) for a, d in built}  # all, before any push
    if len({i.labels.get(distnames.LOCK_LABEL) for i in found.values()}) > 1:
        raise PushError(
            f"the images in {dist} and {', '.join(str(d) for _, d in built[1:])} were built from "
            "different locks; run `invoke build-container` (every architecture) again"
        )
    remote = remote_repository(spec, registry)
    # Several architectures: each under VERSION-ARCH, so VERSION changes only when their index
    # is put (a push that fails halfway leaves it as it was).
    several = len(built) > 1
    images: list[tuple[str, attach.Pushed]] = []
    tags: list[str] = []
    for arch, _ in built:
        vehicle = f"{spec.version}-{arch}" if several else spec.version
        pushed = _push_image(client, spec, registry, found[arch], arch, vehicle)
        with progress.stage("push: SBOM and attestations", f"referring to {pushed.digest[:19]}"):
            try:
                tags += attach.attach(pushed, extras[arch])
            except (requests.RequestException, ValueError, OSError) as e:
                raise PushError(
                    f"pushed {remote}@{pushed.digest}, not its SBOM/attestations: {e}"
                ) from None
        images.append((arch, pushed))
    reference, platforms = f"{remote}@{images[0][1].digest}", {}
    if len(images) > 1:  # REPOSITORY:VERSION becomes the index of every architecture's image
        with progress.stage("push: image index", f"{remote}:{spec.version}") as st:
            try:
                index = platform_index.put(remote, spec.version, images)
            except (requests.RequestException, ValueError, ImageBuildError) as e:
                raise PushError(
                    f"pushed each architecture's image ({remote}:{spec.version}-ARCH), not "
                    f"their index: {remote}:{spec.version} is left as it was: {e}"
                ) from None
            st["note"] = ", ".join(a for a, _ in images)
        reference = f"{remote}@{index.digest}"
        platforms = {a: f"{remote}@{p.digest}" for a, p in images}
    result = PushResult(reference, ids[HOST_ARCH], tags, platforms)
    with atomic_file(distnames.path(dist, spec, distnames.PUSH_RECORD)) as t:
        t.write_text(json.dumps(result.__dict__, indent=1))
    return result


def _in_engine(client: docker.DockerClient, image_id: str, dist: Path, arch: str) -> Any:
    """The engine's image `image_id`, which build-container recorded in `dist` for `arch`."""
    try:
        return client.images.get(image_id)
    except docker.errors.ImageNotFound:
        again = "" if arch == HOST_ARCH else f" --arch {arch}"
        raise PushError(
            f"{image_id} (recorded in {dist}) is not in this engine; run "
            f"`invoke build-container{again}` again"
        ) from None


def _push_image(
    client: docker.DockerClient, spec: Spec, registry: str, image: Any, arch: str, vehicle: str
) -> attach.Pushed:
    """Push `image` (the one build-container recorded for `arch`) under the tag `vehicle`; the
    manifest the registry has."""
    image_id = image.id
    local = distnames.image_tag(spec, arch)
    try:
        tagged = client.images.get(local).id
    except docker.errors.ImageNotFound:
        tagged = "no image"
    if tagged != image_id:
        progress.say(
            f"push: {local} now points to {tagged}, not the built {image_id}; pushing the built one"
        )
    remote = remote_repository(spec, registry)
    digest, size = "", 0
    try:
        image.tag(remote, vehicle)
        with progress.stage("push", f"{remote}:{vehicle} ({image_id[:19]})"):
            for line in client.api.push(remote, vehicle, stream=True, decode=True):
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
                f"{remote}:{vehicle} re-tagged during the push?)"
            )
    except docker.errors.APIError as e:
        raise PushError(f"push to {registry} failed: {e.explanation or e}") from None
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):  # the tag itself failed
            client.api.remove_image(f"{remote}:{vehicle}", noprune=True)
    return attach.Pushed(remote, digest, size)
