"""The image config and the `docker load` archive, written by hand with fixed timestamps, so the
image ID (the sha256 of the config) is a pure function of the layers and the spec (the OCI
archive: oci_archive.py)."""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from imagebuild import tarnorm
from imagebuild.builders.layers import Layer
from imagebuild.lock.lockfile import rfc3339
from imagebuild.spec_sections import HOST_ARCH


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
    architecture: str = HOST_ARCH  # Debian's and OCI's names agree for amd64 and arm64

    def render(self, layers: list[Layer]) -> bytes:
        when = rfc3339(self.created)
        return _json(
            {
                "architecture": self.architecture,
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
