"""`invoke build-container`: a layered, cached, bit-reproducible Docker image.

Layers, stable to volatile: base (mmdebstrap of the locked Essential set + apt + python3, from
the local repo) -> os -> python -> stacks -> app. Each non-base layer is one tag of
ansible/site.yml run in a container (community.docker.docker_api connection), exported and
diffed against the layers below (imagebuild.builders.layers). Each stage is cached under the hash
of its inputs chained with the stage below, so an app change rebuilds only the app layer and a
build with nothing changed touches no container at all. The config is written by hand with
fixed timestamps, so the image ID is a pure function of lock + spec + roles + app files.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import shlex
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import docker
import docker.errors

from imagebuild import __version__, builder, checksums, distnames, progress, provision, roles, tools
from imagebuild import inventory as inv
from imagebuild.builders import image as img
from imagebuild.builders.layers import (
    LAYER_FORMAT,
    Layer,
    Manifest,
    base_layer,
    diff_layer,
    empty_layer,
    excluded,
    load_manifest,
    save_manifest,
)
from imagebuild.cache import Cache, atomic_file, digest
from imagebuild.errors import ImageBuildError
from imagebuild.fetch import FetchResult, apt_source
from imagebuild.leftovers import CACHE_LABEL
from imagebuild.lock.lockfile import BASE_PACKAGES, Lock
from imagebuild.spec import Spec

STAGES = ("base", "os", "python", "stacks", "app")
MOUNT_REPO, MOUNT_WHEELS = "/var/lib/imagebuild/repo", "/var/lib/imagebuild/wheels"
MOUNT_APP = "/var/lib/imagebuild/app.tar"  # the app archive, for the app role


class EngineError(ImageBuildError):
    pass


@dataclass(frozen=True)
class StageResult:
    name: str
    key: str
    diff_id: str
    size: int
    reused: bool
    seconds: float
    changed: int | None = None  # Ansible's changed count, when the stage ran


@dataclass(frozen=True)
class ContainerResult:
    tag: str
    image_id: str
    stages: list[StageResult]
    oci_archive: Path
    manifest_digest: str
    packages_file: Path
    sbom_file: Path
    noop: bool


def engine() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=600)
        client.ping()
        return client
    except docker.errors.DockerException as e:
        raise EngineError(
            f"the Docker engine is not reachable ({e.__class__.__name__}); start it "
            "with `bash scripts/bootstrap.sh` (dockerd --bridge=none "
            "--iptables=false)"
        ) from None


def stage_keys(spec: Spec, lock: Lock) -> dict[str, str]:
    """Key of each stage = its own inputs chained with the key of the stage below."""
    pv = provision.playbook_vars(spec, lock, MOUNT_REPO, MOUNT_WHEELS)
    site = (roles.ANSIBLE_DIR / "site.yml").read_text()
    common = [__version__, LAYER_FORMAT, str(lock.source_date_epoch)]
    own = {
        # A registry base is named by its digest; a local one by the packages it is made of.
        "base": [spec.base.image]
        if spec.base.image
        else [lock.section_digest("shared"), *BASE_PACKAGES],
        "os": [
            site,
            roles.files_digest("base_os"),
            json.dumps(pv["imagebuild_os_packages"]),
            spec.user,
            spec.base.effective_mirror,
            " ".join(spec.base.components),
        ],
        "python": [
            roles.files_digest("python_env"),
            lock.groups_digest("python"),
            pv["imagebuild_venv"],
        ],
        "stacks": [
            json.dumps(spec.stacks),
            json.dumps(asdict(spec.gpu) if spec.gpu else None),
            lock.groups_digest(*spec.stacks),
            *[roles.files_digest(s, "shared") for s in spec.stacks],
        ],
        "app": [
            roles.files_digest("app"),
            json.dumps(pv["imagebuild_app_build"]),
            json.dumps(
                [
                    pv["imagebuild_exec"],
                    pv["imagebuild_cmd"],
                    pv["imagebuild_env"],
                    pv["imagebuild_app_dest"],
                ]
            ),
            provision.app_digest(spec),
        ],
    }
    keys, below = {}, ""
    for name in STAGES:
        below = digest(below, name, *common, *own[name])
        keys[name] = below
    return keys


def stage_cached(cache: Cache, key: str) -> bool:
    """`layer.json` is written last, inside the folder that is renamed into place."""
    return (cache.dir("stages", key) / "layer.json").exists()


def cached(cache: Cache, key: str) -> tuple[Layer, Manifest] | None:
    """The stage's layer and manifest, if made and still what was sealed (else None: made
    again; a tampered entry is said and removed)."""
    if not (stage_cached(cache, key) and cache.intact("stages", key)):
        return None
    d = cache.dir("stages", key)
    meta = json.loads((d / "layer.json").read_text())
    return Layer(d / "layer.tar", meta["diff_id"], meta["size"], meta["entries"]), load_manifest(
        d / "manifest.json"
    )


def _store(
    cache: Cache, key: str, build: Callable[[Path], tuple[Layer, Manifest, int | None]]
) -> tuple[Layer, Manifest, int | None]:
    """Run `build(tmpdir)` and keep its layer and manifest only if it succeeds."""
    known: dict[str, str] = {}
    with cache.building("stages", key, known) as tmp:
        layer, manifest, changed = build(tmp)
        known["layer.tar"] = layer.diff_id.removeprefix("sha256:")
        save_manifest(manifest, tmp / "manifest.json")
        (tmp / "layer.json").write_text(
            json.dumps({"diff_id": layer.diff_id, "size": layer.size, "entries": layer.entries})
        )
    stored = cached(cache, key)
    assert stored is not None
    return (*stored, changed)


def _make_layer(
    b: _Build, name: str, below: list[Layer], manifest: Manifest, tmp: Path
) -> tuple[Layer, Manifest, int | None]:
    """Build one stage into `tmp/layer.tar`."""
    if name == "base" and b.spec.base.image:
        return (*_registry_base(b, tmp), None)
    if name == "base":
        return (*_mmdebstrap(b.lock, b.fetched.repo_shared, tmp), None)
    if name == "stacks" and not b.spec.stacks:
        return empty_layer(tmp / "layer.tar"), manifest, None
    work = b.workdir / name
    work.mkdir()
    layer, new_manifest, changed = _run_stage(b, name, below, manifest, work)
    shutil.move(layer.path, tmp / "layer.tar")
    return replace(layer, path=tmp / "layer.tar"), new_manifest, changed


def sources_hook(source: str) -> str:
    """mmdebstrap's hook that writes the image's apt source. mmdebstrap runs it with `sh -c`
    on this host (as root), the root folder as $1: the line is quoted as one word."""
    return f'printf "%s\\n" {shlex.quote(source)} > "$1/etc/apt/sources.list"'


def _mmdebstrap(lock: Lock, repo: Path, tmp: Path) -> tuple[Layer, Manifest]:
    rootfs = tmp / "rootfs.tar"
    suite = str(lock.header["suite"])
    # The image's apt source names the real mirror, never the (machine-specific) cache path.
    source = f"deb {lock.mirror} {suite} {' '.join(lock.header['components'])}"
    cmd = [
        "mmdebstrap",
        "--quiet",
        "--variant=essential",
        f"--include={','.join(BASE_PACKAGES)}",
        "--mode=root",
        "--format=tar",
        '--aptopt=Acquire::Languages "none"',
        f"--customize-hook={sources_hook(source)}",
        suite,
        str(rootfs),
        apt_source(repo, suite, "copy"),
    ]
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(lock.source_date_epoch)}
    tools.run(cmd, env=env)
    try:
        return base_layer(rootfs, tmp / "layer.tar", lock.source_date_epoch)
    finally:
        rootfs.unlink()


def _load(client: docker.DockerClient, archive: Path) -> None:
    with archive.open("rb") as f:
        for _ in client.api.load_image(f):
            pass


def engine_has(client: docker.DockerClient, layers: list[Layer], refs: list[str]) -> int:
    """How many of `layers`, from the bottom, the engine already holds (as the layers of one of
    the images `refs`, e.g. the last build's image and this build's stage images)."""
    want = [f"sha256:{ly.diff_id}" for ly in layers]
    best = 0
    for ref in refs:
        try:
            have = client.api.inspect_image(ref)["RootFS"]["Layers"]
        except docker.errors.NotFound:
            continue
        n = 0
        while n < min(len(have), len(want)) and have[n] == want[n]:
            n += 1
        best = max(best, n)
    return best


def load_image(b: _Build, config: bytes, layers: list[Layer], tag: str) -> None:
    """Load an image made of `layers`, writing only the layers the engine lacks."""
    archive = b.workdir / f"{tag.replace('/', '_').replace(':', '_')}.tar"
    present = engine_has(b.client, layers, [f"{b.spec.repository}:{b.spec.version}", *b.stages])
    img.docker_archive(archive, config, layers, tag, present)
    try:
        _load(b.client, archive)
    finally:
        archive.unlink()


def _stage_config(lock: Lock, names: list[str]) -> img.ImageConfig:
    """Config of the throw-away image a stage container starts from."""
    return img.ImageConfig(
        entrypoint=[],
        cmd=[],
        env={"PATH": provision.PATH},
        workdir="/",
        user="",
        labels={},
        created=lock.source_date_epoch,
        history=[f"imagebuild stage {n}" for n in names],
    )


def _read_file(container: Any, path: str) -> bytes:
    stream, _ = container.get_archive("/" + path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as t:
        member = t.next()
        assert member is not None
        f = t.extractfile(member)
        return f.read() if f else b""


@dataclass(frozen=True)
class _Build:
    """What every stage of one build shares."""

    client: docker.DockerClient
    spec: Spec
    lock: Lock
    cache: Cache
    fetched: FetchResult
    build_id: str  # names the engine objects of this build
    workdir: Path  # scratch space, removed with the build
    # Stage images loaded so far: kept until the build ends, so the next stage (and the final
    # load) find the layers below already in the engine.
    stages: list[str] = field(default_factory=list)
    local_overlay: bool = False  # read stage changes from the engine's upper dirs (see there)


@contextlib.contextmanager
def stage_container(
    b: _Build,
    name: str,
    below: list[Layer],
    tags: list[str],
    playbook: str = "site.yml",
    repo: Path | None = None,
    extravars: dict[str, Any] | None = None,
) -> Iterator[tuple[Any, provision.ProvisionResult]]:
    """Start a `--network none` container from the layers below, with the local repo, the
    wheelhouse and the app archive mounted read-only, run `PLAYBOOK --tags TAGS` in it and
    yield it (stopped) with Ansible's result. The container and its throw-away image are
    removed on exit, also on error or Ctrl-C."""
    client, spec, lock, build_id = b.client, b.spec, b.lock, b.build_id
    tag = f"imagebuild-stage/{spec.name}:{build_id}-{name}"
    config = _stage_config(lock, list(STAGES[: len(below)])).render(below)
    b.stages.append(tag)  # before the load: an interrupted load is cleaned up too
    load_image(b, config, below, tag)
    mounts = {
        str(repo or b.fetched.repo_shared): {"bind": MOUNT_REPO, "mode": "ro"},
        str(b.fetched.wheelhouse): {"bind": MOUNT_WHEELS, "mode": "ro"},
    }
    # Only where the app role runs (the VM's base-disk stage exports its whole filesystem).
    app_tar = "app" in tags and provision.write_app_archive(spec, lock, b.workdir / "app.tar")
    if app_tar:  # mounted, not uploaded: the role unpacks it in place
        mounts[app_tar] = {"bind": MOUNT_APP, "mode": "ro"}
    container = None
    try:
        container = client.containers.create(
            tag,
            entrypoint=["sleep", "infinity"],
            name=f"imagebuild-{spec.name}-{build_id}-{name}",
            network_mode="none",
            labels={"io.imagebuild.build": build_id, CACHE_LABEL: str(b.cache.root)},
            volumes=mounts,
        )
        container.start()
        result = provision.run(
            container.name,
            {
                "ansible_connection": "community.docker.docker_api",
                "ansible_python_interpreter": "/usr/bin/python3",
            },
            {
                **provision.playbook_vars(
                    spec,
                    lock,
                    MOUNT_REPO,
                    MOUNT_WHEELS,
                    MOUNT_APP if app_tar else "",
                ),
                **(extravars or {}),
            },  # fmt: skip
            tags,
            b.workdir / f"{name}-ansible",
            playbook,
        )
        container.kill()  # PID 1 is `sleep infinity`: SIGTERM would only cost the stop timeout
        yield container, result
    finally:
        if container is not None:
            container.remove(force=True)


def _run_stage(
    b: _Build, name: str, below: list[Layer], manifest: Manifest, tmp: Path
) -> tuple[Layer, Manifest, int]:
    """Run `site.yml --tags NAME` on the layers below; return the layer it adds, the new
    manifest and Ansible's changed count."""
    with stage_container(b, name, below, [name]) as (container, result):
        stream, deleted = _changes(b, container, manifest, tmp)
        layer, new_manifest = diff_layer(
            stream, manifest, tmp / "layer.tar", b.lock.source_date_epoch,
            partial(_read_file, container), deleted,
        )  # fmt: skip
    return layer, new_manifest, result.changed


def _changes(
    b: _Build, container: Any, below: Manifest, tmp: Path
) -> tuple[Iterable[bytes], list[str] | None]:
    """A stage's changes for `diff_layer`: from the container's upper dir when it is readable
    here, else through the engine (a few: path by path; many: a full export)."""
    upper = _upper_dir(b, container)
    if upper is not None:
        return _upper_entries(upper, below, tmp)
    changes = container.diff() or []
    if len(changes) > SMALL_CHANGE:
        return container.export(chunk_size=1 << 20), None
    deleted = [c["Path"] for c in changes if c["Kind"] == DELETED]
    return _changed_entries(container, changes, tmp), deleted


SMALL_CHANGE = 500  # paths `docker diff` reports; above this a full export is cheaper
ADDED, DELETED = 1, 2  # docker diff's Kind: 0 modified, 1 added, 2 deleted


def _changed_entries(container: Any, changes: list[dict[str, Any]], tmp: Path) -> Iterator[bytes]:
    """A tar of just the entries `docker diff` names, for `diff_layer`. An added folder comes
    whole in one archive request (everything in it is added too); any other path comes alone:
    its own header and data, the rest of a modified folder's archive left unread. Each request
    costs ~50 ms in the engine, so the app stage makes a handful instead of one per file."""
    staging = tmp / "changed.tar"
    wanted = {
        c["Path"]: c["Kind"]
        for c in changes
        if c["Kind"] != DELETED and not excluded(c["Path"].lstrip("/"))
    }  # an excluded folder (the repo and wheel mounts) would come whole, for nothing
    # Each response is closed unread past what is wanted (the SDK's get_archive would hold the
    # connection); identity, else the engine gzips it.
    api = container.client.api
    url = f"{api.base_url}/v{api.api_version}/containers/{container.id}/archive"
    headers = {"Accept-Encoding": "identity"}
    whole: list[str] = []
    with tarfile.open(staging, "w", format=tarfile.GNU_FORMAT) as out:
        for path in sorted(wanted):
            if any(path.startswith(w + "/") for w in whole):
                continue  # came with its added folder
            with api.get(url, params={"path": path}, headers=headers, stream=True) as resp:
                resp.raise_for_status()
                # Entry (and hard-link) names start at the requested path's own name.
                base = posixpath.dirname(path)
                with tarfile.open(fileobj=resp.raw, mode="r|") as t:
                    for info in t:
                        full = posixpath.join(base, info.name.rstrip("/"))
                        if full in wanted:
                            info.name = full.lstrip("/")
                            if info.islnk():  # named like the entries: from the request's folder
                                info.linkname = posixpath.join(base, info.linkname).lstrip("/")
                            out.addfile(info, t.extractfile(info) if info.isreg() else None)
                        if full == path:  # the first entry
                            if not (info.isdir() and wanted[path] == ADDED):
                                break  # a file, or a modified folder: nothing else wanted
                            whole.append(path)
    yield from _drain(staging)


def _drain(staging: Path) -> Iterator[bytes]:
    """A staging tar as the byte stream `diff_layer` reads, removed once read or abandoned."""
    try:
        with staging.open("rb") as f:
            yield from iter(partial(f.read, 1 << 20), b"")
    finally:
        staging.unlink()


def local_overlay(client: docker.DockerClient) -> bool:
    """Whether a stage container's changes can be read from its overlay2 upper directory on
    this host: what the engine itself trusts for `docker diff` (native diff: no redirect_dir,
    no metacopy), no user-namespace remapping (owners would be shifted), and not switched off
    by IMAGEBUILD_ENGINE_DIFF=1 (what a remote engine gets)."""
    if os.environ.get("IMAGEBUILD_ENGINE_DIFF") == "1" or os.geteuid() != 0:
        return False  # the engine's folders are root's alone
    info = client.info()
    status = dict(info.get("DriverStatus") or [])
    return (
        info.get("Driver") == "overlay2"
        and status.get("Native Overlay Diff") == "true"
        and status.get("Using metacopy", "false") == "false"
        and status.get("userxattr", "false") == "false"  # so only trusted.* xattrs count
        and not any("userns" in o or "rootless" in o for o in info.get("SecurityOptions") or [])
    )


def _upper_dir(b: _Build, container: Any) -> Path | None:
    if not b.local_overlay:
        return None
    driver = container.attrs.get("GraphDriver") or {}
    upper = (driver.get("Data") or {}).get("UpperDir")
    # A remote engine's path does not exist here: ask the engine instead.
    try:
        return Path(upper) if upper and Path(upper).is_dir() else None
    except OSError:
        return None


def _opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def _upper_entries(upper: Path, below: Manifest, tmp: Path) -> tuple[Iterator[bytes], list[str]]:
    """The container's changes read straight from its upper directory (what moby's own diff
    walks) instead of ~1 s of `docker diff` + archive requests: a tar of what is there, and the
    deleted paths (whiteouts: 0/0 character devices; an opaque folder hides everything below
    it). Gives `diff_layer` the same input as the engine's API would."""
    staging = tmp / "upper.tar"
    deleted: list[str] = []
    with tarfile.open(staging, "w", format=tarfile.GNU_FORMAT) as out:
        for top, dirs, files in os.walk(upper):
            dirs.sort()
            for name in sorted(dirs + files):
                path = Path(top, name)
                rel = str(path.relative_to(upper))
                st = path.lstat()
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    deleted.append(rel)
                    continue
                if excluded(rel):
                    if name in dirs:
                        dirs.remove(name)
                    continue
                if stat.S_ISDIR(st.st_mode) and _opaque(path):
                    deleted += [p for p in below if p.startswith(rel + "/")]
                info = out.gettarinfo(path, rel)
                if info is None:  # a socket: not part of an image
                    continue
                if info.isreg():
                    with path.open("rb") as f:
                        out.addfile(info, f)
                else:
                    out.addfile(info)
    return _drain(staging), deleted


def _revision(spec: Spec) -> str:
    proc = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=spec.base_dir, capture_output=True, text=True
    )
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def final_config(spec: Spec, lock: Lock, layers: list[Layer]) -> img.ImageConfig:
    labels = {
        "org.opencontainers.image.title": spec.name,
        "org.opencontainers.image.version": spec.version,
        "org.opencontainers.image.revision": _revision(spec),
        "org.opencontainers.image.created": img.rfc3339(lock.source_date_epoch),
        "org.opencontainers.image.base.digest": f"sha256:{layers[0].diff_id}",
        "io.imagebuild.lock.sha256": lock.digest,
        "io.imagebuild.spec": spec.path.name,
    }
    return img.ImageConfig(
        entrypoint=provision.exec_argv(spec),
        cmd=spec.cmd,
        env=provision.runtime_env(spec) | provision.toolkit_env(spec),
        workdir=spec.app.dest if spec.app else "/",
        user=spec.user,
        labels=labels,
        created=lock.source_date_epoch,
        history=[
            f"imagebuild stage {n}: ansible-playbook site.yml --tags {n}"
            if n != "base"
            else "imagebuild stage base: mmdebstrap (locked Essential set)"
            for n in STAGES
        ],
    )


def inventory(client: docker.DockerClient, image_ref: str, spec: Spec) -> dict[str, Any]:
    """What is really installed in the image (imagebuild.inventory's script, run as root)."""
    out = client.containers.run(
        image_ref,
        [inv.target_python(spec), "-c", inv.SCRIPT],
        entrypoint=[],
        user="root",
        network_mode="none",
        remove=True,
        labels={"io.imagebuild.inventory": "1"},
    )
    return json.loads(out)


def _outputs(dist: Path, spec: Spec) -> dict[str, Path]:
    return {
        "oci": distnames.path(dist, spec, distnames.OCI),
        "packages": distnames.path(dist, spec, distnames.CONTAINER_PACKAGES),
        "sbom": distnames.path(dist, spec, distnames.CONTAINER_SBOM),
        "record": distnames.path(dist, spec, distnames.CONTAINER_RECORD),
    }


def build_layers(
    b: _Build, keys: dict[str, str], label: str
) -> tuple[list[Layer], list[StageResult]]:
    """Every stage's layer, from the stage cache or built (and cached) now."""
    layers: list[Layer] = []
    results: list[StageResult] = []
    manifest: Manifest = {}
    for name in STAGES:
        start = time.monotonic()
        hit = cached(b.cache, keys[name])
        built, changed = hit is None, None
        if hit is None:
            with progress.stage(f"{label}: {name}", f"key {keys[name][:12]}") as st:
                make = partial(_make_layer, b, name, list(layers), manifest)
                layer, manifest, changed = _store(b.cache, keys[name], make)
                st["note"] = f"{layer.entries} entries, {layer.size / 1e6:.1f} MB"
        else:
            progress.say(f"{label}: {name}: cached ({keys[name][:12]})")
            layer, manifest = hit
        layers.append(layer)
        seconds = round(time.monotonic() - start, 2)
        results.append(
            StageResult(name, keys[name], layer.diff_id, layer.size, not built, seconds, changed)
        )
    return layers, results


# What the stages after the base need in it: Ansible's interpreter and apt (for the locked pins).
BASE_NEEDS = ("usr/bin/python3", "usr/bin/apt-get")


def _registry_base(b: _Build, tmp: Path) -> tuple[Layer, Manifest]:
    """`base.image: NAME@sha256:...`: pulled by digest (from the user's registry; nothing is
    pulled by tag) and flattened into one normalised layer, like the mmdebstrap base."""
    ref = b.spec.base.image
    assert ref is not None
    try:
        image = b.client.images.pull(ref)
    except docker.errors.APIError as e:
        reason = e.explanation or str(e)
        raise b.spec.error("base.image", f"cannot pull {ref}: {reason}") from None
    container = b.client.containers.create(
        image.id, name=f"imagebuild-{b.spec.name}-{b.build_id}-base", network_mode="none",
        labels={"io.imagebuild.build": b.build_id, CACHE_LABEL: str(b.cache.root)},
    )  # fmt: skip
    try:
        layer, manifest = diff_layer(
            container.export(chunk_size=1 << 20), {}, tmp / "layer.tar", b.lock.source_date_epoch
        )
    finally:
        container.remove(force=True)
    missing = [p for p in BASE_NEEDS if p not in manifest]
    if missing:
        raise b.spec.error(
            "base.image",
            f"{ref} has no /{', /'.join(missing)}: the shared playbook needs Debian's python3 "
            "and apt in the base",
        )
    return layer, manifest


@contextlib.contextmanager
def new_build(spec: Spec, lock: Lock, cache: Cache, fetched: FetchResult) -> Iterator[_Build]:
    """The shared context of one build; its scratch folder is removed on exit."""
    client = engine()
    with tempfile.TemporaryDirectory(prefix="imagebuild-", dir=cache.root) as tmpdir:
        b = _Build(
            client, spec, lock, cache, fetched, uuid.uuid4().hex[:8], Path(tmpdir),
            local_overlay=local_overlay(client),
        )  # fmt: skip
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


def build(
    spec: Spec, lock: Lock, cache: Cache, fetched: FetchResult, dist: Path
) -> ContainerResult:
    keys = stage_keys(spec, lock)
    tag = f"{spec.repository}:{spec.version}"
    out = _outputs(dist, spec)
    with new_build(spec, lock, cache, fetched) as b:
        client = b.client
        layers, results = build_layers(b, keys, "build-container")
        config = final_config(spec, lock, layers).render(layers)
        image_id = hashlib.sha256(config).hexdigest()
        record = out["record"]
        previous = json.loads(record.read_text()) if record.exists() else {}
        noop = (
            previous.get("image_id") == image_id
            and all(p.exists() for p in out.values())
            and _has_image(client, tag, image_id)
        )
        if noop:
            progress.say(f"build-container: nothing changed; {tag} is sha256:{image_id[:12]}")
            manifest_digest = previous["manifest_digest"]
        else:
            with progress.stage("build-container: load", tag):
                load_image(b, config, layers, tag)
            with progress.stage("build-container: outputs", str(dist)):
                annotations = {
                    "org.opencontainers.image.title": spec.name,
                    "org.opencontainers.image.version": spec.version,
                }
                # The inventory container runs while the archive is written (disk-bound).
                with ThreadPoolExecutor(1) as pool:
                    installed = pool.submit(inventory, client, tag, spec)
                    manifest_digest = img.oci_archive(
                        out["oci"], config, layers, spec.version, annotations
                    )
                inv.write(
                    installed.result(),
                    spec,
                    lock,
                    image_id,
                    "container",
                    out["packages"],
                    out["sbom"],
                )
        result = ContainerResult(
            tag, image_id, results, out["oci"], manifest_digest, out["packages"], out["sbom"], noop
        )
        if not noop:  # written last: its presence means every output above is complete
            with atomic_file(record) as t:
                shipped = {"app_files": provision.app_manifest(spec), "builder": builder.versions()}
                t.write_text(json.dumps(asdict(result) | shipped, default=str, indent=1))
        if not noop or not {p.name for p in out.values()} <= checksums.read(dist).keys():
            checksums.record(dist, list(out.values()))
    return result


def _has_image(client: docker.DockerClient, tag: str, image_id: str) -> bool:
    try:
        return client.images.get(tag).id == f"sha256:{image_id}"
    except docker.errors.ImageNotFound:
        return False
