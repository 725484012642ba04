"""The base layer: mmdebstrap of the locked Essential set + apt + python3 from the local repo, or
a registry image pinned by digest (`base.image`), flattened into one normalised layer."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import docker
import docker.errors

from imagebuild import tools
from imagebuild.builders.context import Build
from imagebuild.builders.layers import (
    Layer,
    Manifest,
    base_layer,
    diff_layer,
)
from imagebuild.fetch import apt_source
from imagebuild.leftovers import CACHE_LABEL
from imagebuild.lock.lockfile import Lock
from imagebuild.requested import BASE_PACKAGES
from imagebuild.spec_sections import HOST_ARCH


def sources_hook(source: str) -> str:
    """mmdebstrap's hook that writes the image's apt source. mmdebstrap runs it with `sh -c`
    on this host (as root), the root folder as $1: the line is quoted as one word."""
    return f'printf "%s\\n" {shlex.quote(source)} > "$1/etc/apt/sources.list"'


def chroot_env(sde: int) -> dict[str, str]:
    """mmdebstrap's environment, which its chroot's maintainer scripts inherit: fixed, not the
    caller's (PYTHONDONTWRITEBYTECODE=1 there turned python3's byte-compiled files from
    timestamp-based into hash-based ones: another base layer from the same lock). Only TMPDIR
    is taken from the caller: where mmdebstrap keeps its own scratch."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C.UTF-8",
        "SOURCE_DATE_EPOCH": str(sde),
    }
    if "TMPDIR" in os.environ:
        env["TMPDIR"] = os.environ["TMPDIR"]
    return env


def mmdebstrap_base(lock: Lock, repo: Path, tmp: Path) -> tuple[Layer, Manifest]:
    rootfs = tmp / "rootfs.tar"
    suite = str(lock.header["suite"])
    # The image's apt source names the real mirror, never the (machine-specific) cache path.
    source = f"deb {lock.mirror} {suite} {' '.join(lock.header['components'])}"
    cmd = [
        "mmdebstrap",
        "--quiet",
        "--variant=essential",
        f"--include={','.join(BASE_PACKAGES)}",
        "--mode=root",
        "--format=tar",
        '--aptopt=Acquire::Languages "none"',
        f"--customize-hook={sources_hook(source)}",
        # Another architecture (Lock.for_arch): its maintainer scripts run under qemu-user.
        *([f"--architectures={lock.arch}"] if lock.arch != HOST_ARCH else []),
        suite,
        str(rootfs),
        apt_source(repo, suite, "copy"),
    ]
    tools.run(cmd, env=chroot_env(lock.source_date_epoch))
    try:
        return base_layer(rootfs, tmp / "layer.tar", lock.source_date_epoch)
    finally:
        rootfs.unlink()


# What the stages after the base need in it: Ansible's interpreter and apt (for the locked pins).
BASE_NEEDS = ("usr/bin/python3", "usr/bin/apt-get")


def registry_base(b: Build, tmp: Path) -> tuple[Layer, Manifest]:
    """`base.image: NAME@sha256:...`: pulled by digest (from the user's registry; nothing is
    pulled by tag) and flattened into one normalised layer, like the mmdebstrap base."""
    ref = b.inputs.spec.base.image
    assert ref is not None
    try:
        image = b.client.images.pull(ref)
    except docker.errors.APIError as e:
        reason = e.explanation or str(e)
        raise b.inputs.spec.error("base.image", f"cannot pull {ref}: {reason}") from None
    container = b.client.containers.create(
        image.id,
        name=f"imagebuild-{b.inputs.spec.name}-{b.build_id}-base",
        network_mode="none",
        labels={"io.imagebuild.build": b.build_id, CACHE_LABEL: str(b.inputs.cache.root)},
    )
    try:
        layer, manifest = diff_layer(
            container.export(chunk_size=1 << 20),
            {},
            tmp / "layer.tar",
            b.inputs.lock.source_date_epoch,
        )
    finally:
        container.remove(force=True)
    missing = [p for p in BASE_NEEDS if p not in manifest]
    if missing:
        raise b.inputs.spec.error(
            "base.image",
            f"{ref} has no /{', /'.join(missing)}: the shared playbook needs Debian's python3 "
            "and apt in the base",
        )
    return layer, manifest
