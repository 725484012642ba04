"""The OCI archive (an OCI image layout as one tar, `skopeo inspect oci-archive:`), written in
two parts so that an app-only rebuild does not wait for ~450 MB of unchanged layers: `begin`
writes the blobs of the layers below the app in a thread while the app stage runs, `finish`
adds the rest (the app's layer, config, manifest, index.json). The members are in that order:
the layers' blobs first, in image order, so what is known early is a prefix of the file. Its
sha256 is taken from the bytes as they are written: the archive is never read back.

A temp file beside the destination, renamed by `finish`; removed (its thread stopped first) if
the build stops before."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, suppress
from pathlib import Path
from typing import BinaryIO

from imagebuild import profile, tarnorm
from imagebuild.builders.layers import Layer
from imagebuild.cache import atomic_file

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
CHUNK = 1 << 20


class Stopped(Exception):
    """The archive was abandoned while its first part was being written."""


def _json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class _HashedTar:
    """An uncompressed GNU tar whose bytes are hashed as they are written (the entries are
    tarnorm's: root's, dated 0, 0644)."""

    def __init__(self, out: BinaryIO, stop: threading.Event) -> None:
        self.out, self.stop, self.sha256 = out, stop, hashlib.sha256()
        self.size = 0

    def _write(self, data: bytes) -> None:
        self.sha256.update(data)
        self.out.write(data)
        self.size += len(data)

    def _header(self, name: str, size: int) -> None:
        info = tarnorm.ours(tarfile.TarInfo(name), 0)
        info.size = size
        self._write(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))

    def _pad(self, size: int) -> None:
        if rest := size % tarfile.BLOCKSIZE:
            self._write(tarfile.NUL * (tarfile.BLOCKSIZE - rest))

    def add_bytes(self, name: str, data: bytes) -> None:
        self._header(name, len(data))
        self._write(data)
        self._pad(len(data))

    def add_file(self, name: str, path: Path, size: int) -> None:
        self._header(name, size)
        done = 0
        with path.open("rb") as f:
            while chunk := f.read(min(CHUNK, size - done)):
                if self.stop.is_set():
                    raise Stopped
                self._write(chunk)
                done += len(chunk)
        if done != size:
            raise OSError(f"{path}: {done} bytes, its layer record says {size}")
        self._pad(size)

    def close(self) -> None:
        """The end-of-archive blocks and the padding to a whole record, as tarfile writes."""
        self._write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
        self._write(tarfile.NUL * (-self.size % tarfile.RECORDSIZE))


class OciArchive(AbstractContextManager["OciArchive"]):
    """`with OciArchive(dest) as a: a.begin(below); ...; a.finish(...)`; leaving the block
    without `finish` leaves `dest` as it was."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self._stack = ExitStack()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="oci-archive")
        self._begun: Future[None] | None = None
        self._written: list[str] = []  # blob digests in the file, in order
        self._tar: _HashedTar | None = None

    def __enter__(self) -> OciArchive:
        return self

    def _open(self) -> _HashedTar:
        """The temp file, made on first use: a build that writes nothing touches nothing."""
        if self._tar is None:
            tmp = self._stack.enter_context(atomic_file(self.dest))
            out = self._stack.enter_context(tmp.open("wb"))
            self._tar = _HashedTar(out, self._stop)
            self._tar.add_bytes("oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
        return self._tar

    def __exit__(self, *exc: object) -> None:
        self._stop.set()  # an unfinished first part stops at its next chunk
        self._pool.shutdown(wait=True)
        # Not finished (an error, or a caller that left early): the temp file is removed.
        stopped = Stopped("the archive was not finished")
        self._stack.__exit__(Stopped, stopped, None)

    def _blobs(self, layers: list[Layer]) -> None:
        tar = self._open()
        for ly in layers:
            if ly.diff_id not in self._written:  # two empty layers are one blob
                tar.add_file(f"blobs/sha256/{ly.diff_id}", ly.path, ly.size)
                self._written.append(ly.diff_id)

    def begin(self, below: list[Layer]) -> None:
        """Start writing the blobs of `below` (the image's first layers) in a thread."""
        if self._begun is None:
            self._begun = self._pool.submit(self._early, list(below))

    def _early(self, below: list[Layer]) -> None:
        with profile.step("OCI archive: the layers below the app (beside the app stage)"):
            self._blobs(below)

    def finish(
        self, config: bytes, layers: list[Layer], ref: str, annotations: dict[str, str]
    ) -> tuple[str, str]:
        """Write the rest of the image and close the archive: (manifest digest, the archive's
        sha256). The layers `begin` was given must be this image's first (else an error)."""
        if self._begun is not None:
            self._begun.result()
        blobs = list(dict.fromkeys(ly.diff_id for ly in layers))  # in order, each once
        if self._written != blobs[: len(self._written)]:
            raise AssertionError("the archive's first blobs are not this image's first layers")
        self._blobs(layers)
        tar = self._open()
        config_digest = hashlib.sha256(config).hexdigest()
        manifest = _json(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": OCI_CONFIG,
                    "digest": f"sha256:{config_digest}",
                    "size": len(config),
                },
                "layers": [
                    {"mediaType": OCI_LAYER, "digest": f"sha256:{ly.diff_id}", "size": ly.size}
                    for ly in layers
                ],
                "annotations": annotations,
            }
        )
        manifest_digest = hashlib.sha256(manifest).hexdigest()
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": f"sha256:{manifest_digest}",
                    "size": len(manifest),
                    "annotations": {"org.opencontainers.image.ref.name": ref},
                }
            ],
        }
        for digest, blob in ((config_digest, config), (manifest_digest, manifest)):
            if digest not in self._written:
                tar.add_bytes(f"blobs/sha256/{digest}", blob)
                self._written.append(digest)
        tar.add_bytes("index.json", _json(index))
        tar.close()
        sha256 = tar.sha256.hexdigest()
        # Freeing the replaced archive's ~450 MB takes the kernel ~0.1 s inside the rename: it
        # is kept linked through the rename and unlinked in the thread, beside what follows.
        old = self.dest.with_name(f".{self.dest.name}.replaced-{os.getpid()}")
        old.unlink(missing_ok=True)
        with suppress(OSError):  # none there, or a filesystem without hard links: freed inline
            os.link(self.dest, old)
        try:
            self._stack.close()  # the file closed, then renamed into place
        finally:
            self._pool.submit(old.unlink, missing_ok=True)
        return f"sha256:{manifest_digest}", sha256
