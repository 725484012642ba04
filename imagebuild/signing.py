"""The user's key for signing provenance: a PEM private key file (PKCS#8, or the PEM `openssl`
writes for the key type), ed25519 or ECDSA P-256, given by `--sign-key FILE` or
$IMAGEBUILD_SIGN_KEY (its passphrase, if any, in $IMAGEBUILD_SIGN_KEY_PASSWORD). Read once,
checked before anything is built, held in memory only: nothing writes it, records and logs name
its key id (securesystemslib's: the sha256 of the public key's canonical form) and never its
path's content. Signing is securesystemslib's CryptoSigner (the DSSE reference implementation's
library, on pyca/cryptography)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagebuild import userfiles
from imagebuild.errors import OptionError

if TYPE_CHECKING:  # imported when a key is given: every task's start-up would pay ~0.2 s
    from securesystemslib.signer import CryptoSigner, SSlibKey

ENV = "IMAGEBUILD_SIGN_KEY"
PASSWORD_ENV = "IMAGEBUILD_SIGN_KEY_PASSWORD"
MAX_BYTES = 64 << 10  # a PEM private key is a few hundred bytes
HELP = (
    f"Sign the provenance with this private key (PEM, ed25519 or ECDSA P-256; default "
    f"${ENV}; passphrase in ${PASSWORD_ENV}). Without one it is written unsigned."
)


def _file(source: str, path: Path) -> bytes:
    """The bytes of a key file, refused (OptionError naming `source`) if it is not one."""
    try:
        return userfiles.read_regular(path, MAX_BYTES)
    except ValueError as e:
        raise _refuse(source, path, str(e)) from None


def _refuse(source: str, path: Path, why: str) -> OptionError:
    return OptionError([f"{source}: {path}: {why}"])


def _sslib(public: Any) -> SSlibKey:
    from cryptography.hazmat.primitives.asymmetric import ec
    from securesystemslib.signer import SSlibKey

    if isinstance(public, ec.EllipticCurvePublicKey):
        return SSlibKey.from_crypto(public, scheme="ecdsa-sha2-nistp256")
    return SSlibKey.from_crypto(public)


def load_public(option: str, value: str) -> SSlibKey:
    """A PEM public key (ed25519 or ECDSA P-256) to check a signature with."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    path = Path(value)
    try:
        key = serialization.load_pem_public_key(_file(option, path))
    except (ValueError, UnsupportedAlgorithm) as e:
        raise _refuse(option, path, f"not a PEM public key ({str(e).splitlines()[0]})") from None
    if isinstance(key, ed25519.Ed25519PublicKey) or (
        isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    ):
        return _sslib(key)
    raise _refuse(option, path, "ed25519 or ECDSA P-256 (secp256r1) keys only")


def load(option: str | None) -> CryptoSigner | None:
    """The signer for `--sign-key` (else $IMAGEBUILD_SIGN_KEY), or None when neither is set;
    OptionError (exit 2) naming the option and the file when it cannot sign."""
    source, value = ("--sign-key", option) if option else (f"${ENV}", os.environ.get(ENV))
    if not value:
        return None
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from securesystemslib.signer import CryptoSigner

    path = Path(value)
    data = _file(source, path)
    password = os.environ.get(PASSWORD_ENV)
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
    except TypeError as e:  # encrypted without a passphrase, or a passphrase it does not need
        raise _refuse(source, path, f"{e} (${PASSWORD_ENV})") from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise _refuse(source, path, f"not a PEM private key ({str(e).splitlines()[0]})") from None
    if isinstance(key, ed25519.Ed25519PrivateKey) or (
        isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    ):
        return CryptoSigner(key, _sslib(key.public_key()))
    kind = key.curve.name if isinstance(key, ec.EllipticCurvePrivateKey) else type(key).__name__
    raise _refuse(source, path, f"a {kind} key; ed25519 or ECDSA P-256 (secp256r1) only")
