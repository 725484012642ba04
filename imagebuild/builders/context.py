"""What every stage of one build shares (engine client, spec, lock, cache, sources, scratch
folder, the stage images loaded so far), and loading an image made of layers into the engine."""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

from imagebuild import profile, progress
from imagebuild.builders import image as img
from imagebuild.builders.layers import (
    Layer,
)
from imagebuild.engine import describe, engine, engine_has, load_archive, local_overlay
from imagebuild.inputs import Inputs


@dataclass(frozen=True)
class Build:
    """What every stage of one build shares."""

    client: docker.DockerClient
    inputs: Inputs
    build_id: str  # names the engine objects of this build
    workdir: Path  # scratch space, removed with the build
    # Stage images loaded so far: kept until the build ends, so the next stage (and the final
    # load) find the layers below already in the engine.
    stages: list[str] = field(default_factory=list)
    local_overlay: bool = False  # read stage changes from the engine's upper dirs (see there)


@contextlib.contextmanager
def new_build(inputs: Inputs) -> Iterator[Build]:
    """The shared context of one build; its scratch folder is removed on exit."""
    client, spec = engine(), inputs.spec
    with tempfile.TemporaryDirectory(prefix="imagebuild-", dir=inputs.cache.root) as tmpdir:
        b = Build(
            client, inputs, uuid.uuid4().hex[:8], Path(tmpdir), local_overlay=local_overlay(client)
        )
        how = "from its overlay upper dirs" if b.local_overlay else "through its API"
        progress.say(f"engine: {describe(client)}; stage changes read {how}")
        try:
            yield b
        finally:  # also on error or Ctrl-C: no stage image outlives its build
            # By this build's tag pattern, not only the list: a signal between an image's load
            # and its listing must not leave it behind.
            ours, tags = f"imagebuild-stage/{spec.name}:{b.build_id}-*", set()
            with contextlib.suppress(docker.errors.APIError):
                tags = {t for i in client.images.list(filters={"reference": ours}) for t in i.tags}
            for tag in [*reversed(b.stages), *sorted(tags - set(b.stages))]:
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(tag, noprune=False)


def load_image(b: Build, config: bytes, layers: list[Layer], tag: str) -> None:
    """Load an image made of `layers`, writing only the layers the engine lacks."""
    archive = b.workdir / f"{tag.replace('/', '_').replace(':', '_')}.tar"
    present = engine_has(
        b.client, layers, [f"{b.inputs.spec.repository}:{b.inputs.spec.version}", *b.stages]
    )
    with profile.step("docker archive written"):
        img.docker_archive(archive, config, layers, tag, present)
    try:
        with profile.step("image load (docker load)"):
            load_archive(b.client, archive)
    finally:
        archive.unlink()
