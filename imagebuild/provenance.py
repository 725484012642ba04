"""SLSA Provenance v1 for what a build writes: an in-toto Statement v1 whose subjects are the
artifacts (each file's sha256; the container image's manifest digest), wrapped in a DSSE
envelope (the format cosign, in-toto and Packer's provenance post-processor read) and signed
with the user's key when one is given (imagebuild.signing), unsigned otherwise.

What it records: the spec's digest and the target as external parameters; the lock's digest,
its source date and every cache key as internal ones; every resolved dependency with its
sha256 (each .deb and wheel, where it was downloaded from, the base, each Ansible role,
imagebuild's own version and its requirements.lock); the versions of the tools that built it.
No times and no build id: the same inputs give the same bytes (and, with ed25519, the same
signature), so a rebuild can be compared byte for byte."""

from __future__ import annotations

import base64
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagebuild import __version__, app_tree, builder, checksums, profile, roles
from imagebuild.cache import atomic_file, sha256_file
from imagebuild.inputs import Inputs
from imagebuild.spec_sections import HOST_ARCH

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"  # DSSE's payloadType for in-toto statements
BUILD_TYPE = "urn:imagebuild:buildtype:{kind}:v1"  # this README's "Provenance" says what it means
BUILDER_ID = "urn:imagebuild:builder:local"
REQUIREMENTS = roles.PROJECT_ROOT / "requirements.lock"

if TYPE_CHECKING:  # securesystemslib is imported when an envelope is written or read
    from securesystemslib.signer import Signer


def subject(name: str, sha256: str) -> dict[str, Any]:
    return {"name": name, "digest": {"sha256": sha256}}


def _dependencies(inputs: Inputs, kind: str, base: dict[str, Any]) -> list[dict[str, Any]]:
    spec, lock = inputs.spec, inputs.lock
    mirror = lock.mirror.rstrip("/")  # where fetch downloads them from
    debs = set(lock.shared) if kind == "container" else {*lock.shared, *lock.vm}
    deps = [base]
    deps += [
        {"name": p.basename, "uri": f"{mirror}/{p.filename}", "digest": {"sha256": p.sha256}}
        for p in sorted(debs, key=lambda p: p.filename)
    ]
    deps += [
        {"name": w.filename, "uri": w.url, "digest": {"sha256": w.sha256}}
        for w in sorted(lock.python, key=lambda w: w.filename)
    ]
    deps += [
        {"name": f"ansible/roles/{r}", "digest": {"sha256": roles.files_digest(r)}}
        for r in sorted(p.name for p in roles.ROLES_DIR.iterdir() if p.is_dir())
    ]
    deps += [
        {"name": f"ansible/{f}", "digest": {"sha256": sha256_file(roles.ANSIBLE_DIR / f)}}
        for f in ("site.yml", "vm.yml")
    ]
    if spec.app:
        deps.append({"name": "app", "digest": {"sha256": app_tree.digest(spec)}})
    deps.append({"name": "imagebuild", "uri": f"pkg:pypi/imagebuild@{__version__}"})
    deps.append(subject(REQUIREMENTS.name, sha256_file(REQUIREMENTS)))  # what it ran on
    return deps


def statement(
    inputs: Inputs, kind: str, subjects: list[dict[str, Any]], base: dict[str, Any]
) -> dict[str, Any]:
    """The in-toto Statement; `kind`: container, vm; `base`: the resource the build started
    from (the base layer, or the VM's base disk)."""
    spec, lock = inputs.spec, inputs.lock
    return {
        "_type": STATEMENT_TYPE,
        "subject": sorted(subjects, key=lambda s: s["name"]),
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE.format(kind=kind),
                "externalParameters": {
                    "spec": subject(spec.path.name, sha256_file(spec.path)),
                    "target": kind,
                    # Another architecture's (base.architectures); the host's statement as before.
                    **({} if lock.arch == HOST_ARCH else {"architecture": lock.arch}),
                },
                "internalParameters": {
                    "lock": subject(lock.path.name, lock.digest),
                    "sourceDateEpoch": lock.source_date_epoch,
                    "keys": asdict(inputs.keys),
                },
                "resolvedDependencies": _dependencies(inputs, kind, base),
            },
            "runDetails": {"builder": {"id": BUILDER_ID, "version": builder.versions()}},
        },
    }


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _write(dest: Path, payload: bytes, signer: Signer | None) -> None:
    """The DSSE envelope of `payload` as one JSON line (the `.intoto.jsonl` convention), signed
    by `signer` when given; with no signature it is still DSSE, and says it is unsigned."""
    from securesystemslib.dsse import Envelope

    env = Envelope(payload, PAYLOAD_TYPE, {})
    if signer is not None:
        env.sign(signer)
    with atomic_file(dest) as tmp:
        tmp.write_bytes(_canonical(env.to_dict()) + b"\n")


def write_statement(dest: Path, stmt: dict[str, Any], signer: Signer | None) -> None:
    _write(dest, _canonical(stmt), signer)


def write(
    dest: Path, inputs: Inputs, kind: str, subjects: list[dict[str, Any]], base: dict[str, Any]
) -> None:
    with profile.step("provenance made and signed"):
        write_statement(dest, statement(inputs, kind, subjects, base), inputs.signer)


def signer_id(signer: Signer | None) -> list[str]:
    return [signer.public_key.keyid] if signer else []


def signed_by(path: Path) -> list[str] | None:
    """The key ids of the envelope at `path` (None: none there, or not one of ours)."""
    try:
        env = json.loads(path.read_text())
        return sorted(str(s["keyid"]) for s in env["signatures"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def signed_as_asked(dest: Path, inputs: Inputs, kind: str, files: dict[str, Path]) -> bool:
    """For a build with nothing else to do: is the provenance at `dest` signed by this build's
    key (or unsigned without one)? If not, it is signed again, but only once checked to be the
    statement this build would write: every file subject's digest its file's (hashed again) and
    the rest byte-equal to what these inputs give; its SHA256SUMS line follows. False: it is
    not (the caller builds)."""
    if signed_by(dest) == signer_id(inputs.signer):
        return True
    try:
        payload = base64.b64decode(json.loads(dest.read_text())["payload"], validate=True)
        stmt = json.loads(payload)
        subjects, build = stmt["subject"], stmt["predicate"]["buildDefinition"]
        base = build["resolvedDependencies"][0]
        named = {s["name"]: s["digest"]["sha256"] for s in subjects}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False
    if any(sha256_file(path) != named.get(name) for name, path in files.items()):
        return False
    if _canonical(statement(inputs, kind, subjects, base)) != payload:
        return False
    _write(dest, payload, inputs.signer)
    checksums.record(dest.parent, [dest])
    return True


def read_statement(path: Path) -> dict[str, Any]:
    """The statement inside an envelope written by `write` (signature not checked here)."""
    env = json.loads(path.read_text())
    return json.loads(base64.b64decode(env["payload"]))
