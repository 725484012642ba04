"""The OCI archive writer: its first blobs written early (beside the app stage), the rest at the
end, the sha256 taken as written; nothing left when it is not finished."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import pytest

from imagebuild.builders.layers import Layer
from imagebuild.builders.oci_archive import OciArchive


def layers(tmp_path: Path, *contents: bytes) -> list[Layer]:
    out = []
    for n, data in enumerate(contents):
        path = tmp_path / f"layer{n}.tar"
        path.write_bytes(data)
        out.append(Layer(path, hashlib.sha256(data).hexdigest(), len(data), 0))
    return out


def test_the_layers_below_come_first_and_the_digest_is_the_files(tmp_path: Path) -> None:
    """Sizes: ragged, a whole block, and two empty layers (one blob); the tar as tarfile reads
    it, the layers' blobs first in image order, then config, manifest, index.json; the digest
    returned is the file's."""
    ly = layers(tmp_path, os.urandom(100_003), os.urandom(512 * 3), b"", b"")
    dest = tmp_path / "image.oci.tar"
    with OciArchive(dest) as archive:
        archive.begin(ly[:2])
        manifest_digest, sha256 = archive.finish(b'{"config":1}', ly, "1.0", {"a": "b"})
    data = dest.read_bytes()
    assert sha256 == hashlib.sha256(data).hexdigest()
    assert len(data) % tarfile.RECORDSIZE == 0
    config = hashlib.sha256(b'{"config":1}').hexdigest()
    with tarfile.open(dest) as tar:
        names = [m.name for m in tar]
        blobs = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
        assert {(m.uid, m.gid, m.mtime, m.mode) for m in tar} == {(0, 0, 0, 0o644)}
    digest = manifest_digest.removeprefix("sha256:")
    assert names == [
        "oci-layout",
        *(f"blobs/sha256/{x.diff_id}" for x in ly[:3]),
        f"blobs/sha256/{config}",
        f"blobs/sha256/{digest}",
        "index.json",
    ]
    assert blobs[f"blobs/sha256/{ly[0].diff_id}"] == ly[0].path.read_bytes()
    manifest = json.loads(blobs[f"blobs/sha256/{digest}"])
    assert [x["digest"] for x in manifest["layers"]] == [f"sha256:{x.diff_id}" for x in ly]
    index = json.loads(blobs["index.json"])
    assert index["manifests"][0]["digest"] == manifest_digest
    # Written in one go (no early part): the same bytes.
    again = tmp_path / "again.oci.tar"
    with OciArchive(again) as archive:
        assert archive.finish(b'{"config":1}', ly, "1.0", {"a": "b"}) == (manifest_digest, sha256)
    assert again.read_bytes() == data


def test_an_unfinished_archive_leaves_the_last_one_as_it_was(tmp_path: Path) -> None:
    """Left before `finish` (the app stage failed, Ctrl-C): no temp file, the old archive kept."""
    ly = layers(tmp_path, os.urandom(3 << 20), b"x")
    dest = tmp_path / "dist" / "image.oci.tar"
    dest.parent.mkdir()
    dest.write_bytes(b"the last build's")
    with pytest.raises(KeyboardInterrupt), OciArchive(dest) as archive:
        archive.begin(ly[:1])
        raise KeyboardInterrupt
    with OciArchive(dest) as archive:  # a no-op build: nothing begun, nothing finished
        pass
    assert os.listdir(dest.parent) == [dest.name] and dest.read_bytes() == b"the last build's"
    with OciArchive(dest) as archive:  # replaced: the old bytes' extra link is gone too
        archive.finish(b"{}", ly, "1", {})
    assert os.listdir(dest.parent) == [dest.name] and dest.stat().st_nlink == 1


def test_a_blob_two_layers_share_is_written_once_also_early(tmp_path: Path) -> None:
    """Two empty stages below the app (no stacks, an empty one): one blob, begun or not."""
    ly = layers(tmp_path, b"base", b"", b"", b"python", b"app")
    digests = []
    for n, early in enumerate((ly[:4], [])):
        with OciArchive(tmp_path / f"{n}.oci.tar") as archive:
            if early:
                archive.begin(early)
            digests.append(archive.finish(b"{}", ly, "1", {}))
        with tarfile.open(tmp_path / f"{n}.oci.tar") as tar:
            assert len([m for m in tar if m.name.startswith("blobs/")]) == 4 + 2
    assert digests[0] == digests[1]


def test_early_blobs_of_other_layers_are_refused(tmp_path: Path) -> None:
    ly = layers(tmp_path, b"a", b"b")
    dest = tmp_path / "image.oci.tar"
    with pytest.raises(AssertionError, match="first blobs"), OciArchive(dest) as archive:
        archive.begin(ly[1:])
        archive.finish(b"{}", ly, "1", {})
    assert not dest.exists() and sorted(os.listdir(tmp_path)) == ["layer0.tar", "layer1.tar"]
