"""The Docker engine, as every task reaches it (build, push, verify): the client, and what the
engine can tell about itself (its layers, whether its storage can be read on this host)."""

from __future__ import annotations

import os
from pathlib import Path

import docker
import docker.errors

from imagebuild import profile
from imagebuild.errors import ImageBuildError

DEFAULT_HOST = "unix:///var/run/docker.sock"  # where docker.from_env goes without DOCKER_HOST


class EngineError(ImageBuildError):
    pass


def engine() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=600)
        profile.count_engine_calls(client)
        client.ping()
        return client
    except docker.errors.DockerException as e:
        raise EngineError(
            f"the Docker engine is not reachable ({e.__class__.__name__}); start it "
            "with `bash scripts/bootstrap.sh` (dockerd --bridge=none "
            "--iptables=false)"
        ) from None


def describe(client: docker.DockerClient) -> str:
    """Which engine a task used, as its progress line says: where (DOCKER_HOST or the local
    socket), its version and storage driver."""
    info = client.info()
    # docker-py names a unix socket http+docker://localhost; say what the user would set.
    where = os.environ.get("DOCKER_HOST") or DEFAULT_HOST
    return f"{where} (Docker {info.get('ServerVersion')}, {info.get('Driver')})"


def connection_vars() -> dict[str, str | bool]:
    """What Ansible's community.docker.docker_api connection needs to reach the engine this
    process uses: docker.from_env's variables (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH),
    which the connection plugin does not read itself (it would use the local socket)."""
    out: dict[str, str | bool] = {
        "ansible_docker_docker_host": os.environ.get("DOCKER_HOST") or DEFAULT_HOST
    }
    if os.environ.get("DOCKER_TLS_VERIFY"):
        certs = Path(os.environ.get("DOCKER_CERT_PATH") or Path.home() / ".docker")
        out |= {
            "ansible_docker_validate_certs": True,
            "ansible_docker_ca_path": str(certs / "ca.pem"),
            "ansible_docker_client_cert": str(certs / "cert.pem"),
            "ansible_docker_client_key": str(certs / "key.pem"),
        }
    return out


def load_archive(client: docker.DockerClient, archive: Path) -> None:
    with archive.open("rb") as f:
        for _ in client.api.load_image(f):
            pass


def engine_has(client: docker.DockerClient, diff_ids: list[str], refs: list[str]) -> int:
    """How many of the layers `diff_ids`, from the bottom, the engine already holds (as the
    layers of one of the images `refs`, e.g. the last build's image and this build's stage
    images)."""
    want = [f"sha256:{d}" for d in diff_ids]
    best = 0
    for ref in refs:
        try:
            have = client.api.inspect_image(ref)["RootFS"]["Layers"]
        except docker.errors.NotFound:
            continue
        n = 0
        while n < min(len(have), len(want)) and have[n] == want[n]:
            n += 1
        best = max(best, n)
    return best


def local_overlay(client: docker.DockerClient) -> bool:
    """Whether a stage container's changes can be read from its overlay2 upper directory on
    this host: what the engine itself trusts for `docker diff` (native diff: no redirect_dir,
    no metacopy), no user-namespace remapping (owners would be shifted), and not switched off
    by IMAGEBUILD_ENGINE_DIFF=1. An engine reached over tcp:// or ssh:// is another machine's:
    only its API is used."""
    if os.environ.get("IMAGEBUILD_ENGINE_DIFF") == "1" or os.geteuid() != 0:
        return False  # the engine's folders are root's alone
    if not os.environ.get("DOCKER_HOST", "unix://").startswith("unix://"):
        return False
    info = client.info()
    status = dict(info.get("DriverStatus") or [])
    return (
        info.get("Driver") == "overlay2"
        and status.get("Native Overlay Diff") == "true"
        and status.get("Using metacopy", "false") == "false"
        and status.get("userxattr", "false") == "false"  # so only trusted.* xattrs count
        and not any("userns" in o or "rootless" in o for o in info.get("SecurityOptions") or [])
    )
