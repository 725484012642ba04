"""The equivalence attestation checked offline: the signature with the user's public key, each
subject against what is here, the result; hostile statements are named, never followed."""

from __future__ import annotations

from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner

from imagebuild import provenance
from imagebuild.project import Project
from imagebuild.verify import attestation
from imagebuild.verify.attestation import AttestationError
from tests.conftest import ROOT

EXAMPLE = ROOT / "examples" / "onnx-serve" / "imagebuild.yaml"
ROWS = [
    {"id": "deb:a", "outcome": "passed"},
    {"id": "gpu:driver", "outcome": "skipped"},
    {"id": "env:X", "outcome": "failed"},
]


def _signed(tmp_path: Path, ok: bool, signer: CryptoSigner, **change) -> Path:
    disk, report = tmp_path / "x.qcow2", tmp_path / "report.json"
    disk.write_bytes(b"disk bytes")
    report.write_text("{}")
    rows = ROWS if not ok else ROWS[:2]
    stmt = attestation.statement(
        Project.named(str(EXAMPLE)), rows, ok, ("local/x:1", "sha256:" + "ab" * 32), disk, report
    )
    stmt.update(change)
    dest = tmp_path / "eq.intoto.jsonl"
    provenance.write_statement(dest, stmt, signer)
    return dest


@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")


def test_the_statement_names_both_artifacts_and_every_row(tmp_path: Path) -> None:
    signer = CryptoSigner.generate_ed25519()
    stmt = provenance.read_statement(_signed(tmp_path, False, signer))
    assert [s["annotations"] for s in stmt["subject"]] == [attestation.IMAGE, attestation.DISK]
    p = stmt["predicate"]
    assert p["result"] == "FAILED"
    assert (p["passedTests"], p["warnedTests"], p["failedTests"]) == (
        ["deb:a"],
        ["gpu:driver"],
        ["env:X"],
    )
    assert [c["name"] for c in p["configuration"]][:3] == [
        "report.json",
        "imagebuild.yaml",
        "imagebuild.lock",
    ]


def test_a_statement_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    path = _signed(tmp_path, True, CryptoSigner.generate_ed25519())
    other = CryptoSigner.generate_ed25519().public_key
    with pytest.raises(AttestationError, match="not signed by key"):
        attestation.check(path, other, tmp_path)


def test_every_problem_is_named(tmp_path: Path, no_engine: None) -> None:
    signer = CryptoSigner.generate_ed25519()
    path = _signed(tmp_path, False, signer)
    (tmp_path / "x.qcow2").write_bytes(b"other bytes")
    with pytest.raises(AttestationError) as e:
        attestation.check(path, signer.public_key, tmp_path)
    said = str(e.value)
    assert "image local/x:1: the engine cannot be asked" in said
    assert "x.qcow2: sha256" in said and "the statement says abab" not in said
    assert "it says 'FAILED', not PASSED (1 failed: ['env:X'])" in said


@pytest.mark.parametrize(
    "subject",
    [
        {"name": "../../etc/passwd", "digest": {"sha256": "00"}, "annotations": attestation.DISK},
        {"name": ".hidden", "digest": {"sha256": "00"}, "annotations": attestation.DISK},
        {"name": "x", "digest": {"sha256": "00"}, "annotations": {"imagebuild.kind": "file"}},
        {"name": "x", "digest": "00"},
        "x",
    ],
)
def test_a_hostile_subject_is_named_not_followed(subject: object, tmp_path: Path) -> None:
    signer = CryptoSigner.generate_ed25519()
    good = provenance.read_statement(_signed(tmp_path, True, signer))["subject"]
    path = _signed(tmp_path, True, signer, subject=[good[1], subject])
    with pytest.raises(AttestationError, match=r"subject .*(not an image or a disk|has no name)"):
        attestation.check(path, signer.public_key, tmp_path)


@pytest.mark.parametrize("body", [b"", b"not json", b'{"payload": 1}', b"[]"])
def test_what_is_not_an_envelope_is_said(body: bytes, tmp_path: Path) -> None:
    path = tmp_path / "eq.intoto.jsonl"
    path.write_bytes(body)
    with pytest.raises(AttestationError, match="not a DSSE envelope of a statement"):
        attestation.check(path, CryptoSigner.generate_ed25519().public_key, tmp_path)
