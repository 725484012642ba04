"""The blob cache's stat memo (unchanged blobs are not hashed again, any change is) and the
seals of derived entries."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from imagebuild import cache as cache_mod
from imagebuild import fetch
from imagebuild.cache import SEAL, Cache, atomic_file
from imagebuild.lock.lockfile import Wheel


def test_verified_memo_skips_unchanged_blobs_and_catches_rewrites(
    tmp_path: Path, monkeypatch
) -> None:
    cache = Cache(tmp_path)
    data = b"wheel bytes"
    item = Wheel("w", "1", "w-1.whl", "", hashlib.sha256(data).hexdigest())
    blob = cache.blob(item.sha256)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    hashed: list[Path] = []
    real = fetch.sha256_file
    monkeypatch.setattr(fetch, "sha256_file", lambda p: hashed.append(p) or real(p))

    with cache.verified() as memo:
        assert fetch.verify_blob(cache, item, repair=False, memo=memo)
    with cache.verified() as memo:  # read back from verified.json
        assert fetch.verify_blob(cache, item, repair=False, memo=memo)
    assert hashed == [blob]

    # Same size, same mtime put back: ctime still moves, so the blob is hashed and refused.
    st = blob.stat()
    blob.write_bytes(b"wheel bytez")
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    with cache.verified() as memo:
        assert not fetch.verify_blob(cache, item, repair=False, memo=memo)
        assert item.sha256 not in memo
    assert hashed == [blob, blob]


def test_atomic_file_gives_a_normal_file_mode_and_nothing_on_failure(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(cache_mod, "_UMASK", 0o022)
    dest = tmp_path / "out" / "x.json"
    with atomic_file(dest) as tmp:
        tmp.write_text("{}")
    # Not mkstemp's 0600: a dist/ output other users and CI uploaders can read.
    assert dest.stat().st_mode & 0o777 == 0o644
    try:
        with atomic_file(tmp_path / "out" / "y.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError
    except RuntimeError:
        pass
    assert sorted(p.name for p in dest.parent.iterdir()) == ["x.json"]


def test_entries_are_sealed_and_a_changed_file_is_found(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    with cache.building("repos", "k1", {"pool/a.deb": hashlib.sha256(b"A").hexdigest()}) as d:
        (d / "pool").mkdir()
        (d / "pool" / "a.deb").write_bytes(b"A")
        (d / "Packages").write_text("Package: a\n")
    expect = {"pool/a.deb": hashlib.sha256(b"A").hexdigest()}
    assert cache.seal_problem("repos", "k1", expect) is None
    (cache.dir("repos", "k1") / "Packages").write_text("Package: b\n")
    assert "has Packages changed" in (cache.seal_problem("repos", "k1") or "")
    assert not cache.intact("repos", "k1") and not cache.dir("repos", "k1").exists()

    with cache.building("repos", "k2") as d:
        (d / "x").write_text("x")
    (cache.dir("repos", "k2") / "extra").write_text("y")
    assert "added ['extra']" in (cache.seal_problem("repos", "k2") or "")

    # A seal rewritten together with the file still differs from what the lock says.
    with cache.building("repos", "k3", dict(expect)) as d:
        (d / "pool").mkdir()
        (d / "pool" / "a.deb").write_bytes(b"A")
    folder = cache.dir("repos", "k3")
    (folder / "pool" / "a.deb").write_bytes(b"B")
    seal = json.loads((folder / SEAL).read_text())
    seal["pool/a.deb"] = hashlib.sha256(b"B").hexdigest()
    (folder / SEAL).write_text(json.dumps(seal))
    assert cache.seal_problem("repos", "k3") is None  # consistent in itself...
    assert "the lock says" in (cache.seal_problem("repos", "k3", expect) or "")  # ...not with it

    (folder / SEAL).unlink()
    assert "has no seal" in (cache.seal_problem("repos", "k3") or "")
