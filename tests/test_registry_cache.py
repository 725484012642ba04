"""The build cache shared through a real registry (Debian's docker-registry on 127.0.0.1) and a
second, separate Docker engine reached through DOCKER_HOST: machine A pushes what it built,
machine B (an empty cache, an engine that never saw the image, the default socket masked)
builds the same image without building a stage, pulls the VM's base disk, pushes and
verifies; a tampered blob is refused and rebuilt; a registry that is down is a warning, or an
error when the cache is required. Machine A is the session's own build (vm_built)."""

from __future__ import annotations

import contextlib
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
import pytest

from imagebuild import registry_cache
from imagebuild.builders import disk, stages
from tests.conftest import build_vm, changed, keys_of, run_invoke, serve_registry, stamps

pytestmark = [pytest.mark.network, pytest.mark.engine, pytest.mark.vm]

# B's tasks run where /var/run/docker.sock is not a socket (a private mount namespace): only
# DOCKER_HOST can lead them to an engine.
NO_DEFAULT_SOCKET = ("unshare", "-m", "sh", "-c",
                     'mount --bind /dev/null /var/run/docker.sock && exec "$@"', "sh")  # fmt: skip


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
        ["dockerd", "--host", host, "--data-root", f"{root}/data", "--exec-root", f"{root}/x",
         "--pidfile", f"{root}/docker.pid", "--bridge=none", "--iptables=false",
         "--ip-masq=false"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
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


VM_OUTPUTS = (".qcow2", ".ova", ".libvirt.box", ".vm.json", ".vm.packages.txt",
              ".vm.sbom.cdx.json", ".packer-manifest.json")  # fmt: skip


def test_machine_b_builds_from_the_registry_on_another_engine(
    machine_a, vm_built, locked_example: Path, cache_dir: Path, registry, engine2: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    spec, dist_a, _ = vm_built
    ref, _ = registry
    cache_b, dist_b = tmp_path / "cache-b", tmp_path / "dist-b"
    b = _args(locked_example, cache_b, dist_b)
    env = {"DOCKER_HOST": engine2}
    # B's own sources, from A's blobs (what `fetch --export/--import` carries between machines)
    blobs = tmp_path / "blobs.tar"
    r = run_invoke("fetch", "--spec", str(locked_example), "--cache-dir", str(cache_dir),
                   "--export", str(blobs))  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = run_invoke("fetch", "--spec", str(locked_example), "--cache-dir", str(cache_b),
                   "--import", str(blobs))  # fmt: skip
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

    r = run_invoke("push", "--spec", str(locked_example), "--dist", str(dist_b), "--registry",
                   ref.split("/")[0], env=env, prefix=NO_DEFAULT_SOCKET)  # fmt: skip
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
    r = build_vm(locked_example, cache_b, dist_b, "--cache-from", ref, env=env,
                 prefix=NO_DEFAULT_SOCKET)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "registry cache: pulled 1, pushed 0" in r.stdout
    key = keys_of(locked_example).disk
    assert (cache_b / "disks" / key / "disk.json").read_text() == (
        cache_dir / "disks" / key / "disk.json"
    ).read_text()
    assert {Path(p).name for p in changed(outputs, stamps(dist_b))} == {"SHA256SUMS"}

    r = run_invoke("verify", "--spec", str(locked_example), "--dist", str(dist_b), env=env,
                   prefix=NO_DEFAULT_SOCKET)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert b_engine.containers.list(all=True) == []  # verify's container is gone
    b_engine.close()


def test_a_tampered_blob_is_refused_and_built_here(
    machine_a, vm_built, locked_example: Path, cache_dir: Path, registry, tmp_path: Path
) -> None:
    """The app stage's layer in the registry has other bytes than its digest: refused, built
    here, the same image as A's."""
    spec, dist_a, _ = vm_built
    ref, store = registry
    app = keys_of(locked_example).stages["app"]
    cache_c = tmp_path / "cache-c"
    cache_c.mkdir()
    for part in ("blobs", "repos", "wheelhouses", "stages"):
        subprocess.run(["cp", "-al", str(cache_dir / part), str(cache_c / part)], check=True)
    shutil.rmtree(cache_c / "stages" / app)
    digest = json.loads((cache_dir / "stages" / app / ".seal.json").read_text())["layer.tar"]
    blob = store / "docker/registry/v2/blobs/sha256" / digest[:2] / digest / "data"
    good = blob.read_bytes()
    blob.write_bytes(good[:-1030] + bytes([good[-1030] ^ 0xFF]) + good[-1029:])
    try:
        r = run_invoke("build-container", *_args(locked_example, cache_c, tmp_path / "dist"),
                       "--cache-from", ref)  # fmt: skip
    finally:
        blob.write_bytes(good)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"stages-{app[:12]} refused (layer.tar is sha256:" in r.stderr
    record = _record(tmp_path / "dist", spec, "container")
    assert [(s["name"], s["pulled"], s["reused"]) for s in record["stages"]][-1] == (
        "app", False, False,
    )  # built here  # fmt: skip
    assert record["image_id"] == _record(dist_a, spec, "container")["image_id"]


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


def test_a_bad_cache_reference_is_refused_before_anything(
    locked_example: Path, tmp_path: Path
) -> None:
    r = run_invoke("build-container", *_args(locked_example, tmp_path / "c", tmp_path / "d"),
                   "--cache-from", "http://registry/x")  # fmt: skip
    assert r.returncode == 2 and "--cache-from: 'http://registry/x' is not a registry" in r.stderr
    assert not (tmp_path / "d").exists()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_pulled_entry_must_be_what_its_kind_is(tmp_path: Path) -> None:
    """Beyond the digests: exactly the kind's files, and its JSON naming its data's digest."""
    layer = {"layer.tar": "ab" * 32, "layer.json": "cd" * 32, "manifest.json": "ef" * 32}
    (tmp_path / "layer.json").write_text(json.dumps({"diff_id": "00" * 32}))
    assert "another diff_id" in (stages.ENTRY_RULE(tmp_path, layer) or "")
    (tmp_path / "layer.json").write_text(json.dumps({"diff_id": "ab" * 32}))
    assert stages.ENTRY_RULE(tmp_path, layer) is None
    assert "not ['layer.json', 'layer.tar', 'manifest.json']" in (
        stages.ENTRY_RULE(tmp_path, {**layer, "extra": "00" * 32}) or ""
    )
    (tmp_path / "layer.json").write_text("[1]")
    assert "not a JSON object" in (stages.ENTRY_RULE(tmp_path, layer) or "")
    qcow2 = {"disk.qcow2": "ab" * 32, "disk.json": "cd" * 32}
    (tmp_path / "disk.json").write_text(json.dumps({"sha256": "ee" * 32}))
    assert "another sha256" in (disk.ENTRY_RULE(tmp_path, qcow2) or "")
    (tmp_path / "disk.json").write_text(json.dumps({"sha256": "ab" * 32}))
    assert disk.ENTRY_RULE(tmp_path, qcow2) is None


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b", ".seal.json", ""])
def test_an_artifact_naming_a_path_is_refused(name: str) -> None:
    manifest = {"layers": [{"digest": "sha256:" + "ab" * 32,
                            "annotations": {"org.opencontainers.image.title": name}}]}  # fmt: skip
    with pytest.raises(registry_cache.Refused):
        registry_cache.entry_files(manifest)


def test_cache_references() -> None:
    assert registry_cache.ref_problem("127.0.0.1:5000/imagebuild-cache") is None
    assert registry_cache.ref_problem("ghcr.io/org/team/cache") is None
    for bad in ("127.0.0.1:5000", "ghcr.io/org/cache:tag", "x/Upper", "https://ghcr.io/x"):
        assert registry_cache.ref_problem(bad), bad
