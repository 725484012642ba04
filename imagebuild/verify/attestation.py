"""The equivalence attestation: what `verify` proved, as a statement anyone can check offline.

An in-toto Statement v1 whose subjects are BOTH artifacts (the container image by its ID, the
VM disk file verify booted by its sha256) and whose predicate is in-toto's standard test-result
(v0.1): PASSED only when every row passed or was skipped by design; the rows' ids as
passedTests / failedTests / warnedTests (skipped, with why in the report); the report.json and
the spec and lock it was checked against as configuration (each by sha256). Wrapped and signed
as the provenance is (imagebuild.provenance, --sign-key). `invoke verify-attestation` checks
one: the signature with the user's public key, each subject against the artifact on this
machine, and that it says PASSED."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import Key

from imagebuild import __version__, provenance
from imagebuild.cache import sha256_file
from imagebuild.errors import ImageBuildError
from imagebuild.project import Project

PREDICATE_TYPE = "https://in-toto.io/attestation/test-result/v0.1"
NAME = "equivalence.intoto.jsonl"  # in dist/verify/, beside report.json
MAX_BYTES = 16 << 20  # a statement of a few thousand rows is well under 1 MiB
# What each subject is (a reference and a file name can look alike): the check reads this.
IMAGE, DISK = {"imagebuild.kind": "container-image"}, {"imagebuild.kind": "vm-disk"}


class AttestationError(ImageBuildError):
    pass


def statement(
    project: Project,
    rows: list[dict[str, Any]],
    ok: bool,
    image: tuple[str, str],
    disk: Path,
    report: Path,
) -> dict[str, Any]:
    """`image`: (reference, image ID); `disk`: the file verify booted (qcow2, box or OVA)."""
    ref, image_id = image
    ids = {
        o: sorted(r["id"] for r in rows if r.get("outcome") == o)
        for o in ("passed", "failed", "skipped")
    }
    spec, lock = project.spec, project.lock
    return {
        "_type": provenance.STATEMENT_TYPE,
        "subject": [
            provenance.subject(ref, image_id.removeprefix("sha256:")) | {"annotations": IMAGE},
            provenance.subject(disk.name, sha256_file(disk)) | {"annotations": DISK},
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "result": "PASSED" if ok else "FAILED",
            "configuration": [
                provenance.subject(report.name, sha256_file(report)),
                provenance.subject(spec.path.name, sha256_file(spec.path)),
                provenance.subject(lock.path.name, lock.digest),
                {"name": "imagebuild", "uri": f"pkg:pypi/imagebuild@{__version__}"},
            ],
            "passedTests": ids["passed"],
            "failedTests": ids["failed"],
            "warnedTests": ids["skipped"],
        },
    }


@dataclass(frozen=True)
class Checked:
    keyid: str
    result: str
    rows: int
    subjects: list[str]


def check(path: Path, key: Key, dist: Path, vm: Path | None = None) -> Checked:
    """Check the attestation at `path` offline: signed by `key`, each subject the artifact here
    (the image in the engine by reference; the disk file in `dist`, or `vm`), and PASSED. Raises
    AttestationError naming every problem."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise AttestationError(f"{path}: {path.stat().st_size} bytes: not an attestation")
        env = Envelope.from_dict(json.loads(path.read_text()))
        stmt = json.loads(env.payload)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise AttestationError(f"{path}: not a DSSE envelope of a statement ({e!r})") from None
    if not isinstance(stmt, dict):
        raise AttestationError(f"{path}: its payload is not an in-toto statement")
    try:
        env.verify([key], 1)
    except VerificationError:
        raise AttestationError(f"{path}: not signed by key {key.keyid[:16]}") from None
    problems = []
    if (
        stmt.get("_type") != provenance.STATEMENT_TYPE
        or stmt.get("predicateType") != PREDICATE_TYPE
    ):
        problems.append("not an imagebuild equivalence statement (in-toto test-result)")
    listed, said = stmt.get("subject"), stmt.get("predicate")
    subjects: list[Any] = listed if isinstance(listed, list) else []
    if len(subjects) != 2:
        problems.append(f"{len(subjects)} subjects: the image and the VM disk expected")
    for s in subjects:
        problems += _subject_problem(s, dist, vm)
    predicate: dict[str, Any] = said if isinstance(said, dict) else {}
    if (result := predicate.get("result")) != "PASSED":
        failed = [str(f) for f in _list(predicate.get("failedTests"))]
        problems.append(f"it says {result!r}, not PASSED ({len(failed)} failed: {failed[:5]})")
    if problems:
        raise AttestationError(f"{path}: " + "; ".join(problems))
    rows = len(_list(predicate.get("passedTests"))) + len(_list(predicate.get("warnedTests")))
    return Checked(key.keyid, str(result), rows, [str(s["name"]) for s in subjects])


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _subject_problem(s: Any, dist: Path, vm: Path | None) -> list[str]:
    try:
        name, want, kind = str(s["name"]), str(s["digest"]["sha256"]), s["annotations"]
    except (KeyError, TypeError):
        return [f"subject {str(s)[:80]!r} has no name, sha256 and kind"]
    if kind == IMAGE:
        try:
            got = docker.from_env().images.get(name).id.removeprefix("sha256:")
        except docker.errors.ImageNotFound:
            return [f"image {name} is not in this engine"]
        except docker.errors.DockerException as e:
            return [f"image {name}: the engine cannot be asked ({e})"]
        return (
            [] if got == want else [f"image {name} is {got[:12]}, the statement says {want[:12]}"]
        )
    if kind != DISK or "/" in name or name.startswith("."):
        return [f"subject {name[:80]!r}: not an image or a disk file name"]
    file = vm if vm is not None and vm.name == name else dist / name
    if not file.is_file():
        return [f"{name}: not found in {dist}" + (" (--vm names another file)" if vm else "")]
    got = sha256_file(file)
    return [] if got == want else [f"{file}: sha256 {got[:12]}, the statement says {want[:12]}"]
