"""The names of the files in `dist/`: `NAME-VERSION` and one suffix per file, and of the image
in the engine. The one place they are spelled: the builders, push, verify and the tests ask here
(a VM format's suffix lives in its format module, `imagebuild.builders.formats`, and is joined
here too)."""

from __future__ import annotations

from pathlib import Path

from imagebuild.spec import Spec
from imagebuild.spec_sections import HOST_ARCH

OCI = ".oci.tar"
CONTAINER_PACKAGES = ".container.packages.txt"
CONTAINER_SBOM = ".container.sbom.cdx.json"
CONTAINER_PROVENANCE = ".container.intoto.jsonl"
CONTAINER_RECORD = ".container.json"
VM_PACKAGES = ".vm.packages.txt"
VM_SBOM = ".vm.sbom.cdx.json"
VM_PROVENANCE = ".vm.intoto.jsonl"
PACKER_MANIFEST = ".packer-manifest.json"
VM_RECORD = ".vm.json"
AMI_RECORD = ".ami.json"
AMI_PROVENANCE = ".ami.intoto.jsonl"
GCE_RECORD = ".gce.json"
GCE_REQUEST = ".gce-image.json"  # images.insert, written, not sent
PUSH_RECORD = ".push.json"
SCAN_VEX = ".vex.cdx.json"  # invoke scan --dist
SCAN_ATTESTATION = ".scan.intoto.jsonl"
LOCK_LABEL = "io.imagebuild.lock.sha256"  # the image's label naming the lock it was built from


def stem(spec: Spec) -> str:
    return f"{spec.name}-{spec.version}"


def name(spec: Spec, suffix: str) -> str:
    return stem(spec) + suffix


def path(dist: Path, spec: Spec, suffix: str) -> Path:
    return dist / name(spec, suffix)


def arch_dir(dist: Path, arch: str) -> Path:
    """Where a build of `arch` writes: `dist` for the host's, `dist/ARCH/` (the same names) for
    another architecture's (base.architectures)."""
    return dist if arch == HOST_ARCH else dist / arch


def image_tag(spec: Spec, arch: str = HOST_ARCH) -> str:
    """The image's tag in the engine: REPOSITORY:VERSION; another architecture's (run there
    under emulation) with `-ARCH` appended, as Docker's own per-architecture tags have it."""
    return f"{spec.repository}:{spec.version}" + ("" if arch == HOST_ARCH else f"-{arch}")
