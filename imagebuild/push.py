"""`invoke push`: the built image to a registry, by digest. The tag the engine pushes is only a
vehicle; what is printed and recorded is `REGISTRY/REPOSITORY@sha256:...`, which names exactly
the bytes `build-container` made (same layers, same config)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import docker.errors

from imagebuild import distnames, progress
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


def remote_repository(spec: Spec, registry: str) -> str:
    # `local/` only means "this machine"; it is not part of the name in a registry.
    return f"{registry}/{spec.repository.removeprefix('local/')}"


def push(spec: Spec, registry: str | None, dist: Path) -> PushResult:
    registry = registry or spec.container.registry
    if not registry:
        raise spec.error(
            "container.registry", "not set; give it in the spec or with --registry HOST:PORT"
        )
    client = engine()
    progress.say(f"push: engine {describe(client)}")
    local = f"{spec.repository}:{spec.version}"
    try:
        image = client.images.get(local)
    except docker.errors.ImageNotFound:
        raise PushError(f"{local}: no such image; run `invoke build-container` first") from None
    remote = remote_repository(spec, registry)
    image.tag(remote, spec.version)
    digest = ""
    try:
        with progress.stage("push", f"{remote}:{spec.version}"):
            for line in client.api.push(remote, spec.version, stream=True, decode=True):
                if "error" in line:
                    raise PushError(f"push to {registry} failed: {line['error']}")
                digest = line.get("aux", {}).get("Digest", digest)
    except docker.errors.APIError as e:
        raise PushError(f"push to {registry} failed: {e.explanation or e}") from None
    finally:
        client.api.remove_image(f"{remote}:{spec.version}", noprune=True)
    if not digest:
        raise PushError(f"push to {registry}: the registry reported no digest")
    result = PushResult(f"{remote}@{digest}", image.id)
    with atomic_file(distnames.path(dist, spec, distnames.PUSH_RECORD)) as t:
        t.write_text(json.dumps(result.__dict__, indent=1))
    return result
