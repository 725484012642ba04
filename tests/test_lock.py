"""Locks and the fetch cache, against the real Debian mirror and PyPI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from imagebuild import lock as locking
from imagebuild import spec as specmod
from imagebuild.builders.stages import STAGES
from imagebuild.cache import Cache, sha256_file
from imagebuild.project import Project
from tests.conftest import run_invoke, tree

pytestmark = pytest.mark.network


def test_lock_covers_spec_and_vm_sections(locked_example: Path) -> None:
    spec = specmod.load(locked_example)
    lk = Project(spec).lock
    shared = {p.name for p in lk.shared}
    assert set(spec.packages) <= shared and {"apt", "python3", "dpkg"} <= shared
    vm_only = {p.name for p in lk.vm}
    assert {"linux-image-cloud-amd64", "openssh-server"} <= vm_only and not vm_only & shared
    wanted = set(Project(spec).req.requirements)  # the example's lines are bare names
    assert wanted <= {w.name for w in lk.python}
    assert all(len(p.sha256) == 64 for p in [*lk.shared, *lk.vm, *lk.python])
    assert lk.source_date_epoch > 1_600_000_000


def test_lock_twice_is_byte_identical(
    locked_example: Path, cache_dir: Path, tmp_path: Path
) -> None:
    # A private copy: were PyPI to answer differently this time, the session's lock (which
    # every later build uses with what was fetched for it) must stay as it is.
    shutil.copytree(locked_example.parent, tmp_path, dirs_exist_ok=True)
    spec = tmp_path / locked_example.name
    path = spec.with_suffix(".lock")
    first = path.read_bytes()
    r = run_invoke("lock", "--spec", str(spec), "--cache-dir", str(cache_dir))
    assert r.returncode == 0, r.stderr
    assert path.read_bytes() == first
    assert "lock: unchanged" in r.stderr


def test_check_names_the_change(tmp_path: Path, locked_example: Path) -> None:
    spec = tmp_path / "imagebuild.yaml"
    shutil.copytree(locked_example.parent, tmp_path, dirs_exist_ok=True)
    assert run_invoke("lock", "--check", "--spec", str(spec)).returncode == 0
    spec.write_text(spec.read_text().replace("packages: [", "packages: [curl, "))
    r = run_invoke("lock", "--check", "--spec", str(spec))
    assert r.returncode == 3
    assert "packages: added 'curl'" in r.stderr
    # Every consumer of the lock refuses it the same way.
    for task in ("fetch", "build-container", "build-vm"):
        r = run_invoke(task, "--spec", str(spec), "--cache-dir", str(tmp_path / "c"))
        assert r.returncode == 3 and "packages: added 'curl'" in r.stderr, (task, r.stderr)
    (tmp_path / "requirements.in").write_text("numpy\n")
    r = run_invoke("lock", "--check", "--spec", str(spec))
    assert "python.requirements: removed 'onnx'" in r.stderr


def test_fetch_refuses_a_tampered_sha256(tmp_path: Path, locked_example: Path) -> None:
    shutil.copytree(locked_example.parent, tmp_path, dirs_exist_ok=True)
    lock_path = tmp_path / "imagebuild.lock"
    lk = locking.read(lock_path)
    victim = lk.shared[5]
    lock_path.write_text(lock_path.read_text().replace(victim.sha256, "0" * 64))
    cache = tmp_path / "fresh-cache"
    r = run_invoke("fetch", "--spec", str(tmp_path / "imagebuild.yaml"), "--cache-dir", str(cache))
    assert r.returncode == 1
    assert f"{victim.name}={victim.version}" in r.stderr and "refusing it" in r.stderr
    assert not Cache(cache).blob("0" * 64).exists()
    assert not [p for p in tree(cache) if "repos/" in p or ".dl-" in p]


def test_warm_fetch_needs_no_network(locked_example: Path, cache_dir: Path) -> None:
    # A fresh network namespace has no route anywhere: any request would fail the task.
    r = run_invoke(
        "fetch",
        "--spec",
        str(locked_example),
        "--cache-dir",
        str(cache_dir),
        prefix=("unshare", "-n"),
    )
    assert r.returncode == 0, r.stderr
    assert "fetched 0 (0.0 MB)" in r.stdout


def test_fetch_repairs_a_corrupt_cache_entry(
    tmp_path: Path, locked_example: Path, cache_dir: Path
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(cache_dir, cache, symlinks=True, copy_function=shutil.copy2)
    lk = locking.read(locked_example.with_suffix(".lock"))
    blob = Cache(cache).blob(lk.python[0].sha256)
    blob.write_bytes(b"corrupted")
    r = run_invoke("fetch", "--spec", str(locked_example), "--cache-dir", str(cache))
    assert r.returncode == 0, r.stderr
    assert "is corrupt" in r.stderr and "fetched 1" in r.stdout
    assert sha256_file(blob) == lk.python[0].sha256


def test_repos_and_wheelhouse_hold_exactly_the_lock(locked_example: Path, cache_dir: Path) -> None:
    lk = locking.read(locked_example.with_suffix(".lock"))
    cache = Cache(cache_dir)
    repo = cache.dir("repos", lk.section_digest("shared"))
    stanzas = (repo / "dists/bookworm/main/binary-amd64/Packages").read_text().strip().split("\n\n")
    got = {
        (s.split("Package: ")[1].split("\n")[0], s.split("SHA256: ")[1].split("\n")[0])
        for s in stanzas
    }
    assert got == {(p.name, p.sha256) for p in lk.shared}
    wh = cache.dir("wheelhouses", lk.section_digest("python"))
    # One requirements file per installing role: the spec's own (python_env), then each stack's.
    groups = {w.group for w in lk.python}
    assert groups == {"python", "onnxruntime"}
    for group in groups:
        name = "requirements.txt" if group == "python" else f"requirements-{group}.txt"
        reqs = (wh / name).read_text().splitlines()
        want = [f"{w.name}=={w.version} --hash=sha256:{w.sha256}" for w in lk.wheels(group)]
        assert reqs == want
    assert "onnxruntime" in {w.name for w in lk.wheels("onnxruntime")}
    assert "numpy" in {w.name for w in lk.wheels("python")}  # the spec's own, not the stack's


def test_plan_is_a_dry_run(locked_example: Path, cache_dir: Path) -> None:
    before = tree(cache_dir), tree(locked_example.parent)
    r = run_invoke("plan", "--spec", str(locked_example), "--cache-dir", str(cache_dir))
    assert r.returncode == 0, r.stderr
    lk = locking.read(locked_example.with_suffix(".lock"))
    assert re.search(rf"os shared\s+{len(lk.shared)} items", r.stdout), r.stdout
    assert f"cached {len(lk.python)}/{len(lk.python)}" in r.stdout
    states = " ".join(rf"{n}:(reuse|build)" for n in STAGES)
    assert re.search(rf"container \S+  layers {states}\n", r.stdout), r.stdout
    assert re.search(r"vm .* base disk (reuse|build); (nothing to do|packer build)\n", r.stdout)
    assert (tree(cache_dir), tree(locked_example.parent)) == before


def test_lockfile_is_diff_friendly(locked_example: Path) -> None:
    text = locked_example.with_suffix(".lock").read_text()
    data = json.loads(text)
    pkg_lines = [ln for ln in text.splitlines() if ln.startswith('    {"arch"')]
    assert len(pkg_lines) == len(data["os_shared"]) + len(data["os_vm_only"])
    names = [p["name"] for p in data["os_shared"]]
    assert names == sorted(names)
