"""build-container against the real Docker engine: runs, layers, caching, reproducibility,
failure hygiene. Expected values come from the spec and the lock."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import docker
import docker.errors
import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL
from securesystemslib.dsse import Envelope

from imagebuild import checksums, inventory, leftovers, provenance, signing
from imagebuild import lock as locking
from imagebuild import spec as specmod
from imagebuild.builders.stages import STAGES
from imagebuild.cache import Cache
from imagebuild.engine import local_overlay
from imagebuild.verify.items import WRAPPER
from tests.conftest import (
    OSV,
    TEMPLATE_RAN,
    TEMPLATED_ENV,
    changed,
    keys_of,
    osv_export,
    run_invoke,
    stamps,
    tree,
)

pytestmark = [pytest.mark.network, pytest.mark.engine]


def build(spec: Path, cache: Path, dist: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_invoke(
        "build-container",
        "--spec",
        str(spec),
        "--cache-dir",
        str(cache),
        "--dist",
        str(dist),
        *extra,
    )


def inspect(ref: str) -> dict:
    return docker.from_env().api.inspect_image(ref)


def image_id(stdout: str) -> str:
    """The ID the task printed (`image REPO:TAG sha256:...`)."""
    return next(ln.split()[2] for ln in stdout.splitlines() if ln.startswith("image "))


def containers() -> set[str]:
    return {c.id for c in docker.from_env().containers.list(all=True)}


@pytest.fixture(scope="module")
def built(
    locked_example: Path, cache_dir: Path, sign_key: Path, tmp_path_factory: pytest.TempPathFactory
):
    dist = tmp_path_factory.mktemp("dist")
    r = build(locked_example, cache_dir, dist, "--sign-key", str(sign_key))
    assert r.returncode == 0, r.stderr
    spec = specmod.load(locked_example)
    return spec, dist, r


def test_image_runs_its_entrypoint(built) -> None:
    spec, _, _ = built
    ref = f"{spec.repository}:{spec.version}"
    out = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", ref, "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{spec.name} {spec.version}"
    check = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", ref, "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(check.stdout)["status"] == "ok", check.stderr


def test_metadata_from_spec(built, locked_example: Path) -> None:
    spec, _, _ = built
    meta = inspect(f"{spec.repository}:{spec.version}")
    cfg = meta["Config"]
    assert cfg["User"] == spec.user != "root"
    assert cfg["Entrypoint"] == spec.entrypoint and cfg["Cmd"] == spec.cmd
    assert cfg["WorkingDir"] == spec.app.dest
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert all(env[k] == v for k, v in spec.runtime_env.items())
    # Templated values as written, in the config and in the wrapper (what the VM's unit runs);
    # Ansible ran nothing on this host.
    wrapper = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "cat",
            f"{spec.repository}:{spec.version}",
            WRAPPER,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for key, value in TEMPLATED_ENV.items():
        assert env[key] == value and f"export {key}={shlex.quote(value)}\n" in wrapper
    assert not TEMPLATE_RAN.exists()
    lk = locking.read(locked_example.with_suffix(".lock"))
    assert cfg["Labels"]["io.imagebuild.lock.sha256"] == lk.digest
    assert cfg["Labels"]["org.opencontainers.image.version"] == spec.version
    assert len(meta["RootFS"]["Layers"]) == len(STAGES)
    history = docker.from_env().api.history(f"{spec.repository}:{spec.version}")
    stages = [h["CreatedBy"].split()[2].rstrip(":") for h in reversed(history)]
    assert stages == list(STAGES)


def test_package_manifest_matches_lock(built, locked_example: Path) -> None:
    spec, dist, _ = built
    lk = locking.read(locked_example.with_suffix(".lock"))
    lines = (dist / f"{spec.name}-{spec.version}.container.packages.txt").read_text().split("\n")
    debs = {ln.split()[1] for ln in lines if ln.startswith("deb ")}
    assert debs == {f"{p.name}={p.version}={p.sha256}" for p in lk.shared}
    py = {ln.split()[1] for ln in lines if ln.startswith("python ")}
    assert {f"{w.name}={w.version}={w.sha256}" for w in lk.python} <= py
    text = (dist / f"{spec.name}-{spec.version}.container.sbom.cdx.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    sbom = json.loads(text)
    assert len(sbom["components"]) == len(lines) - 1
    # every locked deb and wheel (and only those) carries the sha256 it was installed from
    hashed = {
        f"{'deb' if p.type == 'deb' else 'python'} {p.name}={p.version}={c['hashes'][0]['content']}"
        for c in sbom["components"]
        if (p := PackageURL.from_string(c["purl"])) and c.get("hashes")
    }
    assert hashed == {ln for ln in lines if ln and not ln.endswith(inventory.FLOATING)}
    oci = json.loads((dist / f"{spec.name}-{spec.version}.container.json").read_text())
    digest = oci["manifest_digest"].removeprefix("sha256:")
    assert sbom["metadata"]["component"]["hashes"] == [{"alg": "SHA-256", "content": digest}]


def test_oci_archive_is_readable_by_skopeo(built) -> None:
    spec, dist, r = built
    archive = dist / f"{spec.name}-{spec.version}.oci.tar"
    out = subprocess.run(
        ["skopeo", "inspect", f"oci-archive:{archive}"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    image_id = inspect(f"{spec.repository}:{spec.version}")["Id"]
    assert len(info["Layers"]) == len(STAGES)
    assert image_id.split(":")[1] in r.stdout


def test_noop_rebuild_touches_no_container(
    built, locked_example: Path, cache_dir: Path, sign_key: Path
) -> None:
    """Nothing changed: no container, no file written in dist or in the stage cache, the same
    image. Nothing changed but the key: the same statement signed again, nothing else written."""
    spec, dist, first = built
    before, files = containers(), stamps(dist, cache_dir / "stages")
    r = build(locked_example, cache_dir, dist, "--sign-key", str(sign_key))
    assert r.returncode == 0, r.stderr
    assert changed(files, stamps(dist, cache_dir / "stages")) == set()
    assert image_id(r.stdout) == image_id(first.stdout)
    assert containers() == before
    envelope = dist / f"{spec.name}-{spec.version}.container.intoto.jsonl"
    signed = envelope.read_bytes()
    r = build(locked_example, cache_dir, dist)  # no key: the same statement, unsigned
    assert r.returncode == 0 and "nothing changed" in r.stderr, r.stderr
    assert changed(files, stamps(dist, cache_dir / "stages")) == {
        str(envelope),
        str(dist / "SHA256SUMS"),
    }
    unsigned = json.loads(envelope.read_text())
    assert unsigned["signatures"] == [] and unsigned["payload"] == json.loads(signed)["payload"]
    r = build(locked_example, cache_dir, dist, "--sign-key", str(sign_key))
    assert r.returncode == 0 and envelope.read_bytes() == signed  # ed25519: deterministic
    assert containers() == before
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=dist).returncode == 0


def test_a_build_with_scan_gates_first_then_writes_the_findings_beside_its_image(
    built, locked_example: Path, cache_dir: Path, sign_key: Path, tmp_path: Path
) -> None:
    """--scan with --fail-on low: apt's unfixed advisory stops the build before anything runs.
    With --fail-on medium it builds (here: nothing changed) and writes the findings beside the
    image, the statement signed, about the image's own subjects, listed in SHA256SUMS."""
    spec, dist, _ = built
    db = osv_export(OSV / "debian", tmp_path / "debian-all.zip")
    scan = ["--scan", str(db), "--max-db-age", "0"]
    r = build(locked_example, cache_dir, dist, *scan, "--fail-on", "low")
    assert r.returncode == 1, r.stderr
    assert "1 findings at or above low (--fail-on): DEBIAN-CVE-2011-3374 (apt 2.6.1)" in r.stderr
    assert "build-container: verify cache" not in r.stderr  # before anything ran
    stem = f"{spec.name}-{spec.version}"
    att = dist / f"{stem}.scan.intoto.jsonl"
    assert not att.exists()
    r = build(
        locked_example, cache_dir, dist, *scan, "--fail-on", "medium", "--sign-key", str(sign_key)
    )
    assert r.returncode == 0 and "nothing changed" in r.stderr, r.stderr
    signer = signing.load(str(sign_key))
    assert signer is not None
    Envelope.from_dict(json.loads(att.read_text())).verify([signer.public_key], 1)
    about = provenance.read_statement(att)["subject"]
    assert about == provenance.read_statement(dist / f"{stem}.container.intoto.jsonl")["subject"]
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=dist).returncode == 0


def test_the_provenance_names_the_image_and_verifies_with_the_key(built, sign_key: Path) -> None:
    spec, dist, _ = built
    stem = f"{spec.name}-{spec.version}"
    env = json.loads((dist / f"{stem}.container.intoto.jsonl").read_text())
    signer = signing.load(str(sign_key))
    assert signer is not None
    Envelope.from_dict(env).verify([signer.public_key], 1)
    stmt = provenance.read_statement(dist / f"{stem}.container.intoto.jsonl")
    record = json.loads((dist / f"{stem}.container.json").read_text())
    sums = checksums.read(dist)
    assert {s["name"]: s["digest"]["sha256"] for s in stmt["subject"]} == {
        f"{stem}.oci.tar": sums[f"{stem}.oci.tar"],
        f"{spec.repository}:{spec.version}": record["manifest_digest"].removeprefix("sha256:"),
    }
    deps = stmt["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert deps[0]["name"] == "base layer"
    assert (
        "sha256:" + deps[0]["digest"]["sha256"]
        == inspect(record["image_id"])["RootFS"]["Layers"][0]
    )


def inventory_containers(since: int) -> int:
    """Inventory containers the engine created from `since` (whole seconds) until now."""
    events = docker.from_env().events(
        since=since,
        until=int(time.time()) + 1,
        filters={"type": "container", "event": "create", "label": "io.imagebuild.inventory=1"},
        decode=True,
    )
    return sum(1 for _ in events)


def test_app_change_rebuilds_only_the_app_layer(built, tmp_path: Path, cache_dir: Path) -> None:
    """Only the app layer is made again; the packages found below it are the cold build's (no
    inventory container: the app layer only adds the app's files). An app that adds Python
    distribution metadata does change what is installed: the inventory runs and finds it."""
    spec, dist, _ = built
    shutil.copytree(spec.base_dir, tmp_path / "p")
    spec_path = tmp_path / "p" / spec.path.name
    (tmp_path / "p" / spec.app.src / "app" / "extra.py").write_text("# touched\n")
    before_ctr, stages = containers(), set(os.listdir(cache_dir / "stages"))
    old = inspect(f"{spec.repository}:{spec.version}")["RootFS"]["Layers"]
    since = int(time.time()) + 1
    time.sleep(since - time.time())  # the events API counts in whole seconds
    r = build(spec_path, cache_dir, tmp_path / "dist")
    assert r.returncode == 0, r.stderr
    new = inspect(image_id(r.stdout))["RootFS"]["Layers"]
    assert old[:-1] == new[:-1] and old[-1] != new[-1]
    # One stage entry made: the app's, under the new app key.
    assert set(os.listdir(cache_dir / "stages")) - stages == {keys_of(spec_path).stages["app"]}
    assert containers() == before_ctr  # stage and inventory containers removed
    packages = f"{spec.name}-{spec.version}.container.packages.txt"
    assert inventory_containers(since) == 0
    assert (tmp_path / "dist" / packages).read_text() == (dist / packages).read_text()
    sums = tmp_path / "dist"
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=sums).returncode == 0
    meta = tmp_path / "p" / spec.app.src / "extra-1.0.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: extra\nVersion: 1.0\n")
    # This time the engine's storage is hidden from the build (as where it runs in a container
    # given the engine's socket): its stage container's changes are read through the engine.
    hide = 'mount -t tmpfs none /var/lib/docker && exec "$0" "$@"'
    r = run_invoke(
        "build-container",
        "--spec",
        str(spec_path),
        "--cache-dir",
        str(cache_dir),
        "--dist",
        str(tmp_path / "dist"),
        prefix=("unshare", "-m", "sh", "-c", hide),
    )
    assert r.returncode == 0, r.stderr
    assert inventory_containers(since) == 1
    assert "python extra=1.0" in (tmp_path / "dist" / packages).read_text()


def _hostile_caller() -> tuple[dict[str, str], tuple[str, ...]]:
    """Another caller's environment (env, command prefix): mmdebstrap's chroot runs the
    packages' maintainer scripts (python3's byte-compilation among them) in what it is given,
    and PYTHONDONTWRITEBYTECODE there once made another base layer; a hash seed would reorder
    any set this process wrote in order. The opposite of the suite's."""
    flip = (
        ("env", "-u", "PYTHONDONTWRITEBYTECODE")
        if os.environ.get("PYTHONDONTWRITEBYTECODE")
        else ()
    )
    hostile = {"PYTHONHASHSEED": "7", "TZ": "Pacific/Chatham"}
    if not flip:
        hostile["PYTHONDONTWRITEBYTECODE"] = "1"
    return hostile, flip


def test_corrupt_deb_in_cache_is_refused(
    tmp_path: Path, locked_example: Path, cache_dir: Path
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(cache_dir, cache, ignore=shutil.ignore_patterns("stages", "disks", "logs"))
    lk = locking.read(locked_example.with_suffix(".lock"))
    victim = lk.shared[3]
    (cache / "blobs" / "sha256" / victim.sha256).write_bytes(b"tampered")
    before, dist = containers(), tmp_path / "dist"
    r = build(locked_example, cache, dist)
    assert r.returncode == 1
    assert "run `invoke fetch`" in r.stderr and f"{victim.name}={victim.version}" in r.stderr
    assert containers() == before and tree(dist) == set()


def test_engine_down_is_a_clear_error(
    tmp_path: Path, locked_example: Path, cache_dir: Path
) -> None:
    dist = tmp_path / "dist"
    r = run_invoke(
        "build-container",
        "--spec",
        str(locked_example),
        "--cache-dir",
        str(cache_dir),
        "--dist",
        str(dist),
        env={"DOCKER_HOST": f"unix://{tmp_path}/no-such.sock"},
    )
    assert r.returncode == 1
    assert "Docker engine is not reachable" in r.stderr and "Traceback" not in r.stderr
    assert tree(dist) == set()


def stage_images() -> list[str]:
    return [t for i in docker.from_env().images.list() for t in i.tags if "imagebuild-stage/" in t]


def ansible_on(cache_dir: Path) -> list[str]:
    """Ansible's processes (ansible-playbook, Mitogen's multiplexer) naming this cache."""
    return [cmd for _, cmd in leftovers.processes() if "ansible" in cmd and str(cache_dir) in cmd]


def mmdebstrap_mounts() -> list[str]:
    return [ln for ln in Path("/proc/mounts").read_text().splitlines() if "/mmdebstrap." in ln]


def _inside_a_stage(
    built, tmp_path: Path, cache_dir: Path, dist: Path
) -> tuple[subprocess.Popen[str], Path]:
    """A build-container started on a copy of the example whose app stage runs a 60 s build
    step; returns once that stage's container is up and Ansible is at the step."""
    spec, _, _ = built
    shutil.copytree(spec.base_dir, tmp_path / "p")
    (tmp_path / "p" / spec.app.src / "app" / "stage.py").write_text("# new app stage key\n")
    spec_file = tmp_path / "p" / spec.path.name
    text = spec_file.read_text()
    spec_file.write_text(re.sub(r"(?m)^(  build: ).*$", r"\1[/bin/sleep, '60']", text, count=1))
    assert spec_file.read_text() != text
    before = containers()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("invoke")),
            "build-container",
            "--spec",
            str(spec_file),
            "--cache-dir",
            str(cache_dir),
            "--dist",
            str(dist),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "build-container: app: key" in line:
            deadline = time.monotonic() + 60
            while containers() == before and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2)  # inside the stage: container up, Ansible at the build step
            break
    return proc, spec_file


@pytest.mark.parametrize(
    ("sig", "code", "says"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
    ids=["SIGINT", "SIGTERM"],
)
def test_ctrl_c_during_a_stage_leaves_nothing(
    built, tmp_path: Path, cache_dir: Path, sig: int, code: int, says: str
) -> None:
    """SIGINT (Ctrl-C) or SIGTERM (a CI cancel) while an Ansible stage runs in its container:
    exit 130/143, no container, no stage image, nothing in dist, no half-made cache entry."""
    dist, before = tmp_path / "dist", containers()
    proc, _ = _inside_a_stage(built, tmp_path, cache_dir, dist)
    assert ansible_on(cache_dir), "the stage's Ansible should be running"
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == code, err
    assert says in err
    assert containers() == before
    # Mitogen's multiplexer has a session of its own: no signal to a group reaches it
    assert ansible_on(cache_dir) == []
    assert stage_images() == []
    assert tree(dist) == set()
    assert not list(cache_dir.glob("imagebuild-*")) and not list(cache_dir.glob("stages/.*"))


def test_exported_blobs_build_the_same_image_without_the_network_two_at_once(
    built, locked_example: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """`fetch --export` then `--import` into an empty cache with every download blocked (proxy
    on a closed port): nothing is fetched. A CI cancel during the cold build's mmdebstrap leaves
    nothing mounted. Then two cold builds of the spec started together on that cache, in another
    caller's environment, the image removed from the engine: one waits for the other (saying
    so), both succeed with the session build's image ID, nothing corrupt in the cache. The one
    that builds reads its stages' changes through the engine's API (`docker diff`: what a remote
    engine gets): the same bits as the upper dirs the session's first, cold build read."""
    spec, _, first_run = built
    # else the session's build would have taken the API path and the upper dirs' gone untested
    assert local_overlay(docker.from_env()), "this engine's upper dirs are not readable"
    assert "stage changes read from its overlay upper dirs" in first_run.stderr
    archive = tmp_path / "blobs.tar"
    args = ["--spec", str(locked_example)]
    r = run_invoke("fetch", *args, "--cache-dir", str(cache_dir), "--export", str(archive))
    assert r.returncode == 0 and archive.is_file(), r.stderr
    blocked = {
        k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")
    }
    cache = str(tmp_path / "cache")
    r = run_invoke("fetch", *args, "--cache-dir", cache, "--import", str(archive), env=blocked)
    assert r.returncode == 0, r.stderr
    assert "fetched 0 (0.0 MB)" in r.stdout and "imported " in r.stdout
    # the image must not be in the engine for the cold build (another test may have removed it)
    ref = f"{spec.repository}:{spec.version}"
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker.from_env().images.remove(ref, force=True)
    invoke = str(Path(sys.executable).with_name("invoke"))
    build = [invoke, "build-container", *args, "--cache-dir", cache]
    # First a CI cancel (SIGTERM) while mmdebstrap has its chroot's /proc, /sys, /dev mounted:
    # it gets to unmount them and remove its temp folder before the build exits.
    temp_before = set(Path("/tmp").glob("mmdebstrap.*"))
    proc = subprocess.Popen(
        [*build, "--dist", str(tmp_path / "d")],
        env={**os.environ, **blocked},
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not mmdebstrap_mounts() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert mmdebstrap_mounts(), "mmdebstrap never mounted its chroot"
    proc.send_signal(signal.SIGTERM)
    assert proc.communicate(timeout=120)[1] and proc.returncode == 143
    assert mmdebstrap_mounts() == [] and set(Path("/tmp").glob("mmdebstrap.*")) == temp_before
    hostile, flip = _hostile_caller()
    env = {**os.environ, **blocked, "IMAGEBUILD_ENGINE_DIFF": "1", **hostile}
    procs = [
        subprocess.Popen(
            [*flip, *build, "--dist", str(tmp_path / f"dist{n}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n in (1, 2)
    ]
    outs = [p.communicate(timeout=1200) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    first = image_id(first_run.stdout)
    assert image_id(outs[0][0]) == image_id(outs[1][0]) == first == inspect(ref)["Id"]
    assert any("waiting for imagebuild build-container (pid" in err for _, err in outs)
    # the one that built said which path it took; neither read the upper dirs
    assert any("stage changes read through its API" in err for _, err in outs), outs[0][1]
    assert not any("overlay upper dirs" in err for _, err in outs)


def test_import_refuses_bytes_that_are_not_what_the_lock_says(
    locked_example: Path, tmp_path: Path
) -> None:
    lk = locking.read(locked_example.with_suffix(".lock"))
    archive = tmp_path / "bad.tar"
    bad = tmp_path / "x"
    # the row's size, so the archive gets as far as the hash (a wrong size is refused before
    # a byte is extracted: tests/test_fetch_limits.py)
    bad.write_bytes(b"not the package".ljust(lk.shared[0].size, b"."))
    with tarfile.open(archive, "w") as tar:
        tar.add(bad, f"blobs/sha256/{lk.shared[0].sha256}")
        tar.add(bad, "../../outside")  # a name the lock does not have: never extracted
    cache = tmp_path / "cache"
    r = run_invoke(
        "fetch", "--spec", str(locked_example), "--cache-dir", str(cache), "--import", str(archive)
    )
    assert r.returncode == 1 and "does not hash to its name" in r.stderr, r.stderr
    assert (
        not (tmp_path / "outside").exists() and not Cache(cache).blob(lk.shared[0].sha256).exists()
    )


def test_leftovers_of_a_killed_build_are_removed_by_the_next_run(
    built, tmp_path: Path, cache_dir: Path
) -> None:
    """kill -9 inside a stage runs no clean-up: its container, scratch folder and Ansible's
    multiplexer stay. The next task on the same cache (here a warm fetch) removes them and says
    so."""
    before = containers()
    proc, spec_file = _inside_a_stage(built, tmp_path, cache_dir, tmp_path / "dist")
    proc.kill()
    proc.wait(timeout=60)
    left = containers() - before
    assert left and list(cache_dir.glob("imagebuild-*")), "kill -9 should have left something"
    assert stage_images(), "the stage's image should be left in the engine"
    r = run_invoke("fetch", "--spec", str(spec_file), "--cache-dir", str(cache_dir))
    assert r.returncode == 0, r.stderr
    assert "removed what a killed build left on this cache" in r.stderr
    assert not (containers() & left) and not list(cache_dir.glob("imagebuild-*"))
    assert ansible_on(cache_dir) == [] and stage_images() == []


def test_tampered_cache_entries_are_found_before_they_reach_an_image(
    built, tmp_path: Path, locked_example: Path, cache_dir: Path
) -> None:
    """Derived entries are checked against their seals (and repos against the lock): a pool
    .deb swapped for other bytes (a new file, so the blob store's own check cannot see it)
    stops the build with what to do; a stage layer changed in place is made again, giving the
    very image it should have."""
    from imagebuild.fetch import source_dirs

    spec, _, first = built
    lk = locking.read(locked_example.with_suffix(".lock"))
    cache = tmp_path / "cache"
    shutil.copytree(cache_dir, cache, ignore=shutil.ignore_patterns("disks", "logs"))
    repo = source_dirs(Cache(cache), lk)[0]
    victim, other = lk.shared[3], lk.shared[4]
    pool = repo / "pool" / victim.basename
    pool.unlink()
    shutil.copy(repo / "pool" / other.basename, pool)
    r = build(locked_example, cache, tmp_path / "dist")
    assert r.returncode == 1 and tree(tmp_path / "dist") == set()
    assert f"seals pool/{victim.basename}" not in r.stderr  # the seal is intact, the file not
    assert f"has pool/{victim.basename} changed" in r.stderr and "run `invoke fetch`" in r.stderr
    r = run_invoke("fetch", "--spec", str(locked_example), "--cache-dir", str(cache))
    assert r.returncode == 0 and "removing it, it is made again" in r.stderr, r.stderr

    keys = keys_of(locked_example).stages
    app = Cache(cache).dir("stages", keys["app"]) / "layer.tar"
    data = bytearray(app.read_bytes())
    data[-1030] ^= 0xFF  # inside the last member or its padding: same size, other bytes
    app.write_bytes(bytes(data))
    before = stamps(cache / "stages")
    r = build(locked_example, cache, tmp_path / "dist")
    assert r.returncode == 0, r.stderr
    assert "has layer.tar changed since it was sealed" in r.stderr
    remade = {
        Path(p).relative_to(cache / "stages").parts[0]
        for p in changed(before, stamps(cache / "stages"))
    }
    assert remade == {keys["app"]}
    assert image_id(r.stdout) == image_id(first.stdout)
