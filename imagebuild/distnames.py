"""The names of the files in `dist/`: `NAME-VERSION` and one suffix per file. The one place they
are spelled: the builders, push, verify and the tests ask here (a VM format's suffix lives in its
format module, `imagebuild.builders.formats`, and is joined here too)."""

from __future__ import annotations

from pathlib import Path

from imagebuild.spec import Spec

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


def stem(spec: Spec) -> str:
    return f"{spec.name}-{spec.version}"


def name(spec: Spec, suffix: str) -> str:
    return stem(spec) + suffix


def path(dist: Path, spec: Spec, suffix: str) -> Path:
    return dist / name(spec, suffix)
