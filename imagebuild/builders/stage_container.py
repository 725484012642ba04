"""Stage containers: `--network none`, from the layers below a stage, with the local repo, the
wheelhouse and the app archive mounted read-only; Ansible runs a stage's tag in it; it is frozen
(paused, not killed: nothing in it writes) while that stage's changes are read.

Where the engine's upper dirs are read on this host, the stages one build makes (from the first
no cache holds up to the app) run one after another in ONE container (`site_stage`): no image
load, container start or removal between them. A stage's changes are then what the upper dir
holds that the layers below do not (changes.upper_entries, told the paths the stage before left
there), and each finished layer is loaded into the engine in the background while the next
stage runs. Through an engine's API (`docker diff`), one container per stage; both give the
same layers (tests/test_container.py builds both ways). What a stage leaves outside the image
(/tmp, caches, apt's lists) the next one sees, as in the VM, where the play runs whole on one
machine."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors

from imagebuild import emulation, provision
from imagebuild.builders import image as img
from imagebuild.builders.changes import upper_dir
from imagebuild.builders.context import Build, load_image, load_later, remove_later
from imagebuild.builders.layers import Layer
from imagebuild.engine import connection_vars
from imagebuild.keys import STAGES
from imagebuild.leftovers import CACHE_LABEL
from imagebuild.lock.lockfile import Lock
from imagebuild.resolved import APP_ARCHIVE, PATH, REPO_DIR, WHEELS_DIR


def _stage_config(lock: Lock, names: list[str]) -> img.ImageConfig:
    """Config of the throw-away image a stage container starts from."""
    return img.ImageConfig(
        entrypoint=[],
        cmd=[],
        env={"PATH": PATH},
        workdir="/",
        user="",
        labels={},
        created=lock.source_date_epoch,
        history=[f"imagebuild stage {n}" for n in names],
        architecture=lock.arch,
    )


def _stage_image(b: Build, tag_suffix: str, layers: list[Layer], later: bool = False) -> str:
    """Load `layers` as a throw-away image (now, or in the background: `later`)."""
    tag = f"imagebuild-stage/{b.inputs.spec.name}:{b.build_id}-{tag_suffix}"
    config = _stage_config(b.inputs.lock, list(STAGES[: len(layers)])).render(layers)
    b.stages.append(tag)  # before the load: an interrupted load is cleaned up too
    (load_later if later else load_image)(b, config, layers, tag)
    return tag


def _start(
    b: Build, name: str, below: list[Layer], app: bool, repo: Path | None
) -> tuple[Any, bool]:
    """A started container (`sleep infinity`) on the layers below, its sources mounted; and
    whether the app archive is (`app`, and the spec has an app)."""
    client, spec = b.client, b.inputs.spec
    image = _stage_image(b, name, below)
    mounts = {
        str(repo or b.inputs.fetched.repo_shared): {"bind": REPO_DIR, "mode": "ro"},
        str(b.inputs.fetched.wheelhouse): {"bind": WHEELS_DIR, "mode": "ro"},
    }
    # Mounted, not uploaded: the role unpacks it in place.
    tar = app and b.inputs.resolved.write_app_archive(b.workdir / "app.tar")
    if tar:
        mounts[tar] = {"bind": APP_ARCHIVE, "mode": "ro"}
    container = client.containers.create(
        image,
        entrypoint=["sleep", "infinity"],
        name=f"imagebuild-{spec.name}-{b.build_id}-{name}",
        network_mode="none",
        labels={"io.imagebuild.build": b.build_id, CACHE_LABEL: str(b.inputs.cache.root)},
        volumes=mounts,
        **emulation.container_options(b.inputs.lock.arch),
    )
    try:
        container.start()
    except BaseException:
        remove_later(b, container)
        raise
    return container, bool(tar)


def _provision(
    b: Build,
    container: Any,
    name: str,
    tags: list[str],
    has_app: bool,
    playbook: str = "site.yml",
    extravars: dict[str, Any] | None = None,
) -> tuple[provision.ProvisionResult, bool]:
    """Run `PLAYBOOK --tags TAGS` in the container, then freeze it; whether it could be frozen
    (else it was stopped)."""
    hostvars, ansible_env = provision.container_connection(connection_vars())
    result = provision.run(
        container.name,
        hostvars,
        {**b.inputs.resolved.playbook_vars(APP_ARCHIVE if has_app else ""), **(extravars or {})},
        tags,
        b.workdir / f"{name}-ansible",
        playbook,
        ansible_env,
    )
    return result, _freeze(container)


def _freeze(container: Any) -> bool:
    """Pause the container: nothing in it writes while its changes are read. Where the runtime
    cannot (no cgroup freezer: some rootless engines, gVisor), kill it: its changes stay, only
    the next stage needs a container of its own."""
    try:
        container.pause()
        return True
    except docker.errors.APIError:
        container.kill()  # PID 1 is `sleep infinity`: SIGTERM would only wait for the timeout
        return False


@contextlib.contextmanager
def stage_container(
    b: Build,
    name: str,
    below: list[Layer],
    tags: list[str],
    playbook: str = "site.yml",
    repo: Path | None = None,
    extravars: dict[str, Any] | None = None,
) -> Iterator[tuple[Any, provision.ProvisionResult]]:
    """A container of its own on the layers below in which `PLAYBOOK --tags TAGS` ran, yielded
    (paused) with Ansible's result; removed on exit, also on error or Ctrl-C."""
    container, has_app = _start(b, name, below, "app" in tags, repo)
    try:
        yield container, _provision(b, container, name, tags, has_app, playbook, extravars)[0]
    finally:
        remove_later(b, container)


@contextlib.contextmanager
def site_stage(
    b: Build, name: str, below: list[Layer]
) -> Iterator[tuple[Any, provision.ProvisionResult, set[str] | None]]:
    """Stage `name` of site.yml run on the layers below: yields its container (paused), Ansible's
    result and the paths its upper dir held before this stage (None: a container of its own,
    read through the engine). The container stays for the next stage until `done_stages`."""
    shared = b.shared
    if not b.local_overlay or shared.off:
        with stage_container(b, name, below, [name]) as (container, result):
            yield container, result, None
        return
    if shared.container is not None and shared.holds == [ly.diff_id for ly in below]:
        shared.container.unpause()
    else:
        done_stages(b)
        shared.container, shared.app = _start(b, name, below, True, None)
        shared.holds, shared.upper = [ly.diff_id for ly in below], set()
        # Its upper dir must be readable here (not where this runs in a container given the
        # engine's socket): `docker diff` does not see a path a stage before made and this one
        # removed. Else this container serves this stage only, and each stage gets its own.
        shared.off = upper_dir(b, shared.container) is None
    try:
        result, frozen = _provision(b, shared.container, name, [name], shared.app)
        yield shared.container, result, None if shared.off else shared.upper
        if shared.off or not frozen:
            done_stages(b)
    except BaseException:
        done_stages(b)
        raise


def stage_made(b: Build, name: str, below: list[Layer], layer: Layer) -> None:
    """The stage's layer is made: the shared container now holds it too, and the engine gets
    it in the background (the next stage, the final image and the VM's disk stage need it in
    the engine; the app's is loaded with the final image)."""
    if b.local_overlay and b.shared.container is not None:
        b.shared.holds.append(layer.diff_id)
        if name != STAGES[-1]:
            _stage_image(b, f"{name}-made", [*below, layer], later=True)


def done_stages(b: Build) -> None:
    """The shared container is no longer needed: removed off the critical path."""
    if b.shared.container is not None:
        remove_later(b, b.shared.container)
        b.shared.container, b.shared.holds, b.shared.upper = None, [], set()
