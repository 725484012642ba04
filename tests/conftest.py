"""Shared fixtures. Real engines only: tests that need the network or an engine are marked."""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from imagebuild.keys import Keys

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "onnx-serve"


# What a full run adds to the disk (VM disks and formats, OCI archives, engine images, wheel
# caches; pytest keeps its temp folders, so the end is the peak): `/` grew 53.6 -> 80.5 GB
# during the CI run of 51d02f2 (sampled every 5 s), before the VirtualBox and VMware boxes.
NEEDS_GB = 32


def pytest_collection_finish(session: pytest.Session) -> None:
    # One clear message instead of dozens of ENOSPC errors half-way through the VM builds;
    # only when engine tests are selected (the unit tests need next to nothing).
    if session.config.option.collectonly or not any(
        item.get_closest_marker("engine") for item in session.items
    ):
        return
    free = min(shutil.disk_usage(p).free for p in (tempfile.gettempdir(), "/var/lib"))
    if free < NEEDS_GB * 1e9:
        pytest.exit(
            f"only {free / 1e9:.1f} GB free on {tempfile.gettempdir()} / /var/lib (docker, "
            f"libvirt); a full run needs about {NEEDS_GB} GB at its peak",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # "No tests collected" (5) must fail CI just like a failure does.
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session", autouse=True)
def _engine_images_left_as_found() -> Iterator[None]:
    """Remove the images this run made (imagebuild's labels, new since the start). Runs share a
    machine (and its disk) with the runs before and after them; each build leaves ~0.5-1 GB of
    images, and CI once failed on a full disk. Anyone else's images are left alone."""
    try:
        import docker

        client = docker.from_env()
        before = {image.id for image in client.images.list(all=True)}
    except Exception:  # no engine: the engine tests say so themselves
        yield
        return
    yield
    for image in client.images.list(all=True):
        ours = any(k.startswith("io.imagebuild") for k in image.labels or {})
        if image.id not in before and ours:
            # APIError: already gone with a parent, or still used by a container
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(image.id, force=True)


def run_invoke(
    *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run a task exactly as a user would, from the project root."""
    invoke = str(Path(sys.executable).with_name("invoke"))
    return subprocess.run(
        [*prefix, invoke, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=1800,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(argv: list[str], port: int) -> Iterator[None]:
    """`argv`, a server on 127.0.0.1:`port`, running until the block ends (ready: it accepts)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(150):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"{argv[0]} {' '.join(argv[1:3])}: no answer on port {port} in 30 s")
        yield
    finally:
        proc.terminate()
        proc.wait()


@contextlib.contextmanager
def serve_registry(root: Path) -> Iterator[str]:
    """A real registry (Debian's docker-registry) on 127.0.0.1, storing under `root/store`;
    yields its HOST:PORT and stops it on exit."""
    port = free_port()
    config = root / "registry.yml"
    config.write_text(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: "
        f"{root / 'store'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    with serving(["docker-registry", "serve", str(config)], port):
        yield f"127.0.0.1:{port}"


@contextlib.contextmanager
def serve_gcs(bucket: str) -> Iterator[dict[str, str]]:
    """A local Cloud Storage API (gcp-storage-emulator, in memory) on 127.0.0.1 holding `bucket`;
    yields the environment that points Google's client at it (and at nothing else)."""
    port = free_port()
    argv = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1"]
    argv += [f"--port={port}", "--in-memory", f"--default-bucket={bucket}"]
    with serving(argv, port):
        yield {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"}


@contextlib.contextmanager
def http_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A local HTTP server on 127.0.0.1 (its own thread) answering with `handler`; yields its
    base URL and stops it on exit."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.exists() else set()


def stamps(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file under `roots` with its mtime (ns) and size: what a task wrote, or left alone,
    shows in a comparison, whatever the task printed. Hidden entries (a build's staging or
    scratch folder, a lock file) are not outputs and are left out."""
    return {
        str(p): (p.stat().st_mtime_ns, p.stat().st_size)
        for root in roots
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


def changed(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> set[str]:
    """Files written, rewritten or removed between two `stamps`."""
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def keys_of(spec_path: Path) -> Keys:
    """Every cache key of a spec with its lock beside it, as a build computes them."""
    from imagebuild import keys, lock, requested, resolved, spec

    s = spec.load(spec_path)
    return keys.compute(
        resolved.resolve(requested.of(s), lock.read(spec_path.with_suffix(".lock")))
    )


def copy_example(dest: Path) -> Path:
    """A private copy of the bundled example, so tests never write into the repo."""
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("*.lock", "__pycache__"))
    return dest / "imagebuild.yaml"


# Env values a template engine would act on, carried by the session's example into every build
# of it: Ansible must pass them through as data (the pipe must never run on this host, HOME's
# lookup must never be read), and both artifacts must ship them byte for byte.
TEMPLATE_RAN = Path("/tmp/imagebuild-template-ran")
TEMPLATED_ENV = {
    "LOG_FORMAT": "{{.Time}} {{ .Level }}",
    "NOT_RUN": f"{{{{ lookup('pipe', 'touch {TEMPLATE_RAN}') }}}}",
    "NOT_READ": "{{ lookup('env', 'HOME') }}{% if true %}yes{% endif %}{# x #}",
}


def add_templated_env(spec: Path) -> None:
    text = spec.read_text()
    lines = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in TEMPLATED_ENV.items())
    assert "\nenv:\n" in text
    spec.write_text(text.replace("\nenv:\n", "\nenv:\n" + lines, 1))


@pytest.fixture(scope="session")
def sign_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ed25519 private key (PEM, PKCS#8) the tests sign provenance with, as a user's would be."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    path = tmp_path_factory.mktemp("key") / "signing.pem"
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def locked_example(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """The example, locked and fetched once per session (real mirror, real PyPI)."""
    spec = copy_example(tmp_path_factory.mktemp("example") / "onnx-serve")
    add_templated_env(spec)
    TEMPLATE_RAN.unlink(missing_ok=True)
    for task in ("lock", "fetch"):
        r = run_invoke(task, "--spec", str(spec), "--cache-dir", str(cache_dir))
        assert r.returncode == 0, r.stderr
    return spec


def build_vm(
    spec: Path,
    cache: Path,
    dist: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    args = ["--spec", str(spec), "--cache-dir", str(cache), "--dist", str(dist)]
    return run_invoke("build-vm", *args, *extra, env=env, prefix=prefix)


@pytest.fixture(scope="session")
def vm_built(locked_example: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The example built as both artifacts into one dist: the container first (its manifest is
    the VM's parity reference), then the VM. Shared by the VM and verify tests."""
    from imagebuild import spec as specmod

    dist = tmp_path_factory.mktemp("vmdist")
    args = ["--spec", str(locked_example), "--cache-dir", str(cache_dir), "--dist", str(dist)]
    r = run_invoke("build-container", *args)
    assert r.returncode == 0, r.stderr
    r = build_vm(locked_example, cache_dir, dist)
    assert r.returncode == 0, r.stderr[-5000:]
    return specmod.load(locked_example), dist, r


OSV = ROOT / "tests" / "data" / "osv"  # real advisories: tests/test_scan.py says whose


def osv_export(folder: Path, out: Path, extra: dict[str, bytes] | None = None) -> Path:
    """An all.zip as OSV publishes it: one ID.json per record (those of `folder`, + `extra`)."""
    import zipfile

    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.glob("*.json")):
            zf.write(f, f.name)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return out


@dataclasses.dataclass(frozen=True)
class AppChanged:
    spec: Path  # a copy of the session's example with one app file changed, tagged local/ov
    dist: Path
    build_vm: subprocess.CompletedProcess[str]
    changed_file: Path
    packer_ran: bool  # a Packer log appeared while its VM was built


@pytest.fixture(scope="session")
def app_changed(
    vm_built,
    locked_example: Path,
    cache_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    sign_key: Path,
) -> AppChanged:
    """The example with one app file changed, built as both artifacts after vm_built (so the VM
    comes from the app overlay over vm_built's VM), its provenance signed with the key from the
    environment. Checked by test_vm (how the VM was made) and verified by test_verify (one VM
    boot for both)."""
    root = tmp_path_factory.mktemp("app-changed")
    shutil.copytree(locked_example.parent, root / "p")
    spec_file = root / "p" / locked_example.name
    # its own tag: the session's image stays the one the other tests verify
    text = spec_file.read_text()
    spec_file.write_text(text.replace("repository: local/onnx-serve", "repository: local/ov"))
    assert spec_file.read_text() != text
    init = root / "p" / "app" / "app" / "__init__.py"
    init.write_text(init.read_text() + "# an app-only change\n")
    dist, logs = root / "dist", cache_dir / "logs"
    packer_logs = set(logs.glob("*.packer.log"))
    args = ["--spec", str(spec_file), "--cache-dir", str(cache_dir), "--dist", str(dist)]
    r = run_invoke("build-container", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    r = build_vm(spec_file, cache_dir, dist, env={"IMAGEBUILD_SIGN_KEY": str(sign_key)})
    assert r.returncode == 0, r.stderr[-4000:]
    return AppChanged(spec_file, dist, r, init, set(logs.glob("*.packer.log")) != packer_logs)
