"""Image config and archives written by hand, with fixed timestamps, so the image ID (the
sha256 of the config) is a pure function of the layers and the spec."""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from imagebuild import tarnorm
from imagebuild.builders.layers import Layer
from imagebuild.cache import atomic_file
from imagebuild.lock.lockfile import rfc3339

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def _json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ImageConfig:
    """What goes into the config blob; `history` names the stage of each layer."""

    entrypoint: list[str]
    cmd: list[str]
    env: dict[str, str]
    workdir: str
    user: str
    labels: dict[str, str]
    history: list[str]
    created: int

    def render(self, layers: list[Layer]) -> bytes:
        when = rfc3339(self.created)
        return _json(
            {
                "architecture": "amd64",
                "os": "linux",
                "created": when,
                "config": {
                    "Entrypoint": self.entrypoint,
                    "Cmd": self.cmd or None,
                    "Env": [f"{k}={v}" for k, v in self.env.items()],
                    "WorkingDir": self.workdir,
                    "User": self.user,
                    "Labels": self.labels,
                },
                "rootfs": {"type": "layers", "diff_ids": [f"sha256:{ly.diff_id}" for ly in layers]},
                "history": [
                    {"created": when, "created_by": h, "empty_layer": False} for h in self.history
                ],
            }
        )


def _add(
    tar: tarfile.TarFile,
    name: str,
    data: bytes | None = None,
    path: Path | None = None,
    mtime: int = 0,
) -> None:
    if path is not None:
        tarnorm.add_file(tar, name, path, mtime)
    else:
        assert data is not None
        tarnorm.add_bytes(tar, name, data, mtime)


def docker_archive(
    dest: Path, config: bytes, layers: list[Layer], tag: str, present: int = 0
) -> str:
    """`docker load` format; returns the image ID (sha256 of the config). The first `present`
    layers are named but not written: the engine already has that chain, and `docker load` only
    opens a layer file whose chain it lacks (moby image/tarexport/load.go), so an app-only
    rebuild streams one small layer instead of the whole image."""
    image_id = hashlib.sha256(config).hexdigest()
    manifest = [
        {
            "Config": f"{image_id}.json",
            "RepoTags": [tag],
            "Layers": [f"{ly.diff_id}/layer.tar" for ly in layers],
        }
    ]
    with tarfile.open(dest, "w", format=tarfile.GNU_FORMAT) as tar:
        _add(tar, f"{image_id}.json", config)
        for ly in layers[present:]:
            _add(tar, f"{ly.diff_id}/layer.tar", path=ly.path)
        _add(tar, "manifest.json", _json(manifest))
    return image_id


def oci_archive(
    dest: Path, config: bytes, layers: list[Layer], ref: str, annotations: dict[str, str]
) -> str:
    """An OCI image layout as a tar (`skopeo inspect oci-archive:`); returns the manifest digest."""
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
    index = _json(
        {
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
    )
    with atomic_file(dest) as tmp, tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
        _add(tar, "oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
        _add(tar, "index.json", index)
        blobs: dict[str, tuple[bytes | None, Path | None]] = {
            config_digest: (config, None),
            manifest_digest: (manifest, None),
        }
        for ly in layers:
            blobs[ly.diff_id] = (None, ly.path)
        for digest in sorted(blobs):
            data, path = blobs[digest]
            _add(tar, f"blobs/sha256/{digest}", data, path)
    return f"sha256:{manifest_digest}"
