"""Release keys: Ed25519 or ECDSA P-256, stored as PEM, identified by H(SPKI DER).

Only these two kinds can seal a card (COSE alg -8 and -7), so anything else is refused
at load time with a message naming the file rather than at signing time.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import cast

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from .errors import LaminateError
from .files import write_atomic

KINDS = ("ed25519", "p256")
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


def generate_private_key(kind: str = "ed25519") -> PrivateKey:
    """A fresh release key of ``kind`` ('ed25519' or 'p256'); any other kind
    raises LaminateError."""
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise LaminateError(f"key kind {kind!r}: expected one of {', '.join(KINDS)}")


def key_kind(key) -> str:
    """'ed25519' or 'p256' for a supported private or public key, else LaminateError."""
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "ed25519"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) \
            and isinstance(key.curve, ec.SECP256R1):
        return "p256"
    raise LaminateError(f"unsupported key type {type(key).__name__}: expected Ed25519 or P-256")


def save_private_key(key: PrivateKey, path) -> Path:
    """Write PKCS#8 PEM readable by the owner only (created 0600 before any secret byte
    is written), replacing any previous key only once the new one is complete."""
    key_kind(key)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return write_atomic(path, pem, mode=0o600)


def load_private_key(path) -> PrivateKey:
    """The unencrypted PEM private key at ``path``; raises LaminateError naming the
    file when it cannot be read, is not such a key, or is not Ed25519 or P-256."""
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise LaminateError(f"{path}: not an unencrypted PEM private key ({_first_line(exc)})") \
            from None
    _check_kind(key, path)
    return cast(PrivateKey, key)  # _check_kind admits Ed25519 and P-256 only


def load_public_key(path_or_pem) -> PublicKey:
    """A public key from a PEM/DER SubjectPublicKeyInfo or an X.509 certificate, given
    as a path or as the bytes themselves."""
    if isinstance(path_or_pem, (bytes, bytearray)):
        data, where = bytes(path_or_pem), "public key"
    else:
        data, where = _read(path_or_pem, "public key"), str(path_or_pem)
    key = _parse_public(data)
    if key is None:
        raise LaminateError(f"{where}: not a PEM or DER public key or certificate")
    _check_kind(key, where)
    return key


def public_key_of(key) -> PublicKey:
    """The public half of a private key; a public key is returned as it is."""
    return key.public_key() if hasattr(key, "private_bytes") else key


def public_pem(key) -> bytes:
    """The SubjectPublicKeyInfo PEM of a private or public key."""
    return public_key_of(key).public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)


def spki_der(key) -> bytes:
    """The SubjectPublicKeyInfo DER of a private or public key (what key_id hashes)."""
    return public_key_of(key).public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(public_key) -> bytes:
    """The COSE kid of a release key: SHA-256 of its SubjectPublicKeyInfo DER."""
    return hashlib.sha256(spki_der(public_key)).digest()


def _parse_public(data: bytes):
    from cryptography import x509

    loaders = (serialization.load_pem_public_key, serialization.load_der_public_key,
               lambda d: x509.load_pem_x509_certificate(d).public_key(),
               lambda d: x509.load_der_x509_certificate(d).public_key())
    for loader in loaders:
        try:
            return loader(data)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
    return None


def _check_kind(key, where) -> None:
    try:
        key_kind(key)
    except LaminateError as exc:
        raise LaminateError(f"{where}: {exc}") from None


def _read(path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise LaminateError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
