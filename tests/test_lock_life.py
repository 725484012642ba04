"""Locks that last: consumers never re-resolve, a refresh says what moved (and can be partial),
a file gone from the mirror is named with what to do, and exported blobs outlive the mirror."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuild import lock as locking
from imagebuild.cache import Cache
from imagebuild.lock import lockfile
from tests.conftest import copy_example, run_invoke

# The network blocked by a proxy that is not there; one attempt (no retry of what cannot work).
BLOCKED = {
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "IMAGEBUILD_DOWNLOAD_ATTEMPTS": "1",
}


@pytest.fixture
def private(tmp_path: Path, locked_example: Path) -> Path:
    """A copy of the session's locked example (its lock too), to edit freely."""
    spec = copy_example(tmp_path / "onnx-serve")
    shutil.copy(locked_example.with_suffix(".lock"), spec.with_suffix(".lock"))
    return spec


def _age(lock_path: Path, versions: dict[str, str]) -> None:
    """Pretend the lock was resolved when these wheels had these (real, older) versions."""
    data = json.loads(lock_path.read_text())
    for w in data["python"]:
        if w["name"] in versions:
            w["version"] = versions[w["name"]]
    lk = locking.read(lock_path)
    aged = [lockfile.Wheel(**w) for w in data["python"]]
    lockfile.write(lockfile.Lock(lk.header, lk.inputs, lk.shared, lk.vm, aged, lock_path))


@pytest.mark.network
def test_update_dry_run_names_what_moved_and_writes_nothing(private: Path, cache_dir: Path) -> None:
    lock_path = private.with_suffix(".lock")
    _age(lock_path, {"packaging": "24.0", "idna": "3.6"})
    before = lock_path.read_bytes()
    args = ["--spec", str(private), "--cache-dir", str(cache_dir)]
    r = run_invoke("lock", *args, "--update", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "python:" in r.stdout and "packaging 24.0 -> " in r.stdout and "idna 3.6 -> " in r.stdout
    assert "not written" in r.stderr and lock_path.read_bytes() == before
    # Only the named package (and what it drags in) moves; idna keeps its locked 3.6.
    r = run_invoke("lock", *args, "--update", "packaging")
    assert r.returncode == 0, r.stderr
    assert "packaging 24.0 -> " in r.stdout and "idna" not in r.stdout
    after = {w.name: w for w in locking.read(lock_path).python}
    assert after["idna"].version == "3.6" and after["packaging"].version != "24.0"
    assert after["idna"].filename.startswith("idna-3.6-")  # a real row for the kept version
    assert locking.read(lock_path).header["resolved_at"]


def test_update_of_a_name_the_lock_lacks_is_refused(private: Path) -> None:
    r = run_invoke("lock", "--spec", str(private), "--update", "no-such-package")
    assert r.returncode == 2 and "no-such-package not in" in r.stderr


@pytest.mark.network
def test_all_uses_the_lock_as_it_is(private: Path, tmp_path: Path) -> None:
    """The main job never re-resolves: with the network blocked it gets past the lock step
    (and stops at fetch), the lock byte-identical; a stale lock is refused up front."""
    lock_path = private.with_suffix(".lock")
    before = lock_path.read_bytes()
    r = run_invoke(
        "all", "--spec", str(private), "--cache-dir", str(tmp_path / "empty"), env=BLOCKED
    )
    assert r.returncode == 1 and "as it is" in r.stderr and "fetch: download" in r.stderr
    assert lock_path.read_bytes() == before
    (private.parent / "requirements.in").write_text("numpy\n")
    r = run_invoke("all", "--spec", str(private), "--cache-dir", str(tmp_path / "empty"))
    assert r.returncode == 3 and "stale" in r.stderr and lock_path.read_bytes() == before


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A local HTTP mirror on 127.0.0.1 serving a folder."""
    root = tmp_path / "mirror"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/debian"
    finally:
        server.shutdown()


def _point_at(spec: Path, url: str) -> None:
    """The spec and its lock moved to another mirror (same packages): the lock stays fresh."""
    spec.write_text(spec.read_text().replace("http://deb.debian.org/debian", url))
    lk = locking.read(spec.with_suffix(".lock"))
    inputs = {**lk.inputs, "base": {**lk.inputs["base"], "mirror": url}}
    header = {**lk.header, "mirror": url, "inputs_sha256": lockfile.inputs_digest(inputs)}
    lockfile.write(lockfile.Lock(header, inputs, lk.shared, lk.vm, lk.python, lk.path))


@pytest.mark.network
def test_a_deb_gone_from_the_mirror_is_named(
    private: Path, cache_dir: Path, mirror: tuple[Path, str], tmp_path: Path
) -> None:
    root, url = mirror
    lk = locking.read(private.with_suffix(".lock"))
    gone = next(p for p in lk.shared if p.name == "python3")
    source = Cache(cache_dir)
    for p in lk.shared + lk.vm:
        if p is not gone:
            (root / "debian" / p.filename).parent.mkdir(parents=True, exist_ok=True)
            os.link(source.blob(p.sha256), root / "debian" / p.filename)
    _point_at(private, url)
    # A fresh cache holding the wheels already (no PyPI traffic), none of the debs.
    cache = Cache(tmp_path / "cache")
    for w in lk.python:
        cache.blob(w.sha256).parent.mkdir(parents=True, exist_ok=True)
        os.link(source.blob(w.sha256), cache.blob(w.sha256))
    r = run_invoke("fetch", "--spec", str(private), "--cache-dir", str(cache.root))
    assert r.returncode == 1, r.stderr
    assert f"Debian package python3 {gone.version} is gone" in r.stderr
    assert "no longer carries it" in r.stderr and "--import" in r.stderr
    assert "Traceback" not in r.stderr
    blobs = cache.blob(gone.sha256).parent
    assert not cache.blob(gone.sha256).exists()
    assert not [f for f in os.listdir(blobs) if f.startswith(".")], "a partial download was left"
    # The same lock keeps working from a cache that has the file: export there, import here.
    archive = tmp_path / "blobs.tar"
    r = run_invoke(
        "fetch", "--spec", str(private), "--cache-dir", str(cache_dir), "--export", str(archive)
    )
    assert r.returncode == 0, r.stderr
    r = run_invoke(
        "fetch", "--spec", str(private), "--cache-dir", str(cache.root), "--import", str(archive)
    )
    assert r.returncode == 0 and "fetched 0 (0.0 MB)" in r.stdout, r.stderr
    assert cache.blob(gone.sha256).is_file()


class _Snapshot(http.server.BaseHTTPRequestHandler):
    """A local stand-in for snapshot.debian.org: /archive/debian/<timestamp>/<path> is answered
    from the Debian mirror (what a snapshot of today holds), and every path asked is recorded.
    A .deb the session's cache holds under the session lock's digest is served from there: the
    mirror's bytes (fetch checks every file's sha256), without a second download one file at a
    time through this server (40 s of the test's 48)."""

    upstream = "http://deb.debian.org/debian"
    seen: list[str] = []
    cached: dict[str, Path] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        parts = self.path.split("/", 4)  # '', 'archive', 'debian', timestamp, rest
        self.seen.append(parts[4] if len(parts) == 5 else self.path)
        try:
            if len(parts) == 5 and parts[4] in self.cached:
                body = self.cached[parts[4]].read_bytes()
            else:
                with urllib.request.urlopen(f"{self.upstream}/{parts[4]}", timeout=60) as r:
                    body = r.read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except urllib.error.HTTPError as e:
            self.send_error(e.code)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.network
def test_a_snapshot_lock_is_resolved_and_fetched_from_the_snapshot(
    tmp_path: Path, cache_dir: Path, locked_example: Path
) -> None:
    _Snapshot.seen = []
    session = locking.read(locked_example.with_suffix(".lock"))
    source = Cache(cache_dir)
    blobs = {p.filename: source.blob(p.sha256) for p in session.shared + session.vm}
    _Snapshot.cached = {name: blob for name, blob in blobs.items() if blob.is_file()}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Snapshot)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spec = copy_example(tmp_path / "onnx-serve")
        service = f"http://127.0.0.1:{server.server_address[1]}/archive/debian"
        snapshot = f"  snapshot: 20261130T000000Z\n  snapshot_url: {service}"
        spec.write_text(spec.read_text().replace("  snapshot: null", snapshot))
        cache = Cache(tmp_path / "cache")
        r = run_invoke("lock", "--spec", str(spec), "--cache-dir", str(cache.root))
        assert r.returncode == 0, r.stderr
        lk = locking.read(spec.with_suffix(".lock"))
        assert lk.mirror == f"{service}/20261130T000000Z" and lk.header["snapshot"]
        # The wheels from the session cache (no PyPI traffic); every .deb from the snapshot.
        for w in lk.python:
            cache.blob(w.sha256).parent.mkdir(parents=True, exist_ok=True)
            os.link(source.blob(w.sha256), cache.blob(w.sha256))
        r = run_invoke("fetch", "--spec", str(spec), "--cache-dir", str(cache.root))
        assert r.returncode == 0, r.stderr
        assert {p.filename for p in lk.shared + lk.vm} <= set(_Snapshot.seen)
        assert any(s.startswith("dists/bookworm/") for s in _Snapshot.seen)
    finally:
        server.shutdown()
