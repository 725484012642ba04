"""What a scan writes beside the artifacts built in a dist folder: the findings as a CycloneDX
VEX document (imagebuild.sbom.vex) and as an in-toto statement with the vulnerability
predicate (https://in-toto.io/attestation/vulns/v0.1, what `cosign attest --type vuln`
writes) in a DSSE envelope, signed with the user's key when one is given. Its subjects are
the artifacts' own (read from their provenance, each file subject checked against
SHA256SUMS); `scanner.db` names the databases by sha256 and the date of their newest record.

Kept apart from the provenance on purpose: a database refresh is not a build input, and must
not make a build with nothing changed rebuild or re-sign its statements."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagebuild import __version__, checksums, distnames, progress, provenance, sbom
from imagebuild.cache import atomic_file
from imagebuild.errors import ImageBuildError
from imagebuild.lock import Lock
from imagebuild.scan import Report
from imagebuild.spec import Spec

PREDICATE_TYPE = "https://in-toto.io/attestation/vulns/v0.1"

if TYPE_CHECKING:
    from securesystemslib.signer import Signer


ALL = (distnames.CONTAINER_PROVENANCE, distnames.VM_PROVENANCE, distnames.AMI_PROVENANCE)


def subjects(
    dist: Path, spec: Spec, lock: Lock, kinds: tuple[str, ...] = ALL
) -> list[dict[str, Any]]:
    """The subjects of the provenance (`kinds`: their suffixes) of the artifacts built in
    `dist` from this lock (another lock's are left out, saying so: their findings would be
    another lock's), each file subject the one SHA256SUMS lists."""
    sums, found = checksums.read(dist), {}
    for suffix in kinds:
        path = distnames.path(dist, spec, suffix)
        if not path.is_file():
            continue
        if problems := checksums.check(dist, [path]):
            raise ImageBuildError(f"{problems[0]}: build again before scanning it")
        stmt = provenance.read_statement(path)
        made_from = stmt["predicate"]["buildDefinition"]["internalParameters"]["lock"]
        if made_from["digest"]["sha256"] != lock.digest:
            progress.say(
                f"scan: {path.name} is of an artifact built from another lock than "
                f"{lock.path.name} (sha256 {made_from['digest']['sha256'][:12]}, this one "
                f"{lock.digest[:12]}): not vouched for"
            )
            continue
        for s in stmt["subject"]:
            name, sha = s["name"], s["digest"]["sha256"]
            if name in sums and sums[name] != sha:
                raise ImageBuildError(
                    f"{dist / name}: not the artifact {path.name} describes: build again"
                )
            found[name] = provenance.subject(name, sha)
    if not found:
        raise ImageBuildError(
            f"{dist}: no artifact of {spec.name} built there from {lock.path.name} (no "
            "provenance naming it): build it first, or scan without --dist"
        )
    return [found[n] for n in sorted(found)]


def statement(report: Report, subjects: list[dict[str, Any]]) -> dict[str, Any]:
    """The in-toto Statement. No scan times (`metadata` left out): the databases' date is the
    one that matters, and the same inputs give the same bytes."""
    sources = report.db.sources
    return {
        "_type": provenance.STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "invocation": {
                "parameters": [f"--db {s.path.name}" for s in sources],
                "builder.id": provenance.BUILDER_ID,
            },
            "scanner": {
                "uri": f"pkg:pypi/imagebuild@{__version__}",
                "version": __version__,
                "db": {
                    "uri": ",".join(s.path.name for s in sources),
                    "version": ",".join(f"sha256:{s.sha256}" for s in sources),
                    "lastUpdate": f"{report.db.newest:%Y-%m-%dT%H:%M:%SZ}",
                },
                "result": [
                    {
                        "id": f.advisory.id,
                        "severity": [{"method": "imagebuild", "score": f.severity}],
                        "annotations": [
                            {"package": f.installed.name},
                            {"installed": f.installed.version},
                            {"fixed": f.fixed},
                            {"aliases": ",".join(f.advisory.aliases)},
                        ],
                    }
                    for f in report.findings
                ],
            },
        },
    }


def write(
    report: Report,
    lock: Lock,
    spec: Spec,
    dist: Path,
    signer: Signer | None,
    kinds: tuple[str, ...] = ALL,
) -> list[Path]:
    """The VEX document and the signed statement in `dist` about the artifacts whose
    provenance (`kinds`) is there, listed in SHA256SUMS."""
    about = subjects(dist, spec, lock, kinds)
    vex = distnames.path(dist, spec, distnames.SCAN_VEX)
    att = distnames.path(dist, spec, distnames.SCAN_ATTESTATION)
    with atomic_file(vex) as tmp:
        tmp.write_text(sbom.vex(report, lock))
    provenance.write_statement(att, statement(report, about), signer)
    checksums.record(dist, [vex, att])
    return [vex, att]
