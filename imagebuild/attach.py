"""push's second half: the image's SBOM, provenance and (when `verify` wrote one into the same
dist) equivalence attestation, pushed beside it as OCI artifacts that refer to it (the manifest's
`subject`, which registries with the referrers API index), and tagged the way cosign tags them
(`sha256-<hex>.sbom`, `sha256-<hex>.att`) for registries without that API, such as Debian's
docker-registry. `attached` reads them back by the image's digest. Pushed with oras-py, the
client the registry cache uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagebuild.registry_cache import registry_client

SBOM_TYPE = "application/vnd.cyclonedx+json"
DSSE_TYPE = "application/vnd.dsse.envelope.v1+json"  # cosign's attestation layers
# What `docker push` sends: the image manifest the artifacts name as their subject.
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


@dataclass(frozen=True)
class Pushed:
    """An image as the registry has it: `repo` (HOST[:PORT]/NAME), its manifest's digest and
    size."""

    repo: str
    digest: str
    size: int

    def tag(self, suffix: str) -> str:
        return f"{self.repo}:{self.digest.replace(':', '-')}.{suffix}"


def attach(image: Pushed, files: dict[str, list[tuple[Path, str]]]) -> list[str]:
    """Push each group of `files` (suffix -> [(file, media type)]) as one artifact whose subject
    is `image`; the tags pushed."""
    import oras.oci

    client = registry_client(image.repo)
    subject = oras.oci.Subject(DOCKER_MANIFEST, image.digest, image.size)
    pushed = []
    for suffix, items in files.items():
        if not items:
            continue
        client.push(
            image.tag(suffix),
            files=[f"{path}:{media}" for path, media in items],
            disable_path_validation=True,
            subject=subject,
            quiet=True,
        )
        pushed.append(image.tag(suffix))
    return pushed


def attached(image: Pushed, suffix: str) -> dict[str, str]:
    """The files (title -> sha256 digest) of the artifact `suffix` that refers to `image`, read
    by the tag fallback; empty when there is none. An artifact that names another subject is
    not this image's."""
    client = registry_client(image.repo)
    try:
        manifest: Any = client.get_manifest(image.tag(suffix))
    except ValueError:  # oras-py's "not found"
        return {}
    if not isinstance(manifest, dict) or manifest.get("subject", {}).get("digest") != image.digest:
        return {}
    return {
        layer["annotations"]["org.opencontainers.image.title"]: layer["digest"]
        for layer in manifest.get("layers", [])
    }
