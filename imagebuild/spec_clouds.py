"""The clouds' sections of the spec (vm.ami, vm.gce): part of the one settings table
(imagebuild.spec_sections holds the others), read by the targets that publish to each cloud."""

from __future__ import annotations

from dataclasses import dataclass, field

from imagebuild.spec_checks import AWS_REGION, USER_NAME, meta, one_of, pattern, public_cidr

# Cloud Storage bucket names (without dots' domain rules) and Compute Engine's own names.
GCS_BUCKET = r"[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]"
GCP_PROJECT = r"[a-z][a-z0-9-]{4,28}[a-z0-9]"
GCE_NAME = r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?"


@dataclass(frozen=True)
class Ami:
    method: str = field(
        default="import",
        metadata=meta(
            "import: this build's qcow2 disk becomes the AMI (EBS direct APIs + RegisterImage); "
            "stock: Packer's amazon-ebs provisions `source_ami` (its own packages stay).",
            one_of("import", "stock"),
        ),
    )
    region: str = field(
        default="eu-west-1",
        metadata=meta(
            "AWS region (`build-vm --aws-region` overrides it).",
            pattern(AWS_REGION, "an AWS region like eu-west-1"),
        ),
    )
    instance_type: str = field(
        default="t3.large",
        metadata=meta(
            "method stock: builder instance type.",
            pattern(r"[a-z0-9]+\.[a-z0-9]+", "an instance type"),
        ),
    )
    source_ami: str = field(
        default="",
        metadata=meta(
            "method stock: the Debian AMI to start from.",
            pattern(r"(ami-[0-9a-f]{8,17})?", "an AMI id"),
        ),
    )
    ssh_username: str = field(
        default="admin",
        metadata=meta(
            "method stock: login user of the source AMI.",
            lambda v, _: None if USER_NAME.fullmatch(v) else f"{v!r} is not a user name",
        ),
    )
    encrypt_boot: bool = field(
        default=True, metadata=meta("Encrypt the AMI's snapshot (EBS default key).")
    )
    force_deregister: bool = field(
        default=False,
        metadata=meta(
            "method import: replace an AMI of the same name (names are unique per build)."
        ),
    )
    ssh_cidrs: list[str] = field(
        default_factory=list,
        metadata=meta(
            "method stock: who may reach the builder's SSH port; empty = the caller's public "
            "IP/32 (asked from checkip.amazonaws.com at build time, as Packer's option does).",
            None,
            public_cidr,
        ),
    )


@dataclass(frozen=True)
class Gce:
    bucket: str = field(
        metadata=meta(
            "Cloud Storage bucket the .gce.tar.gz is uploaded to (`--target gce`).",
            pattern(GCS_BUCKET, "a bucket name (3-63 of a-z, 0-9, - and _)"),
        )
    )
    project: str = field(
        metadata=meta(
            "Google Cloud project the image is made in.",
            pattern(GCP_PROJECT, "a Google Cloud project ID"),
        )
    )
    family: str = field(
        default="",
        metadata=meta(
            "Image family (empty: none).", pattern(f"({GCE_NAME})?", "an image family name")
        ),
    )
