"""Provenance: an in-toto Statement v1 with an SLSA Provenance v1 predicate, in a DSSE envelope,
read back by the in-toto project's own bindings (protobuf, unknown fields refused) and its
signature checked twice: by securesystemslib and by hand over DSSE's pre-authentication
encoding with pyca/cryptography. The signing key is checked before anything runs."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.statement import Statement
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner

from imagebuild import checksums, provenance, requested, signing, spec
from imagebuild.cache import Cache
from imagebuild.errors import OptionError
from imagebuild.fetch import FetchResult
from imagebuild.inputs import Inputs, prepare
from imagebuild.lock import lockfile
from tests.conftest import ROOT

EXAMPLE = ROOT / "examples" / "onnx-serve" / "imagebuild.yaml"
SUBJECTS = [provenance.subject("x.oci.tar", "ab" * 32), provenance.subject("x:1", "cd" * 32)]
BASE = provenance.subject("base layer", "ef" * 32)


def _inputs(tmp_path: Path, signer: CryptoSigner | None = None) -> Inputs:
    s = spec.load(EXAMPLE)
    lock = lockfile.read(EXAMPLE.with_suffix(".lock"))
    fetched = FetchResult(0, 0, 0, tmp_path, tmp_path, tmp_path)
    return prepare(requested.of(s), lock, Cache(tmp_path / "cache"), fetched, None, signer)


def _pem(key: Any, path: Path, password: bytes | None = None) -> Path:
    enc = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    )
    return path


def _envelope(d: dict[str, Any]) -> Envelope:
    return Envelope.from_dict(json.loads(json.dumps(d)))  # from_dict consumes what it reads


def _written(tmp_path: Path, signer: CryptoSigner | None) -> tuple[dict[str, Any], bytes]:
    dest = tmp_path / "x.intoto.jsonl"
    provenance.write(dest, _inputs(tmp_path, signer), "container", SUBJECTS, BASE)
    return json.loads(dest.read_text()), dest.read_bytes()


def test_the_statement_is_what_the_in_toto_bindings_read(tmp_path: Path) -> None:
    env, _ = _written(tmp_path, None)
    assert env["payloadType"] == "application/vnd.in-toto+json" and env["signatures"] == []
    payload = base64.b64decode(env["payload"])
    pb = json_format.Parse(payload, statement_pb2.Statement())  # unknown fields: an error
    Statement.copy_from_pb(pb).validate()
    assert pb.predicate_type == "https://slsa.dev/provenance/v1"
    predicate = json.loads(payload)["predicate"]
    prov = json_format.ParseDict(predicate, provenance_pb2.Provenance())  # SLSA v1's fields
    deps = {d.name: d for d in prov.build_definition.resolved_dependencies}
    lock = lockfile.read(EXAMPLE.with_suffix(".lock"))
    for item in lock.shared:
        d = deps[item.basename]
        assert d.digest["sha256"] == item.sha256 and d.uri.endswith("/" + item.filename)
    shared = {p.basename for p in lock.shared}
    assert lock.vm and not [p for p in lock.vm if p.basename in deps and p.basename not in shared]
    for w in lock.python:
        assert deps[w.filename].digest["sha256"] == w.sha256 and deps[w.filename].uri == w.url
    assert {"base layer", "ansible/roles/app", "ansible/site.yml", "requirements.lock"} <= set(deps)
    ext = predicate["buildDefinition"]["externalParameters"]
    assert ext["spec"]["digest"]["sha256"] == hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()
    assert [s.name for s in pb.subject] == ["x.oci.tar", "x:1"]


@pytest.mark.parametrize(
    "key", [ed25519.Ed25519PrivateKey.generate(), ec.generate_private_key(ec.SECP256R1())]
)
def test_a_signed_envelope_verifies_with_the_public_key_and_only_with_it(
    key: Any, tmp_path: Path
) -> None:
    signer = signing.load(str(_pem(key, tmp_path / "key.pem")))
    assert signer is not None
    env, _ = _written(tmp_path, signer)
    [sig] = env["signatures"]
    assert sig["keyid"] == signer.public_key.keyid
    # DSSE v1 by hand: PAE(type, body) signed with the key, checked with pyca/cryptography
    body, ptype = base64.b64decode(env["payload"]), env["payloadType"].encode()
    pae = b"DSSEv1 %d %b %d %b" % (len(ptype), ptype, len(body), body)
    raw = base64.b64decode(sig["sig"])
    pub = key.public_key()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        pub.verify(raw, pae)
    else:
        pub.verify(
            raw,
            pae,
            ec.ECDSA(hashes.SHA256()),
        )
    _envelope(env).verify([signer.public_key], 1)
    tampered = dict(
        env, payload=base64.b64encode(body.replace(b"x.oci.tar", b"y.oci.tar")).decode()
    )
    with pytest.raises(VerificationError):
        _envelope(tampered).verify([signer.public_key], 1)
    other = CryptoSigner.generate_ed25519()
    with pytest.raises(VerificationError):
        _envelope(env).verify([other.public_key], 1)


def test_the_same_inputs_give_the_same_bytes(tmp_path: Path) -> None:
    key = _pem(ed25519.Ed25519PrivateKey.generate(), tmp_path / "k.pem")
    one = _written(tmp_path, signing.load(str(key)))[1]
    assert _written(tmp_path, signing.load(str(key)))[1] == one
    assert provenance.signed_by(tmp_path / "x.intoto.jsonl") == [
        signing.load(str(key)).public_key.keyid
    ]  # type: ignore[union-attr]


def test_the_key_comes_from_the_option_else_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(signing.ENV, raising=False)
    assert signing.load(None) is None
    key = _pem(ed25519.Ed25519PrivateKey.generate(), tmp_path / "k.pem", b"s3cret")
    monkeypatch.setenv(signing.ENV, str(key))
    with pytest.raises(
        OptionError, match=r"^\$IMAGEBUILD_SIGN_KEY: .*k.pem: .*IMAGEBUILD_SIGN_KEY_PASSWORD"
    ):
        signing.load(None)
    monkeypatch.setenv(signing.PASSWORD_ENV, "s3cret")
    assert signing.load(None) is not None


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda p: p / "absent.pem", "No such file"),
        (lambda p: _fifo(p / "fifo"), "not a regular file"),
        (lambda p: p, "not a regular file"),
        (
            lambda p: (
                (p / "g.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n") and p / "g.pem"
            ),
            "not a PEM private key",
        ),
        (
            lambda p: (p / "big.pem").write_bytes(b"x" * (signing.MAX_BYTES + 1)) and p / "big.pem",
            "bytes, more than",
        ),
        (
            lambda p: _pem(rsa.generate_private_key(65537, 2048), p / "rsa.pem"),
            "RSA.* ed25519 or ECDSA P-256",
        ),
        (lambda p: _pem(ec.generate_private_key(ec.SECP384R1()), p / "p384.pem"), "secp384r1 key"),
    ],
)
def test_a_key_that_cannot_sign_is_refused_naming_the_option(
    make: Any, why: str, tmp_path: Path
) -> None:
    path = make(tmp_path)
    with pytest.raises(OptionError, match=f"^--sign-key: {path}: .*{why}"):
        signing.load(str(path))


def test_nothing_changed_but_the_key_signs_the_same_statement_only_once_checked(
    tmp_path: Path,
) -> None:
    art = tmp_path / "x.oci.tar"
    art.write_bytes(b"image bytes")
    subjects = [provenance.subject(art.name, hashlib.sha256(b"image bytes").hexdigest())]
    dest, files = tmp_path / "x.intoto.jsonl", {art.name: art}
    provenance.write(dest, _inputs(tmp_path), "container", subjects, BASE)
    unsigned = json.loads(dest.read_text())
    assert provenance.signed_as_asked(dest, _inputs(tmp_path), "container", files)
    assert not (tmp_path / "SHA256SUMS").exists()  # nothing to do: nothing written
    signer = CryptoSigner.generate_ed25519()
    keyed = _inputs(tmp_path, signer)
    assert provenance.signed_as_asked(dest, keyed, "container", files)
    env = json.loads(dest.read_text())
    assert env["payload"] == unsigned["payload"]
    _envelope(env).verify([signer.public_key], 1)
    assert checksums.read(tmp_path)[dest.name] == hashlib.sha256(dest.read_bytes()).hexdigest()
    # not signed again: the artifact is not the subject any more, or the statement is not
    # what these inputs give
    before = dest.read_bytes()
    art.write_bytes(b"other bytes")
    assert not provenance.signed_as_asked(dest, _inputs(tmp_path), "container", files)
    art.write_bytes(b"image bytes")
    stmt = json.loads(base64.b64decode(env["payload"]))
    stmt["predicate"]["buildDefinition"]["resolvedDependencies"][1]["uri"] = "https://evil/x.deb"
    forged = dict(env, payload=base64.b64encode(json.dumps(stmt).encode()).decode())
    dest.write_text(json.dumps(forged))
    assert not provenance.signed_as_asked(dest, _inputs(tmp_path), "container", files)
    dest.write_bytes(before)
    assert provenance.signed_as_asked(dest, _inputs(tmp_path), "container", files)
