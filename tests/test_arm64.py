"""arm64 from the same spec, built here under qemu-user emulation (issue #30): a small spec with
`base.architectures: [amd64, arm64]` locked, fetched and built; arm64's image says arm64, runs
arm64's binaries, holds exactly its lock section's packages; a second build has nothing to do, and
the plan of both architectures reuses arm64's stages and not amd64's. ~2 min here (the Essential
set's maintainer scripts under qemu-user: 80 s of it)."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import docker
import pytest

from imagebuild import emulation, provenance
from imagebuild.lock.lockfile import read
from tests.conftest import run_invoke

TINY = """\
name: tiny-arch
version: 0.1.0
base:
  distro: debian
  suite: bookworm
  mirror: http://deb.debian.org/debian
  components: [main]
  architectures: [amd64, arm64]
  snapshot: null
packages: []
python: null
stacks: []
gpu: null
app:
  src: app
  dest: /srv/tiny
user: tiny
entrypoint: ["/usr/bin/dpkg", "--print-architecture"]
container:
  repository: local/imagebuild-tiny-arch
"""


def _oci_architecture(archive: Path) -> str:
    """The architecture the OCI archive's one image config names (index -> manifest -> config)."""
    with tarfile.open(archive) as tar:

        def blob(digest: str) -> dict:
            f = tar.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
            assert f is not None
            return dict(json.load(f))

        index = tar.extractfile("index.json")
        assert index is not None
        manifest = blob(json.load(index)["manifests"][0]["digest"])
        return str(blob(manifest["config"]["digest"])["architecture"])


@pytest.mark.network
@pytest.mark.engine
def test_arm64_is_built_under_emulation(tmp_path: Path, cache_dir: Path) -> None:
    if why := emulation.problem("arm64"):
        pytest.skip(f"arm64's binaries cannot run here: {why}")
    spec = tmp_path / "tiny" / "imagebuild.yaml"
    (spec.parent / "app").mkdir(parents=True)
    (spec.parent / "app" / "hello.txt").write_text("hello\n")
    spec.write_text(TINY)
    dist = tmp_path / "dist"
    common = ["--spec", str(spec), "--cache-dir", str(cache_dir), "--dist", str(dist)]
    for task in ("lock", "fetch"):
        r = run_invoke(task, *common[:4])
        assert r.returncode == 0, r.stderr
    lock = read(spec.with_suffix(".lock")).for_arch("arm64")

    r = run_invoke("build-container", *common, "--arch", "arm64")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "amd64: locked and fetched, not built" in r.stderr
    tag = "local/imagebuild-tiny-arch:0.1.0-arm64"
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("image "))
    assert line.split()[1] == tag
    image = docker.from_env().images.get(tag)
    assert image.id == line.split()[2] and image.attrs["Architecture"] == "arm64"
    # Its own binaries run (qemu-user through binfmt_misc): dpkg's compiled-in architecture.
    out = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", tag], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout == "arm64\n", out.stderr
    # Its outputs, under the host's names in dist/arm64/: the OCI archive's config says arm64,
    # the packages dpkg reports are exactly arm64's locked closure.
    arm = dist / "arm64"
    assert _oci_architecture(arm / "tiny-arch-0.1.0.oci.tar") == "arm64"
    rows = (arm / "tiny-arch-0.1.0.container.packages.txt").read_text().splitlines()
    debs = {ln.split("=", 2)[2] for ln in rows if ln.startswith("deb ")}
    assert debs == {p.sha256 for p in lock.shared}
    statement = provenance.read_statement(arm / "tiny-arch-0.1.0.container.intoto.jsonl")
    assert statement["predicate"]["buildDefinition"]["externalParameters"]["architecture"] == (
        "arm64"
    )
    assert not (dist / "tiny-arch-0.1.0.oci.tar").exists()  # amd64 was not asked for

    # arm64 again: nothing to do; amd64 (not built: every other container test builds the host's
    # architecture) planned beside it, from its own section, arm64's stages all reused.
    r = run_invoke("build-container", *common, "--arch", "arm64")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "build-container: nothing changed; " + tag in r.stderr
    assert docker.from_env().images.get(tag).id == image.id
    r = run_invoke("plan", *common)
    assert r.returncode == 0, r.stderr[-3000:]
    plans = {
        ln.split()[1]: ln.split()[3:] for ln in r.stdout.splitlines() if ln.startswith("container ")
    }
    layers = ["base", "os", "python", "stacks", "app"]
    assert plans[tag] == [f"{layer}:reuse" for layer in layers], r.stdout
    assert plans["local/imagebuild-tiny-arch:0.1.0"][-1] == "app:build", r.stdout
