"""`invoke fetch` never takes more bytes than the lock's `size` of a file: from a mirror that
sends more (a local HTTP mirror on 127.0.0.1, a real lock file pointed at it), or from an
`--import` archive whose member is larger. Refused naming the URL or member and the lock row;
nothing of it is kept and nothing outside the cache is written."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuild.lock import lockfile
from tests.conftest import EXAMPLE, http_server, run_invoke

SMALL = b"a small .deb\n" * 8
BIG = b"x" * (4 << 20)  # what the hostile mirror sends for a row locked at len(SMALL) bytes


class _Mirror(http.server.BaseHTTPRequestHandler):
    """/debian/pool/...small...: SMALL; .../big...: BIG, announced (`announce-`) or not."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = BIG if "/big" in self.path else SMALL
        self.send_response(200)
        if "announce" in self.path or body is SMALL:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):  # fetch hangs up on BIG at the locked size
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def mirror() -> Iterator[str]:
    with http_server(_Mirror) as url:
        yield f"{url}/debian"


def _deb(name: str, body: bytes, size: int) -> lockfile.DebPackage:
    return lockfile.DebPackage(
        name,
        "1.0",
        "all",
        hashlib.sha256(body).hexdigest(),
        f"pool/main/{name[0]}/{name}/{name}_1.0_all.deb",
        size,
    )


def _locked(tmp_path: Path, url: str, big: str) -> tuple[Path, lockfile.Lock]:
    """The example's spec and lock on the mirror `url`, the lock's rows replaced by two .debs:
    `small-deb` and `big` (locked at SMALL's size, served as BIG); no wheels."""
    shutil.copytree(EXAMPLE, tmp_path / "onnx-serve", ignore=shutil.ignore_patterns("__pycache__"))
    spec = tmp_path / "onnx-serve" / "imagebuild.yaml"
    spec.write_text(spec.read_text().replace("http://deb.debian.org/debian", url))
    lk = lockfile.read(spec.with_suffix(".lock"))
    inputs = {**lk.inputs, "base": {**lk.inputs["base"], "mirror": url}}
    header = {**lk.header, "mirror": url, "inputs_sha256": lockfile.inputs_digest(inputs)}
    rows = [_deb("small-deb", SMALL, len(SMALL)), _deb(big, BIG, len(SMALL))]
    lock = lockfile.Lock(header, inputs, rows, [], [], lk.path)
    lockfile.write(lock)
    return spec, lock


def _outside(tmp_path: Path, cache: Path) -> dict[str, int]:
    return {
        str(p): p.stat().st_mtime_ns
        for p in tmp_path.rglob("*")
        if p != cache and cache not in p.parents
    }


@pytest.mark.parametrize("big", ["big", "big-announced"])
def test_a_download_longer_than_the_locked_size_is_refused(
    tmp_path: Path, mirror: str, big: str
) -> None:
    spec, lock = _locked(tmp_path, mirror, big)
    cache = tmp_path / "cache"
    before = _outside(tmp_path, cache)
    r = run_invoke(
        "fetch",
        "--spec",
        str(spec),
        "--cache-dir",
        str(cache),
        env={"IMAGEBUILD_DOWNLOAD_ATTEMPTS": "1"},
    )
    assert r.returncode == 1, r.stderr
    url = f"{mirror}/{lock.shared[1].filename}"
    lines = lock.path.read_text().splitlines()
    line = next(n for n, text in enumerate(lines, 1) if lock.shared[1].sha256 in text)
    said = f"sends more than the {len(SMALL)} bytes"
    said = "announces 4194304 bytes" if "announced" in big else said
    assert f"{lock.path}:{line}: os_shared[1]: {big}=1.0" in r.stderr, r.stderr
    assert f"{url} {said}" in r.stderr and "Traceback" not in r.stderr
    blobs = cache / "blobs" / "sha256"
    assert not (blobs / lock.shared[1].sha256).exists()
    assert not [f for f in os.listdir(blobs) if f.startswith(".")], "a partial download was left"
    assert _outside(tmp_path, cache) == before


def test_an_import_member_larger_than_its_row_is_not_extracted(tmp_path: Path, mirror: str) -> None:
    """A member whose header claims 8 GiB, with none of those bytes in the archive: refused on
    its header alone (a member's data is never read before its size is the locked one)."""
    spec, lock = _locked(tmp_path, mirror, "big")
    row = lock.shared[1]
    archive = tmp_path / "blobs.tar"
    member = tarfile.TarInfo(f"blobs/sha256/{row.sha256}")
    member.size = 8 << 30
    with archive.open("wb") as f:
        f.write(member.tobuf(tarfile.GNU_FORMAT) + b"\0" * 1024)
    assert archive.stat().st_size < 4096
    cache = tmp_path / "cache"
    before = _outside(tmp_path, cache)
    r = run_invoke(
        "fetch", "--spec", str(spec), "--cache-dir", str(cache), "--import", str(archive)
    )
    assert r.returncode == 1, r.stderr
    assert f"--import {archive}: blobs/sha256/{row.sha256} is {8 << 30} bytes" in r.stderr
    assert f"os_shared[1] (big=1.0 (big_1.0_all.deb)) says {len(SMALL)}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "fetched" not in r.stdout
    blobs = cache / "blobs" / "sha256"
    assert not blobs.exists() or not os.listdir(blobs)
    assert _outside(tmp_path, cache) == before


def test_an_import_member_of_the_locked_size_is_imported(tmp_path: Path, mirror: str) -> None:
    """The same path taken by a good archive: the cap does not refuse what the lock says."""
    spec, lock = _locked(tmp_path, mirror, "big")
    archive = tmp_path / "blobs.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo(f"blobs/sha256/{lock.shared[0].sha256}")
        info.size = len(SMALL)
        tar.addfile(info, io.BytesIO(SMALL))
    cache = tmp_path / "cache"
    r = run_invoke(
        "fetch",
        "--spec",
        str(spec),
        "--cache-dir",
        str(cache),
        "--import",
        str(archive),
        env={"IMAGEBUILD_DOWNLOAD_ATTEMPTS": "1"},
    )
    assert "imported 1 blobs" in r.stdout, r.stderr
    assert (cache / "blobs" / "sha256" / lock.shared[0].sha256).read_bytes() == SMALL
