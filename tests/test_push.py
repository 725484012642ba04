"""push against a real registry (Debian's docker-registry on 127.0.0.1), pulled back by digest;
what it pushes is the image ID build-container recorded in dist/, not what the tag names now."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from imagebuild import attach, checksums, distlock, distnames, platform_index
from imagebuild import spec as specmod
from imagebuild.cache import sha256_file
from tests.conftest import OSV, copy_example, osv_export, run_invoke, serve_registry


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    with serve_registry(tmp_path) as host:
        yield host


@pytest.mark.network
@pytest.mark.engine
def test_push_then_pull_by_digest(
    registry: str, locked_example: Path, cache_dir: Path, tmp_path: Path
) -> None:
    dist = tmp_path / "dist"
    common = ["--spec", str(locked_example), "--dist", str(dist)]
    # scanned first (findings below medium only: it builds), its statement written beside
    db = osv_export(OSV / "debian", tmp_path / "debian-all.zip")
    scan = ["--scan", str(db), "--max-db-age", "0", "--fail-on", "medium"]
    r = run_invoke("build-container", *common, "--cache-dir", str(cache_dir), *scan)
    assert r.returncode == 0, r.stderr
    assert "DEBIAN-CVE-2011-3374" in r.stdout and "1 findings: 1 low" in r.stdout
    r = run_invoke("push", *common, "--registry", registry)
    assert r.returncode == 0, r.stderr
    spec = specmod.load(locked_example)
    record = json.loads((dist / f"{spec.name}-{spec.version}.push.json").read_text())
    ref = record["reference"]
    assert ref.startswith(f"{registry}/{spec.name}@sha256:") and ref in r.stdout
    client = docker.from_env()
    local_id = client.images.get(f"{spec.repository}:{spec.version}").id
    pulled = client.images.pull(ref)
    assert pulled.id == local_id == record["image_id"]
    client.images.remove(ref)
    # Beside it, referring to it by digest: its SBOM and its provenance, byte for byte, read
    # back by the image's digest (the tag fallback: this registry has no referrers API).
    repo, _, digest = ref.partition("@")
    image = attach.Pushed(repo, digest, 0)  # the size: for pushing only
    stem = f"{spec.name}-{spec.version}"
    sbom, prov = dist / f"{stem}.container.sbom.cdx.json", dist / f"{stem}.container.intoto.jsonl"
    scanned = dist / f"{stem}.scan.intoto.jsonl"
    assert attach.attached(image, "sbom") == {sbom.name: f"sha256:{sha256_file(sbom)}"}
    assert attach.attached(image, "att") == {
        prov.name: f"sha256:{sha256_file(prov)}",
        scanned.name: f"sha256:{sha256_file(scanned)}",
    }
    assert f"attached {image.tag('att')}" in r.stdout
    other = attach.Pushed(repo, "sha256:" + "0" * 64, 1)
    assert attach.attached(other, "att") == {}


@pytest.mark.network
@pytest.mark.engine
def test_push_without_registry_names_the_field(locked_example: Path, tmp_path: Path) -> None:
    r = run_invoke("push", "--spec", str(locked_example), "--dist", str(tmp_path))
    assert r.returncode == 2  # a spec problem, found late: the same exit as at parse time
    assert "container.registry: not set" in r.stderr and "--registry" in r.stderr


@pytest.mark.network
@pytest.mark.engine
def test_build_on_a_registry_base_pulled_by_digest(
    registry: str, locked_example: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """`base.image: NAME@sha256:...`: the example's own image, pushed to the local registry,
    becomes the base of a second build, which pulls it by digest and flattens it into its base
    layer; an unreachable registry is an error naming the field."""
    dist = tmp_path / "dist"
    common = ["--spec", str(locked_example), "--dist", str(dist), "--cache-dir", str(cache_dir)]
    for task in (("build-container",), ("push", "--registry", registry)):
        r = run_invoke(*task, *common)
        assert r.returncode == 0, r.stderr
    spec = specmod.load(locked_example)
    ref = json.loads((dist / f"{spec.name}-{spec.version}.push.json").read_text())["reference"]
    with contextlib.suppress(docker.errors.ImageNotFound):  # the build pulls it from the registry
        docker.from_env().images.remove(ref)

    on_registry = copy_example(tmp_path / "on-registry")
    text = on_registry.read_text().replace("base:\n", f"base:\n  image: {ref}\n", 1)
    on_registry.write_text(text.replace("local/onnx-serve", "local/onnx-serve-on-registry"))
    shutil.copy(locked_example.with_suffix(".lock"), on_registry.with_suffix(".lock"))
    args = [
        "--spec",
        str(on_registry),
        "--dist",
        str(tmp_path / "dist2"),
        "--cache-dir",
        str(cache_dir),
    ]
    r = run_invoke("build-container", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    local_base = json.loads((dist / f"{spec.name}-{spec.version}.container.json").read_text())
    record = json.loads(
        (tmp_path / "dist2" / f"{spec.name}-{spec.version}.container.json").read_text()
    )
    assert record["stages"][0]["diff_id"] != local_base["stages"][0]["diff_id"]
    out = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", record["tag"], "--version"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and out.stdout.strip().endswith(spec.version), out.stderr

    gone = "127.0.0.1:9/nowhere@sha256:" + "0" * 64
    on_registry.write_text(text.replace(ref, gone))
    r = run_invoke("build-container", *args)
    assert r.returncode == 2 and "base.image" in r.stderr and "cannot pull" in r.stderr, r.stderr


def _tiny_image(content: bytes) -> str:
    """An image of one small file, by `docker import` (no build): its ID. Labelled as ours, so
    the session's cleanup removes it even if the test does not."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hello")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    r = subprocess.run(
        ["docker", "import", "--change", "LABEL io.imagebuild.test=push", "-"],
        input=buf.getvalue(),
        capture_output=True,
        check=True,
    )
    return r.stdout.decode().strip()


def _spec_and_record(tmp_path: Path, image_id: str) -> tuple[specmod.Spec, Path, Path]:
    """A private spec (its own repository name on the shared engine) and a dist whose container
    record names `image_id`, listed in SHA256SUMS as build-container leaves it."""
    path = copy_example(tmp_path / "ex")
    repo = f"local/imagebuild-push-{secrets.token_hex(4)}"
    path.write_text(path.read_text().replace("local/onnx-serve", repo))
    spec = specmod.load(path)
    dist = tmp_path / "dist"
    _record(dist, spec, image_id)
    return spec, path, dist


def _record(dist: Path, spec: specmod.Spec, image_id: str) -> None:
    """A container record naming `image_id` in `dist`, listed in SHA256SUMS."""
    dist.mkdir(parents=True)
    record = distnames.path(dist, spec, distnames.CONTAINER_RECORD)
    tag = f"{spec.repository}:{spec.version}"
    record.write_text(json.dumps({"tag": tag, "image_id": image_id.removeprefix("sha256:")}))
    checksums.record(dist, [record])


@pytest.mark.engine
def test_push_sends_the_recorded_image_even_when_the_tag_moved(
    registry: str, tmp_path: Path
) -> None:
    """The tag REPOSITORY:VERSION now names another image (a `docker tag`, another build):
    push sends the image dist/ recorded, says both IDs, and the registry serves that one."""
    client = docker.from_env()
    built, other = _tiny_image(b"built\n"), _tiny_image(b"moved tag\n")
    spec, path, dist = _spec_and_record(tmp_path, built)
    client.images.get(other).tag(spec.repository, spec.version)
    try:
        r = run_invoke("push", "--spec", str(path), "--dist", str(dist), "--registry", registry)
        assert r.returncode == 0, r.stderr
        assert f"now points to {other}, not the built {built}" in r.stderr
        record = json.loads(distnames.path(dist, spec, distnames.PUSH_RECORD).read_text())
        assert record["image_id"] == built and record["reference"] in r.stdout
        assert client.images.pull(record["reference"]).id == built
        # the vehicle tag is gone, the user's tag untouched
        assert client.images.get(f"{spec.repository}:{spec.version}").id == other
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get(f"{record['reference'].split('@')[0]}:{spec.version}")
    finally:
        for image in (built, other):
            client.images.remove(image, force=True)


def _loaded_image(content: bytes, arch: str, tmp_path: Path, lock: str = "") -> str:
    """An image of one small file whose config names `arch`, written by imagebuild's own image
    writer and `docker load`ed (`docker import --platform` is ignored by this engine): its ID.
    Labelled as ours, as `_tiny_image`'s."""
    from imagebuild.builders import image as img
    from imagebuild.builders.layers import Layer

    tar_path = tmp_path / f"{arch}.layer.tar"
    with tarfile.open(tar_path, "w") as tar:
        info = tarfile.TarInfo("hello")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    layer = Layer(tar_path, sha256_file(tar_path), tar_path.stat().st_size, 1)
    labels = {"io.imagebuild.test": "push"} | ({distnames.LOCK_LABEL: lock} if lock else {})
    cfg = img.ImageConfig([], [], {}, "/", "", labels, ["test layer"], 0, architecture=arch)
    config = cfg.render([layer])
    archive = tmp_path / f"{arch}.docker.tar"
    # Tagged (an untagged load would be gone with nothing naming it); removed by ID, tags too.
    tag = f"local/imagebuild-push-{arch}-{secrets.token_hex(4)}:x"
    image_id = img.docker_archive(archive, config, [layer], tag)
    subprocess.run(["docker", "load", "-i", str(archive)], capture_output=True, check=True)
    return f"sha256:{image_id}"


@pytest.mark.engine
def test_two_architectures_are_pushed_under_one_index(registry: str, tmp_path: Path) -> None:
    """A spec with base.architectures [amd64, arm64] and both images recorded (dist/ and
    dist/arm64/): each is pushed, then REPOSITORY:VERSION becomes an OCI image index of the two,
    by their digests; a pull of it on this amd64 host gets amd64's image, with --platform
    linux/arm64 arm64's. With arm64 not built, amd64 alone is pushed, as before, and said."""
    client = docker.from_env()
    amd, arm = _tiny_image(b"amd64\n"), _loaded_image(b"arm64\n", "arm64", tmp_path)
    made = [amd, arm]
    spec, path, dist = _spec_and_record(tmp_path, amd)
    path.write_text(
        path.read_text().replace(
            "  components: [main]\n", "  components: [main]\n  architectures: [amd64, arm64]\n"
        )
    )
    _record(dist / "arm64", spec, arm)
    args = ["push", "--spec", str(path), "--dist", str(dist), "--registry", registry]
    try:
        r = run_invoke(*args)
        assert r.returncode == 0, r.stderr
        record = json.loads(distnames.path(dist, spec, distnames.PUSH_RECORD).read_text())
        repo, _, index_digest = record["reference"].partition("@")
        assert set(record["platforms"]) == {"amd64", "arm64"} and record["image_id"] == amd
        assert f"pushed {record['reference']} (image index: amd64, arm64)" in r.stdout
        name = repo.partition("/")[2]
        got = requests.get(
            f"http://{registry}/v2/{name}/manifests/{spec.version}",
            headers={"Accept": platform_index.INDEX_TYPE},
            timeout=10,
        )
        assert got.headers["Content-Type"] == platform_index.INDEX_TYPE
        assert f"sha256:{hashlib.sha256(got.content).hexdigest()}" == index_digest
        entries = {m["platform"]["architecture"]: m for m in got.json()["manifests"]}
        assert list(entries) == ["amd64", "arm64"]
        for arch, entry in entries.items():
            assert record["platforms"][arch] == f"{repo}@{entry['digest']}"
        # Each pulled back into an engine without it (the index's digest names one local image
        # at a time): the config, and so the image ID, is the one built. (The untagged amd64
        # image went with its vehicle tag.)
        for image in (amd, arm):
            with contextlib.suppress(docker.errors.ImageNotFound):
                client.images.remove(image, force=True)
        assert client.images.pull(record["reference"]).id == amd
        client.images.remove(amd, force=True)
        assert client.images.pull(record["reference"], platform="linux/arm64").id == arm
        assert client.images.get(arm).attrs["Architecture"] == "arm64"
        assert client.images.pull(record["platforms"]["amd64"]).id == amd
        for vehicle in (f"{spec.version}-amd64", f"{spec.version}-arm64"):  # gone here
            with pytest.raises(docker.errors.ImageNotFound):
                client.images.get(f"{repo}:{vehicle}")
        # arm64 not built: amd64 pushed alone, by its own digest, and the missing one named.
        shutil.rmtree(dist / "arm64")
        r = run_invoke(*args)
        assert r.returncode == 0 and "arm64: no image built in" in r.stderr, r.stderr
        record = json.loads(distnames.path(dist, spec, distnames.PUSH_RECORD).read_text())
        assert record["platforms"] == {}
        assert record["reference"] == f"{repo}@{entries['amd64']['digest']}"
        # arm64 built from another lock than amd64 (a stale dist/arm64/): refused before any push.
        client.images.pull(record["reference"])  # amd64's, gone again with its vehicle tag
        made.append(_loaded_image(b"stale\n", "arm64", tmp_path, lock="0" * 64))
        stale = made[-1]
        _record(dist / "arm64", spec, stale)
        r = run_invoke(*args)
        assert r.returncode == 1 and "were built from different locks" in r.stderr, r.stderr
        assert "push: " + repo not in r.stderr  # nothing pushed
    finally:
        for image in made:
            with contextlib.suppress(docker.errors.ImageNotFound):
                client.images.remove(image, force=True)


def test_push_refuses_a_missing_or_edited_record(tmp_path: Path) -> None:
    """No engine reached: the record is checked first (missing, or not the bytes SHA256SUMS
    lists: exit 1 naming the file, nothing pushed, no push record written)."""
    spec, path, dist = _spec_and_record(tmp_path, "sha256:" + "ab" * 32)
    record = distnames.path(dist, spec, distnames.CONTAINER_RECORD)
    args = ["push", "--spec", str(path), "--dist", str(dist), "--registry", "127.0.0.1:9"]
    record.write_text(record.read_text().replace("ab", "cd", 1))
    r = run_invoke(*args)
    assert r.returncode == 1 and f"{record}: " in r.stderr and "sha256 differs" in r.stderr
    record.unlink()
    r = run_invoke(*args)
    assert r.returncode == 1 and f"{record}: no such file" in r.stderr, r.stderr
    assert "build-container" in r.stderr and "Traceback" not in r.stderr
    assert not distnames.path(dist, spec, distnames.PUSH_RECORD).exists()


def test_push_waits_for_a_build_into_the_same_dist(tmp_path: Path) -> None:
    """dist/ is one writer's at a time: a push started while a build holds dist/.lock waits,
    naming the holder, and goes on when it is released (here to find no record: exit 1)."""
    spec, path, dist = _spec_and_record(tmp_path, "sha256:" + "ab" * 32)
    distnames.path(dist, spec, distnames.CONTAINER_RECORD).unlink()
    held, release = threading.Event(), threading.Event()

    def build() -> None:
        with distlock.exclusive(dist, "build-container"):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=build)
    holder.start()
    assert held.wait(30)
    threading.Timer(1.5, release.set).start()
    r = run_invoke("push", "--spec", str(path), "--dist", str(dist), "--registry", "127.0.0.1:9")
    holder.join()
    assert (
        f"push: waiting for imagebuild build-container (pid {os.getpid()}), which is using "
        f"the dist folder {dist}" in r.stderr
    ), r.stderr
    assert r.returncode == 1 and "no such file" in r.stderr
