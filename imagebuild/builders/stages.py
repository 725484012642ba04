"""The container's stages (base -> os -> python -> stacks -> app, keyed in imagebuild.keys): the
stage cache, and running one stage: a `--network none` container from the layers below in
which Ansible runs that stage's tag."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from imagebuild import profile, progress
from imagebuild.builders.base_layer import mmdebstrap_base, registry_base
from imagebuild.builders.changes import read_file, stage_changes
from imagebuild.builders.context import Build
from imagebuild.builders.layers import (
    Layer,
    Manifest,
    diff_layer,
    empty_layer,
    load_manifest,
    save_manifest,
)
from imagebuild.builders.stage_container import done_stages, site_stage, stage_made
from imagebuild.cache import Cache
from imagebuild.cache_entries import STAGE, Consistency
from imagebuild.keys import STAGES
from imagebuild.obtain import obtain


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


def _run_stage(
    b: Build, name: str, below: list[Layer], manifest: Manifest, tmp: Path
) -> tuple[Layer, Manifest, int]:
    """Run `site.yml --tags NAME` on the layers below; return the layer it adds, the new
    manifest and Ansible's changed count."""
    with (
        site_stage(b, name, below) as (container, result, seen),
        profile.step("layer from a stage's changes (read, written, hashed)"),
    ):
        stream, deleted = stage_changes(b, container, manifest, tmp, seen)
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
    layers: list[Layer] = []
    results: list[StageResult] = []
    try:
        _each_stage(b, label, starting, layers, results)
    finally:
        done_stages(b)  # the stages' shared container, also on error or Ctrl-C
    return layers, results


def _each_stage(
    b: Build,
    label: str,
    starting: Starting | None,
    layers: list[Layer],
    results: list[StageResult],
) -> None:
    keys, cache = b.inputs.keys.stages, b.inputs.cache
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
        if origin == "built":
            stage_made(b, name, below, layer)  # its file in the cache, where it stays
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
