"""CycloneDX 1.6 SBOMs of what is really installed in an artifact, made with the CycloneDX
project's own library (cyclonedx-python-lib: its model, its JSON writer, its bundled schema)
instead of hand-written JSON, and validated against that schema before they are written.

Every component carries its purl (`pkg:deb/debian/NAME@VERSION?arch=A`, `pkg:pypi/NAME@VERSION`)
and, when the installed version is the lock's, the sha256 of the .deb or wheel it was installed
from (the lock's, checked by fetch). The metadata component is the artifact itself with its
digest: the OCI manifest for the container, the disk file(s) for the VM. Same inputs, same
bytes: the time is the lock's, the serial number is derived from the artifact's digest, the
lists are sorted by the writer. Imported only when an SBOM is written (imagebuild.inventory):
the library and its schema validator take ~0.15 s to import, which a no-op build never pays."""

from __future__ import annotations

import uuid
import warnings
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL
from packaging.utils import canonicalize_name

from imagebuild.errors import ImageBuildError
from imagebuild.lock.lockfile import Lock
from imagebuild.scan import Report
from imagebuild.spec import Spec

SCHEMA = SchemaVersion.V1_6
# A fixed namespace: an SBOM's serial number is a function of the artifact it describes.
_SERIALS = uuid.UUID("5b0e1f4e-7d3a-4c7e-9a51-1d3f1e6b2c90")


class SbomError(ImageBuildError):
    pass


def _sha256(hexdigest: str | None) -> list[HashType]:
    return [HashType(alg=HashAlgorithm.SHA_256, content=hexdigest)] if hexdigest else []


def components(inv: dict[str, Any], lock: Lock) -> list[Component]:
    debs = {(p.name, p.version): p.sha256 for p in [*lock.shared, *lock.vm]}
    wheels = {(w.name, w.version): w.sha256 for w in lock.python}
    out = []
    for name, version, arch in inv["deb"]:
        purl = PackageURL("deb", "debian", name.split(":")[0], version, {"arch": arch})
        sha = debs.get((name.split(":")[0], version))
        out.append(_library(name, version, purl, sha))
    for name, version in inv["python"]:
        purl = PackageURL("pypi", None, canonicalize_name(name), version)
        out.append(_library(name, version, purl, wheels.get((canonicalize_name(name), version))))
    return out


def _library(name: str, version: str, purl: PackageURL, sha: str | None) -> Component:
    return Component(
        type=ComponentType.LIBRARY,
        name=name,
        version=version,
        purl=purl,
        bom_ref=purl.to_string(),
        hashes=_sha256(sha),
    )


def document(
    inv: dict[str, Any],
    spec: Spec,
    lock: Lock,
    kind: str,
    digest: str,
    ref: str,
    files: dict[str, str],
) -> str:
    """The SBOM as JSON text, checked against CycloneDX's schema (a failure is a bug here,
    raised, never written). The artifact: its `kind` (container, vm), `digest` (sha256 hex),
    bom-ref and further named file digests (imagebuild.inventory.Subject)."""
    os_or_image = ComponentType.OPERATING_SYSTEM, ComponentType.CONTAINER
    root = Component(
        type=os_or_image[kind == "container"],
        name=f"{spec.name} ({kind})",
        version=spec.version,
        bom_ref=ref,
        hashes=_sha256(digest),
        properties=[Property(name=f"imagebuild:file:{n}", value=v) for n, v in files.items()],
    )
    bom = Bom(serial_number=uuid.uuid5(_SERIALS, f"{kind}:{digest}"))
    bom.metadata.timestamp = datetime.fromtimestamp(lock.source_date_epoch, UTC)
    bom.metadata.component = root
    me = metadata.version("imagebuild")
    bom.metadata.tools.components.add(
        Component(type=ComponentType.APPLICATION, name="imagebuild", version=me)
    )
    parts = components(inv, lock)
    bom.components.update(parts)
    bom.register_dependency(root, parts)  # the artifact holds every component: a complete graph
    return _checked(bom, f"{kind} SBOM")


def _checked(bom: Bom, what: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the library warns about what its schema would miss
        text = JsonV1Dot6(bom).output_as_string(indent=1)
    if problem := JsonStrictValidator(SCHEMA).validate_str(text):
        raise SbomError(f"the {what} fails CycloneDX {SCHEMA.to_version()}: {problem}")
    return text + "\n"


def vex(report: Report, lock: Lock) -> str:
    """The scan's findings as a CycloneDX 1.6 VEX document: each vulnerability `affects` the
    locked packages by the bom-ref (their purl) the artifacts' SBOMs give them, state
    `in_triage` (a version match, not an analysis), with the fix to upgrade to. Same lock and
    databases, same bytes: its time is the databases' newest record, its serial derived from
    their digests and the lock's."""
    from cyclonedx.model.vulnerability import (
        BomTarget,
        ImpactAnalysisState,
        Vulnerability,
        VulnerabilityAnalysis,
        VulnerabilityRating,
        VulnerabilitySeverity,
        VulnerabilitySource,
    )

    arch = {(p.name, p.version): p.arch for p in [*lock.shared, *lock.vm]}
    bom = Bom(
        serial_number=uuid.uuid5(
            _SERIALS, "vex:" + ",".join([lock.digest, *(s.sha256 for s in report.db.sources)])
        )
    )
    bom.metadata.timestamp = max(s.newest for s in report.db.sources)
    parts: dict[str, Component] = {}
    for f in report.findings:
        refs = []
        for row in f.installed.rows:
            name, version = row.split(" ", 1)
            if f.installed.ecosystem == "PyPI":
                purl = PackageURL("pypi", None, canonicalize_name(name), version)
            else:
                purl = PackageURL("deb", "debian", name, version, {"arch": arch[(name, version)]})
            parts.setdefault(purl.to_string(), _library(name, version, purl, None))
            refs.append(BomTarget(ref=purl.to_string()))
        bom.vulnerabilities.add(
            Vulnerability(
                bom_ref=f"{f.advisory.id}:{f.installed.name}",
                id=f.advisory.id,
                source=VulnerabilitySource(name="OSV"),
                description=f.advisory.summary or None,
                ratings=[VulnerabilityRating(severity=VulnerabilitySeverity(f.severity))],
                recommendation=f"upgrade to {f.fixed}" if f.fixed else "no fix yet",
                analysis=VulnerabilityAnalysis(state=ImpactAnalysisState.IN_TRIAGE),
                affects=refs,
                properties=[Property(name="imagebuild:alias", value=a) for a in f.advisory.aliases],
            )
        )
    bom.components.update(parts.values())
    return _checked(bom, "VEX")
