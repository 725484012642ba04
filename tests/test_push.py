"""push against a real registry (Debian's docker-registry on 127.0.0.1), pulled back by digest."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from imagebuild import spec as specmod
from tests.conftest import copy_example, run_invoke, serve_registry

pytestmark = [pytest.mark.network, pytest.mark.engine]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    with serve_registry(tmp_path) as host:
        yield host


def test_push_then_pull_by_digest(registry: str, locked_example: Path, cache_dir: Path,
                                  tmp_path: Path) -> None:  # fmt: skip
    dist = tmp_path / "dist"
    common = ["--spec", str(locked_example), "--dist", str(dist)]
    r = run_invoke("build-container", *common, "--cache-dir", str(cache_dir))
    assert r.returncode == 0, r.stderr
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


def test_push_without_registry_names_the_field(locked_example: Path, tmp_path: Path) -> None:
    r = run_invoke("push", "--spec", str(locked_example), "--dist", str(tmp_path))
    assert r.returncode == 2  # a spec problem, found late: the same exit as at parse time
    assert "container.registry: not set" in r.stderr and "--registry" in r.stderr


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
    args = ["--spec", str(on_registry), "--dist", str(tmp_path / "dist2"),
            "--cache-dir", str(cache_dir)]  # fmt: skip
    r = run_invoke("build-container", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    local_base = json.loads((dist / f"{spec.name}-{spec.version}.container.json").read_text())
    record = json.loads((tmp_path / "dist2" / f"{spec.name}-{spec.version}.container.json")
                        .read_text())  # fmt: skip
    assert record["stages"][0]["diff_id"] != local_base["stages"][0]["diff_id"]
    out = subprocess.run(["docker", "run", "--rm", "--network", "none", record["tag"],
                          "--version"], capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip().endswith(spec.version), out.stderr

    gone = "127.0.0.1:9/nowhere@sha256:" + "0" * 64
    on_registry.write_text(text.replace(ref, gone))
    r = run_invoke("build-container", *args)
    assert r.returncode == 2 and "base.image" in r.stderr and "cannot pull" in r.stderr, r.stderr
