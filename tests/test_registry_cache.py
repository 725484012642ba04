"""The build cache shared through a real registry (Debian's docker-registry on 127.0.0.1) and a
second, separate Docker engine reached through DOCKER_HOST: machine A pushes what it built,
machine B (an empty cache, an engine that never saw the image, the default socket masked)
builds the same image without building a stage, pulls the VM's base disk, pushes and
verifies; a tampered blob is refused and rebuilt; a registry that is down is a warning, or an
error when the cache is required. Machine A is the session's own build (vm_built); those tests
are `heavy`.

Fast (seconds, no engine): hostile entries pushed by hand with oras-py, or their manifests
rewritten, into the same registry: each refused in one line naming REF:KIND-KEY, before any
download where the manifest already tells, nothing sealed, no traceback; `publish` against a
tag that holds another entry."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import oras.provider
import pytest

from imagebuild import registry_cache
from imagebuild.builders import disk, stages
from imagebuild.cache import Cache
from imagebuild.cache_entries import STAGE
from tests.conftest import build_vm, changed, keys_of, run_invoke, serve_registry, stamps
from tests.test_cache_entries import KEY_A, disk_build, disk_files, seal, stage_files


def heavy(test):  # builds the example (real mirror, engine, VM)
    return pytest.mark.network(pytest.mark.engine(pytest.mark.vm(test)))


# B's tasks run where /var/run/docker.sock is not a socket (a private mount namespace): only
# DOCKER_HOST can lead them to an engine.
NO_DEFAULT_SOCKET = (
    "unshare",
    "-m",
    "sh",
    "-c",
    'mount --bind /dev/null /var/run/docker.sock && exec "$@"',
    "sh",
)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("registry")
    with serve_registry(root) as host:
        yield f"{host}/imagebuild-cache", root / "store"


@pytest.fixture(scope="module")
def engine2() -> Iterator[str]:
    """A second dockerd: its own socket, data root and exec root (short paths: a unix socket's
    path is at most 107 bytes)."""
    root = Path(tempfile.mkdtemp(prefix="ib-e2-", dir="/tmp"))
    host = f"unix://{root}/docker.sock"
    log = (root / "log").open("w")
    proc = subprocess.Popen(
        [
            "dockerd",
            "--host",
            host,
            "--data-root",
            f"{root}/data",
            "--exec-root",
            f"{root}/x",
            "--pidfile",
            f"{root}/docker.pid",
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(120):  # the client asks the engine's version as it is made
            with contextlib.suppress(docker.errors.DockerException):
                docker.DockerClient(base_url=host).close()
                break
            time.sleep(0.5)
        docker.DockerClient(base_url=host).close()
        yield host
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _args(spec: Path, cache: Path, dist: Path) -> list[str]:
    return ["--spec", str(spec), "--cache-dir", str(cache), "--dist", str(dist)]


def _record(dist: Path, spec, kind: str) -> dict:
    return json.loads((dist / f"{spec.name}-{spec.version}.{kind}.json").read_text())


@pytest.fixture(scope="module")
def machine_a(vm_built, locked_example: Path, cache_dir: Path, registry) -> dict[str, float]:
    """A: the session's builds (stages, base disk, outputs all current) push to the registry."""
    spec, dist, _ = vm_built
    ref, _ = registry
    seconds = {}
    for task in ("build-container", "build-vm"):
        start = time.monotonic()
        r = run_invoke(task, *_args(locked_example, cache_dir, dist), "--cache-to", ref)
        assert r.returncode == 0, r.stderr[-3000:]
        seconds[task] = round(time.monotonic() - start, 1)
    return seconds


VM_OUTPUTS = (
    ".qcow2",
    ".ova",
    ".libvirt.box",
    ".vm.json",
    ".vm.packages.txt",
    ".vm.sbom.cdx.json",
    ".vm.intoto.jsonl",
    ".packer-manifest.json",
)


@heavy
def test_machine_b_builds_from_the_registry_on_another_engine(
    machine_a,
    vm_built,
    locked_example: Path,
    cache_dir: Path,
    registry,
    engine2: str,
    tmp_path: Path,
) -> None:
    spec, dist_a, _ = vm_built
    ref, _ = registry
    cache_b, dist_b = tmp_path / "cache-b", tmp_path / "dist-b"
    b = _args(locked_example, cache_b, dist_b)
    env = {"DOCKER_HOST": engine2}
    # B's own sources, from A's blobs (what `fetch --export/--import` carries between machines)
    blobs = tmp_path / "blobs.tar"
    r = run_invoke(
        "fetch",
        "--spec",
        str(locked_example),
        "--cache-dir",
        str(cache_dir),
        "--export",
        str(blobs),
    )
    assert r.returncode == 0, r.stderr
    r = run_invoke(
        "fetch", "--spec", str(locked_example), "--cache-dir", str(cache_b), "--import", str(blobs)
    )
    assert r.returncode == 0, r.stderr
    blobs.unlink()

    r = run_invoke("build-container", *b, "--cache-from", ref, env=env, prefix=NO_DEFAULT_SOCKET)
    assert r.returncode == 0, r.stderr[-3000:]
    record = _record(dist_b, spec, "container")
    assert [s["pulled"] for s in record["stages"]] == [True] * len(stages.STAGES)  # none built
    assert record["image_id"] == _record(dist_a, spec, "container")["image_id"]
    b_engine = docker.DockerClient(base_url=engine2)
    assert (
        b_engine.images.get(f"{spec.repository}:{spec.version}").id
        == f"sha256:{record['image_id']}"
    )
    assert f"engine: {engine2} " in r.stderr  # the build says which engine it used

    r = run_invoke(
        "push",
        "--spec",
        str(locked_example),
        "--dist",
        str(dist_b),
        "--registry",
        ref.split("/")[0],
        env=env,
        prefix=NO_DEFAULT_SOCKET,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert _record(dist_b, spec, "push")["image_id"] == f"sha256:{record['image_id']}"

    # The VM: A's outputs beside (as a CI job restores its artifacts), so only the base disk is
    # B's to make: pulled, not built, and the VM then found current.
    for suffix in VM_OUTPUTS:
        os.link(
            dist_a / f"{spec.name}-{spec.version}{suffix}",
            dist_b / f"{spec.name}-{spec.version}{suffix}",
        )
    outputs = stamps(dist_b)
    r = build_vm(
        locked_example, cache_b, dist_b, "--cache-from", ref, env=env, prefix=NO_DEFAULT_SOCKET
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "registry cache: pulled 1, pushed 0" in r.stdout
    key = keys_of(locked_example).disk
    assert (cache_b / "disks" / key / "disk.json").read_text() == (
        cache_dir / "disks" / key / "disk.json"
    ).read_text()
    assert {Path(p).name for p in changed(outputs, stamps(dist_b))} == {"SHA256SUMS"}

    r = run_invoke(
        "verify",
        "--spec",
        str(locked_example),
        "--dist",
        str(dist_b),
        env=env,
        prefix=NO_DEFAULT_SOCKET,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert b_engine.containers.list(all=True) == []  # verify's container is gone
    b_engine.close()


def _cache_without_app(cache_dir: Path, app: str, dest: Path) -> Path:
    """A copy (hard links) of the session's cache whose app stage is missing: the one entry a
    build with it asks the registry for."""
    dest.mkdir()
    for part in ("blobs", "repos", "wheelhouses", "stages"):
        subprocess.run(["cp", "-al", str(cache_dir / part), str(dest / part)], check=True)
    shutil.rmtree(dest / "stages" / app)
    return dest


def _built_here_as_a(r: subprocess.CompletedProcess[str], spec, dist: Path, dist_a: Path) -> None:
    """The build succeeded, built the app stage itself, and made A's image."""
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    record = _record(dist, spec, "container")
    assert [(s["name"], s["pulled"], s["reused"]) for s in record["stages"]][-1] == (
        "app",
        False,
        False,
    )  # built here
    assert record["image_id"] == _record(dist_a, spec, "container")["image_id"]


@heavy
def test_a_tampered_blob_is_refused_and_built_here(
    machine_a, vm_built, locked_example: Path, cache_dir: Path, registry, tmp_path: Path
) -> None:
    """The app stage's layer in the registry has other bytes than its digest: refused, built
    here, the same image as A's."""
    spec, dist_a, _ = vm_built
    ref, store = registry
    app = keys_of(locked_example).stages["app"]
    cache_c = _cache_without_app(cache_dir, app, tmp_path / "cache-c")
    digest = json.loads((cache_dir / "stages" / app / ".seal.json").read_text())["layer.tar"]
    blob = store / "docker/registry/v2/blobs/sha256" / digest[:2] / digest / "data"
    good = blob.read_bytes()
    blob.write_bytes(good[:-1030] + bytes([good[-1030] ^ 0xFF]) + good[-1029:])
    try:
        r = run_invoke(
            "build-container",
            *_args(locked_example, cache_c, tmp_path / "dist"),
            "--cache-from",
            ref,
        )
    finally:
        blob.write_bytes(good)
    assert f"{ref}:stages-{app} refused: its layer.tar is sha256:" in r.stderr
    _built_here_as_a(r, spec, tmp_path / "dist", dist_a)


@heavy
def test_a_hostile_layer_json_is_refused_and_built_here(
    machine_a, vm_built, locked_example: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """A's app stage with its layer.json's `size` left out, pushed by hand to another registry:
    refused in one line, built here (A's image), and the next build finds its own entry."""
    spec, dist_a, _ = vm_built
    app = keys_of(locked_example).stages["app"]
    cache_c = _cache_without_app(cache_dir, app, tmp_path / "cache-c")
    entry = cache_dir / "stages" / app
    meta = json.loads((entry / "layer.json").read_text())
    del meta["size"]
    files = {n: (entry / n).read_bytes() for n in ("layer.tar", "manifest.json")}
    (tmp_path / "registry").mkdir()
    with serve_registry(tmp_path / "registry") as host:
        ref = f"{host}/hostile"
        push(
            ref,
            f"stages-{app}",
            files | {"layer.json": json.dumps(meta).encode()},
            tmp_path / "push",
        )
        args = [*_args(locked_example, cache_c, tmp_path / "dist"), "--cache-from", ref]
        r = run_invoke("build-container", *args)
        assert r.stderr.count(f"{ref}:stages-{app} refused: ") == 1
        assert "its layer.json: 'size' is a required property; building it here" in r.stderr
        _built_here_as_a(r, spec, tmp_path / "dist", dist_a)
        r = run_invoke("build-container", *args)
        assert r.returncode == 0 and "refused" not in r.stderr, r.stderr[-3000:]
        assert f"app: cached ({app[:12]})" in r.stderr


@heavy
def test_a_registry_that_is_down_is_a_warning_unless_required(
    vm_built, locked_example: Path, cache_dir: Path
) -> None:
    spec, dist, _ = vm_built
    dead = f"127.0.0.1:{_closed_port()}/imagebuild-cache"
    args = [*_args(locked_example, cache_dir, dist), "--cache-from", dead, "--cache-to", dead]
    r = run_invoke("build-container", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count(f"registry cache {dead}: ") == 1  # said once, not per stage
    assert "building locally without it" in r.stderr
    before = stamps(dist)
    r = run_invoke("build-container", *args, "--cache-required")
    assert r.returncode == 1 and f"registry cache {dead}: " in r.stderr
    assert "--cache-required" in r.stderr and "Traceback" not in r.stderr
    assert changed(before, stamps(dist)) == set()


@heavy
def test_a_bad_cache_reference_is_refused_before_anything(
    locked_example: Path, tmp_path: Path
) -> None:
    r = run_invoke(
        "build-container",
        *_args(locked_example, tmp_path / "c", tmp_path / "d"),
        "--cache-from",
        "http://registry/x",
    )
    assert r.returncode == 2 and "--cache-from: 'http://registry/x' is not a registry" in r.stderr
    assert not (tmp_path / "d").exists()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cache_references() -> None:
    assert registry_cache.ref_problem("127.0.0.1:5000/imagebuild-cache") is None
    assert registry_cache.ref_problem("ghcr.io/org/team/cache") is None
    for bad in ("127.0.0.1:5000", "ghcr.io/org/cache:tag", "x/Upper", "https://ghcr.io/x"):
        assert registry_cache.ref_problem(bad), bad


# Hostile entries, pushed by hand into the real registry (fast: no engine, no build).


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    """A key of this test's own: the module's tests share one registry."""
    return hashlib.sha256(request.node.name.encode()).hexdigest()


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Blobs requested from the registry and bytes read of them, as the client sees them."""
    seen = {"blobs": 0, "bytes": 0}
    real = registry_cache._registry_class().get_blob

    def get_blob(self, *args, **kwargs):
        response = real(self, *args, **kwargs)
        seen["blobs"] += 1
        chunks = response.iter_content

        def counted(*a, **k):
            for chunk in chunks(*a, **k):
                seen["bytes"] += len(chunk)
                yield chunk

        response.iter_content = counted
        return response

    monkeypatch.setattr(registry_cache._registry_class(), "get_blob", get_blob)
    return seen


def push(ref: str, tag: str, files: dict[str, bytes], folder: Path) -> oras.provider.Registry:
    """`files` pushed as the artifact REF:TAG with oras-py itself, as anyone who can write the
    cache repository can; the client, to rewrite the manifest."""
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    client = oras.provider.Registry(hostname=ref.split("/")[0], insecure=True)
    client.push(
        f"{ref}:{tag}",
        files=[str(folder / n) for n in files],
        disable_path_validation=True,
        quiet=True,
    )
    return client


def refused(err: str, target: str, said: str) -> None:
    """One line naming the entry and the problem, nothing else said, no traceback."""
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"registry cache: {target} refused: {said}" in err, err
    assert err.rstrip().endswith("; building it here"), err


def nothing_sealed(cache: Cache, kind: str) -> None:
    """No entry and no half-made folder in the local cache."""
    assert not (cache.root / kind).exists() or list((cache.root / kind).iterdir()) == []


def test_a_hand_made_stage_entry_is_pulled(
    registry, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The baseline of the refusals below: the same files, honest, are taken."""
    ref, _ = registry
    files = stage_files(key=key)
    push(ref, f"stages-{key}", files, tmp_path / "push")
    cache = Cache(tmp_path / "cache")
    remote = registry_cache.RegistryCache(ref, None)
    assert remote.fetch(cache, STAGE, key, stages.entry_rule(cache, key, []))
    hit = stages.cached(cache, key, [])
    assert hit is not None and hit[0].path.read_bytes() == files["layer.tar"]
    assert remote.pulled == [f"stages/{key}"] and capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("hostile", "said"),
    [
        ({"size": None}, "its layer.json: 'size' is a required property"),
        ({"manifest.json": b"[]"}, "its manifest.json: [] is not of type 'object'"),
        ({"key": KEY_A}, f"its layer.json names key {KEY_A[:12]}, this build's is "),  # A under B
        ({"below": ["c" * 64]}, "its layer.json names below [cccccccccccc], this build's is []"),
        ({"layer.json": b"{"}, "its layer.json is not JSON"),
    ],
)
def test_a_hostile_stage_entry_is_refused_and_nothing_sealed(
    registry,
    key: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    hostile: dict,
    said: str,
) -> None:
    ref, _ = registry
    meta = {k: v for k, v in hostile.items() if not k.endswith(".json")}
    files = stage_files(**{"key": key, **meta}) | {
        k: v for k, v in hostile.items() if k.endswith(".json")
    }
    push(ref, f"stages-{key}", files, tmp_path / "push")
    cache = Cache(tmp_path / "cache")
    remote = registry_cache.RegistryCache(ref, None)
    assert not remote.fetch(cache, STAGE, key, stages.entry_rule(cache, key, []))
    refused(capsys.readouterr().err, f"{ref}:stages-{key}", said)
    nothing_sealed(cache, "stages")
    assert stages.cached(cache, key, []) is None  # what the build asks next: no traceback
    assert remote.pulled == [] and ref not in remote._down  # the next entry is still asked


def test_a_file_name_not_of_the_kind_is_refused_before_any_download(
    registry, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], downloads: dict
) -> None:
    ref, _ = registry
    push(ref, f"stages-{key}", stage_files(key=key) | {"run.sh": b"#!/bin/sh\n"}, tmp_path / "p")
    cache = Cache(tmp_path / "cache")
    assert not registry_cache.RegistryCache(ref, None).fetch(
        cache, STAGE, key, stages.entry_rule(cache, key, [])
    )
    refused(
        capsys.readouterr().err,
        f"{ref}:stages-{key}",
        "its manifest holds ['layer.json', 'layer.tar', 'manifest.json', 'run.sh'], a "
        "stages entry holds ['layer.json', 'layer.tar', 'manifest.json']",
    )
    assert downloads["blobs"] == 0
    nothing_sealed(cache, "stages")


def test_a_manifest_missing_a_size_is_refused_before_any_download(
    registry, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], downloads: dict
) -> None:
    ref, _ = registry
    target = f"{ref}:stages-{key}"
    client = push(ref, f"stages-{key}", stage_files(key=key), tmp_path / "push")
    manifest = client.get_manifest(target)
    del manifest["layers"][0]["size"]
    client.upload_manifest(manifest, client.get_container(target))  # the registry takes it
    cache = Cache(tmp_path / "cache")
    assert not registry_cache.RegistryCache(ref, None).fetch(
        cache, STAGE, key, stages.entry_rule(cache, key, [])
    )
    refused(capsys.readouterr().err, target, "its manifest: $.layers[0]: 'size' is a required")
    assert downloads["blobs"] == 0
    nothing_sealed(cache, "stages")


def test_a_blob_larger_than_its_manifest_says_is_read_no_further(
    registry, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], downloads: dict
) -> None:
    """The registry serves 16 MiB where the manifest announces 1000 bytes: refused after at
    most one chunk past the announced size."""
    ref, _ = registry
    target = f"{ref}:stages-{key}"
    big = {"layer.tar": os.urandom(16 << 20)}
    client = push(ref, f"stages-{key}", big | stage_files(key=key, size=1000), tmp_path / "p")
    manifest = client.get_manifest(target)
    assert manifest["layers"][0]["annotations"]["org.opencontainers.image.title"] == "layer.tar"
    manifest["layers"][0]["size"] = 1000
    client.upload_manifest(manifest, client.get_container(target))
    cache = Cache(tmp_path / "cache")
    assert not registry_cache.RegistryCache(ref, None).fetch(
        cache, STAGE, key, stages.entry_rule(cache, key, [])
    )
    refused(
        capsys.readouterr().err,
        target,
        "its layer.tar is larger than the 1000 bytes its manifest announces",
    )
    assert downloads["bytes"] <= 1000 + registry_cache.CHUNK < len(big["layer.tar"])
    nothing_sealed(cache, "stages")


def test_a_base_disk_entry_for_another_key_is_refused(
    registry, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real disk entry (qcow2, disk.json) for KEY_A, pushed under this key's tag."""
    ref, _ = registry
    disk_files(tmp_path / "entry")
    files = {n: (tmp_path / "entry" / n).read_bytes() for n in ("disk.qcow2", "disk.json")}
    push(ref, f"disks-{key}", files, tmp_path / "push")
    cache = Cache(tmp_path / "cache")
    from imagebuild.builders.layers import Layer

    kind, rule = disk._entry(disk_build(cache), key, [Layer(tmp_path, "f" * 64, 0, 0)])
    assert not registry_cache.RegistryCache(ref, None).fetch(cache, kind, key, rule)
    refused(
        capsys.readouterr().err,
        f"{ref}:disks-{key}",
        f"its disk.json names key {KEY_A[:12]}, this build's is {key[:12]}",
    )
    nothing_sealed(cache, "disks")


def test_publish_pushes_once_and_says_when_the_tag_holds_another_entry(
    registry, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref, _ = registry
    target = f"{ref}:stages-{key}"
    cache = Cache(tmp_path / "cache")
    seal(cache, "stages", key, stage_files(key=key))
    remote = registry_cache.RegistryCache(None, ref)
    remote.publish(cache, STAGE, key)
    remote.publish(cache, STAGE, key)  # the same entry there: nothing to do, nothing said
    assert remote.pushed == [f"stages/{key}"]
    assert "refused" not in capsys.readouterr().err

    # Another party's entry under this tag (other entries count in its layer.json).
    other = tmp_path / "other"
    client = push(ref, f"stages-{key}", stage_files(key=key, entries=99), other)
    before = client.get_manifest(target)
    remote = registry_cache.RegistryCache(None, ref)
    remote.publish(cache, STAGE, key)
    err = capsys.readouterr().err
    there = hashlib.sha256((other / "layer.json").read_bytes()).hexdigest()
    here = cache.seal("stages", key)["layer.json"]
    assert err == (
        f"[imagebuild] registry cache: {target} holds other files than this build's entry: "
        f"layer.json sha256:{there[:12]} there, {here[:12]} here; the registry keeps it, "
        "unchanged\n"
    )
    assert client.get_manifest(target) == before and remote.pushed == []
    with pytest.raises(registry_cache.CacheUnavailable, match="unchanged \\(--cache-required\\)"):
        registry_cache.RegistryCache(None, ref, required=True).publish(cache, STAGE, key)

    # A tag whose manifest is no entry at all is said the same way, and left.
    before["layers"] = before["layers"][:1]
    client.upload_manifest(before, client.get_container(target))
    registry_cache.RegistryCache(None, ref).publish(cache, STAGE, key)
    err = capsys.readouterr().err
    assert f"{target} is no stages entry (its manifest holds ['layer.tar'], a stages" in err
    assert err.count("\n") == 1
