"""What every stage of one build shares (engine client, spec, lock, cache, sources, scratch
folder, the stage images loaded so far), and loading an image made of layers into the engine."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from imagebuild import distnames, leftovers, profile, progress
from imagebuild.builders import image as img
from imagebuild.builders.layers import (
    Layer,
)
from imagebuild.engine import describe, engine, engine_has, load_archive, local_overlay
from imagebuild.inputs import Inputs


@dataclass
class Shared:
    """The one container a build's site.yml stages run in (stage_container.site_stage)."""

    container: Any = None
    off: bool = False  # its upper dir is not readable here: one container per stage
    app: bool = False  # the app archive is mounted in it
    holds: list[str] = field(default_factory=list)  # diff_ids of the layers its files are
    upper: set[str] = field(default_factory=set)  # its upper dir's paths after the last stage


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
    # Stage containers being removed (~0.16 s each in the engine) while the next stage runs.
    removals: list[Future[None]] = field(default_factory=list)
    remover: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="imagebuild-remove")
    )
    shared: Shared = field(default_factory=Shared)
    # Stage images being loaded while the next stage runs; every other load waits for them.
    loads: list[Future[None]] = field(default_factory=list)
    loader: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="imagebuild-load")
    )


def remove_later(b: Build, container: Any) -> None:
    """Remove a finished stage container off the critical path; `new_build` waits for it."""
    b.removals.append(b.remover.submit(container.remove, force=True))


@contextlib.contextmanager
def new_build(inputs: Inputs) -> Iterator[Build]:
    """The shared context of one build; its scratch folder is removed on exit."""
    client, spec = engine(), inputs.spec
    with tempfile.TemporaryDirectory(prefix="imagebuild-", dir=inputs.cache.root) as tmpdir:
        # The build's id is its scratch folder's: what a kill -9 leaves is found by that name.
        build_id = leftovers.build_id(Path(tmpdir))
        b = Build(client, inputs, build_id, Path(tmpdir), local_overlay=local_overlay(client))
        how = "from its overlay upper dirs" if b.local_overlay else "through its API"
        progress.say(f"engine: {describe(client)}; stage changes read {how}")
        try:
            yield b
            _removed(b)  # a container the engine failed to remove fails the build, as before
        finally:  # also on error or Ctrl-C: no stage container or image outlives its build
            b.loader.shutdown(wait=True, cancel_futures=True)
            b.remover.shutdown(wait=True)  # the containers first: they hold the images
            # By this build's tag pattern, not only the list: a signal between an image's load
            # and its listing must not leave it behind.
            ours, tags = f"imagebuild-stage/{spec.name}:{b.build_id}-*", set()
            with contextlib.suppress(docker.errors.APIError):
                tags = {t for i in client.images.list(filters={"reference": ours}) for t in i.tags}
            for tag in [*reversed(b.stages), *sorted(tags - set(b.stages))]:
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(tag, noprune=False)


def _removed(b: Build) -> None:
    for done in [*b.loads, *b.removals]:
        done.result()


def load_later(b: Build, config: bytes, layers: list[Layer], tag: str) -> None:
    """`load_image` in the background, in order with the other background loads."""
    b.loads.append(b.loader.submit(_load, b, config, layers, tag))


def load_image(b: Build, config: bytes, layers: list[Layer], tag: str) -> None:
    """Load an image made of `layers`, writing only the layers the engine lacks (after the
    background loads: their layers are then the engine's)."""
    while b.loads:
        b.loads.pop(0).result()
    _load(b, config, layers, tag)


def _load(b: Build, config: bytes, layers: list[Layer], tag: str) -> None:
    archive = b.workdir / f"{tag.replace('/', '_').replace(':', '_')}.tar"
    present = engine_has(
        b.client,
        [ly.diff_id for ly in layers],
        [distnames.image_tag(b.inputs.spec, b.inputs.lock.arch), *b.stages],
    )
    with profile.step("docker archive written"):
        img.docker_archive(archive, config, layers, tag, present)
    try:
        with profile.step("image load (docker load)"):
            load_archive(b.client, archive)
    finally:
        archive.unlink()
