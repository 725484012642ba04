"""The container's stages (base -> os -> python -> stacks -> app, keyed in imagebuild.keys): the
stage cache, and running one stage: a `--network none` container from the layers below in
which Ansible runs that stage's tag."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from imagebuild import profile, progress, provision
from imagebuild.builders import image as img
from imagebuild.builders.base_layer import mmdebstrap_base, registry_base
from imagebuild.builders.changes import read_file, stage_changes
from imagebuild.builders.context import Build, load_image, remove_later
from imagebuild.builders.layers import (
    Layer,
    Manifest,
    diff_layer,
    empty_layer,
    load_manifest,
    save_manifest,
)
from imagebuild.cache import Cache
from imagebuild.cache_entries import STAGE, Consistency
from imagebuild.engine import connection_vars
from imagebuild.keys import STAGES
from imagebuild.leftovers import CACHE_LABEL
from imagebuild.lock.lockfile import Lock
from imagebuild.obtain import obtain
from imagebuild.resolved import APP_ARCHIVE, PATH, REPO_DIR, WHEELS_DIR


@dataclass(frozen=True)
class StageResult:
    name: str
    key: str
    diff_id: str
    size: int
    reused: bool
    seconds: float
    changed: int | None = None  # Ansible's changed count, when the stage ran
    pulled: bool = False  # from the registry cache


def entry_rule(cache: Cache, key: str, below: list[Layer]) -> Consistency:
    """What the stage entry `key` must be, local or pulled: a valid stage entry of this key,
    made on top of exactly the layers `below` (their diff_ids, in order)."""
    return STAGE.rule(cache, {"key": key, "below": [ly.diff_id for ly in below]})


def _entry_layer(cache: Cache, key: str) -> Layer:
    """The layer of an entry its rule has passed (its diff_id: layer.tar's, the rule says)."""
    d = cache.dir("stages", key)
    meta = json.loads((d / "layer.json").read_text())
    tar = d / "layer.tar"
    return Layer(tar, meta["diff_id"], tar.stat().st_size, meta["entries"])


def cached_layer(cache: Cache, key: str, below: list[Layer]) -> Layer | None:
    """The stage's layer on top of `below`, if made, still what was sealed and valid (else
    None: made again; a tampered or invalid entry is said and removed)."""
    if not cache.intact("stages", key, rule=entry_rule(cache, key, below)):
        return None
    return _entry_layer(cache, key)


def cached(cache: Cache, key: str, below: list[Layer]) -> tuple[Layer, Manifest] | None:
    """`cached_layer` and the stage's manifest (every path up to it)."""
    layer = cached_layer(cache, key, below)
    return None if layer is None else (layer, load_manifest(manifest_path(cache, key)))


def manifest_path(cache: Cache, key: str) -> Path:
    return cache.dir("stages", key) / "manifest.json"


Made = Callable[[Path], tuple[Layer, Manifest, int | None]]


def _entry_builder(
    key: str, below: list[Layer], build: Made, made: dict[str, Any]
) -> Callable[[Path, dict[str, str]], None]:
    """What `obtain` runs to make a stage entry: `build(tmpdir)` writes the layer; its file list
    and layer.json go beside it; the layer, manifest and Ansible's count land in `made`."""

    def make(tmp: Path, known: dict[str, str]) -> None:
        layer, manifest, changed = build(tmp)
        known["layer.tar"] = layer.diff_id.removeprefix("sha256:")
        save_manifest(manifest, tmp / "manifest.json")
        meta = {
            "key": key,
            "below": [ly.diff_id for ly in below],
            "diff_id": layer.diff_id,
            "size": layer.size,
            "entries": layer.entries,
        }
        (tmp / "layer.json").write_text(json.dumps(meta))
        made.update(manifest=manifest, changed=changed)

    return make


def _store(
    cache: Cache, key: str, below: list[Layer], build: Made
) -> tuple[Layer, Manifest, int | None]:
    """Run `build(tmpdir)` and keep its layer and manifest only if it succeeds (this cache
    only; `build_layers` goes through the registry cache too)."""
    made: dict[str, Any] = {}
    obtain(
        cache,
        STAGE,
        key,
        _entry_builder(key, below, build, made),
        label=f"stage {key[:12]}",
        rule=entry_rule(cache, key, below),
    )
    return _entry_layer(cache, key), load_manifest(manifest_path(cache, key)), made.get("changed")


def _make_layer(
    b: Build, name: str, below: list[Layer], manifest: Manifest, tmp: Path
) -> tuple[Layer, Manifest, int | None]:
    """Build one stage into `tmp/layer.tar`."""
    if name == "base" and b.inputs.spec.base.image:
        return (*registry_base(b, tmp), None)
    if name == "base":
        return (*mmdebstrap_base(b.inputs.lock, b.inputs.fetched.repo_shared, tmp), None)
    if name == "stacks" and not b.inputs.spec.stacks:
        return empty_layer(tmp / "layer.tar"), manifest, None
    work = b.workdir / name
    work.mkdir()
    layer, new_manifest, changed = _run_stage(b, name, below, manifest, work)
    shutil.move(layer.path, tmp / "layer.tar")
    return replace(layer, path=tmp / "layer.tar"), new_manifest, changed


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
    )


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
    """Start a `--network none` container from the layers below, with the local repo, the
    wheelhouse and the app archive mounted read-only, run `PLAYBOOK --tags TAGS` in it and
    yield it (paused) with Ansible's result. The container and its throw-away image are
    removed on exit, also on error or Ctrl-C."""
    client, spec, lock, build_id = b.client, b.inputs.spec, b.inputs.lock, b.build_id
    tag = f"imagebuild-stage/{spec.name}:{build_id}-{name}"
    config = _stage_config(lock, list(STAGES[: len(below)])).render(below)
    b.stages.append(tag)  # before the load: an interrupted load is cleaned up too
    load_image(b, config, below, tag)
    mounts = {
        str(repo or b.inputs.fetched.repo_shared): {"bind": REPO_DIR, "mode": "ro"},
        str(b.inputs.fetched.wheelhouse): {"bind": WHEELS_DIR, "mode": "ro"},
    }
    # Only where the app role runs (the VM's base-disk stage exports its whole filesystem).
    app_tar = "app" in tags and b.inputs.resolved.write_app_archive(b.workdir / "app.tar")
    if app_tar:  # mounted, not uploaded: the role unpacks it in place
        mounts[app_tar] = {"bind": APP_ARCHIVE, "mode": "ro"}
    container = None
    try:
        container = client.containers.create(
            tag,
            entrypoint=["sleep", "infinity"],
            name=f"imagebuild-{spec.name}-{build_id}-{name}",
            network_mode="none",
            labels={"io.imagebuild.build": build_id, CACHE_LABEL: str(b.inputs.cache.root)},
            volumes=mounts,
        )
        container.start()
        hostvars, ansible_env = provision.container_connection(connection_vars())
        result = provision.run(
            container.name,
            hostvars,
            {
                **b.inputs.resolved.playbook_vars(APP_ARCHIVE if app_tar else ""),
                **(extravars or {}),
            },
            tags,
            b.workdir / f"{name}-ansible",
            playbook,
            ansible_env,
        )
        # Frozen, not killed: nothing in it writes while its changes are read (a kill waits for
        # the engine to tear the container down, ~0.2 s; the forced removal does that later).
        container.pause()
        yield container, result
    finally:
        if container is not None:
            remove_later(b, container)


def _run_stage(
    b: Build, name: str, below: list[Layer], manifest: Manifest, tmp: Path
) -> tuple[Layer, Manifest, int]:
    """Run `site.yml --tags NAME` on the layers below; return the layer it adds, the new
    manifest and Ansible's changed count."""
    with (
        stage_container(b, name, below, [name]) as (container, result),
        profile.step("layer from a stage's changes (read, written, hashed)"),
    ):
        stream, deleted = stage_changes(b, container, manifest, tmp)
        layer, new_manifest = diff_layer(
            stream,
            manifest,
            tmp / "layer.tar",
            b.inputs.lock.source_date_epoch,
            partial(read_file, container),
            deleted,
        )
    return layer, new_manifest, result.changed


def _build_stage(
    b: Build,
    label: str,
    name: str,
    key: str,
    below: list[Layer],
    listing: Manifest | Path,
    tmp: Path,
) -> tuple[Layer, Manifest, int | None]:
    """Build one stage (its progress line) on `below`, whose file list is `listing` (read now
    if it is still the cached entry's file)."""
    with progress.stage(f"{label}: {name}", f"key {key[:12]}") as st:
        manifest = load_manifest(listing) if isinstance(listing, Path) else listing
        out = _make_layer(b, name, below, manifest, tmp)
        st["note"] = f"{out[0].entries} entries, {out[0].size / 1e6:.1f} MB"
    return out


Starting = Callable[[str, list[Layer]], None]


def _told(starting: Starting, name: str, below: list[Layer], build: Made) -> Made:
    def told(tmp: Path) -> tuple[Layer, Manifest, int | None]:
        starting(name, below)
        return build(tmp)

    return told


def build_layers(
    b: Build, label: str, starting: Starting | None = None
) -> tuple[list[Layer], list[StageResult]]:
    """Every stage's layer, from the stage cache (local, else the registry's) or built now;
    `starting(name, below)` is told when a stage is about to be built on the layers `below`
    (work that needs only those may run beside it)."""
    keys, cache = b.inputs.keys.stages, b.inputs.cache
    layers: list[Layer] = []
    results: list[StageResult] = []
    # The file list below the next stage, read only when a stage is built (a stage's list holds
    # every path of the image: reading five of them was most of a no-op build's own time).
    manifest: Manifest | Path = {}
    for name in STAGES:
        start, key, made = time.monotonic(), keys[name], dict[str, Any]()
        below = list(layers)
        build: Made = partial(_build_stage, b, label, name, key, below, manifest)
        if starting is not None:
            build = _told(starting, name, below, build)
        make = _entry_builder(key, below, build, made)
        rule = entry_rule(cache, key, below)
        origin = obtain(
            cache, STAGE, key, make, label=f"{label}: {name}", rule=rule, remote=b.inputs.remote
        )
        layer = _entry_layer(cache, key)
        manifest = made.get("manifest", manifest_path(cache, key))
        layers.append(layer)
        seconds = round(time.monotonic() - start, 2)
        results.append(
            StageResult(
                name,
                key,
                layer.diff_id,
                layer.size,
                origin != "built",
                seconds,
                made.get("changed"),
                origin == "pulled",
            )
        )
    return layers, results
