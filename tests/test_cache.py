"""The blob cache's stat memo: unchanged blobs are not hashed again, any change is."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from imagebuild import fetch
from imagebuild.cache import Cache
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
