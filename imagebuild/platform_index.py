"""The image index `push` puts at REPOSITORY:VERSION when the spec builds several architectures
(base.architectures): one entry per architecture's image, by the digest the engine pushed, so a
`docker pull` on an amd64 or an arm64 host gets its own. Written by hand, its bytes a function of
those digests (sorted keys, the spec's architecture order), and checked against the digest the
registry answers with."""

from __future__ import annotations

import hashlib
import json

from imagebuild.attach import DOCKER_MANIFEST, Pushed
from imagebuild.errors import ImageBuildError
from imagebuild.registry_cache import registry_client

INDEX_TYPE = "application/vnd.oci.image.index.v1+json"


def render(images: list[tuple[str, Pushed]]) -> bytes:
    """The index of `images` ((architecture, its pushed manifest)), in their order."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": INDEX_TYPE,
            "manifests": [
                {
                    "mediaType": DOCKER_MANIFEST,
                    "digest": p.digest,
                    "size": p.size,
                    "platform": {"architecture": arch, "os": "linux"},
                }
                for arch, p in images
            ],
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def put(repo: str, tag: str, images: list[tuple[str, Pushed]]) -> Pushed:
    """Put the index of `images` at REPO:TAG; the index as the registry has it."""
    body = render(images)
    digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
    client = registry_client(repo)
    target = client.get_container(f"{repo}:{tag}")
    response = client.do_request(
        f"{client.prefix}://{target.manifest_url()}",
        "PUT",
        headers={"Content-Type": INDEX_TYPE},
        data=body,
    )
    # A redirect would have turned the PUT into a GET: its 200 says nothing of the index.
    if response.history or not 200 <= response.status_code < 300:
        raise ImageBuildError(
            f"{repo}:{tag}: the registry refused the image index: HTTP {response.status_code} "
            f"{response.text[:300]}"
        )
    answered = response.headers.get("Docker-Content-Digest", digest)  # optional in the spec
    if answered != digest:
        raise ImageBuildError(f"{repo}:{tag}: the registry stored the index as {answered}")
    return Pushed(repo, digest, len(body))
