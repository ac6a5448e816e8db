"""COSE_Sign1 (RFC 9052) signing and verification without pycose.

Cards are sealed with EdDSA (Ed25519) or ES256; verification also accepts ES384, ES512
and Ed448 so our code can be checked against the public COSE working-group examples.
ECDSA signatures are raw r||s (RFC 9053 §2.1), never DER.
"""
from __future__ import annotations

from typing import NamedTuple

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from . import cbor
from .errors import CardFormatError

ALG_EDDSA = -8
ALG_ES256 = -7
ALG_ES384 = -35
ALG_ES512 = -36
# Fully specified algorithms: the identifier alone names the curve (Ed25519, P-256),
# so a verifier needs no key to know what it checks. New cards use these.
ALG_ED25519 = -19
ALG_ESP256 = -9
TAG_SIGN1 = 18
HDR_ALG, HDR_CRIT, HDR_CONTENT_TYPE, HDR_KID = 1, 2, 3, 4
HDR_CWT_CLAIMS, HDR_TYP = 15, 16
HDR_RECEIPTS = 394             # unprotected: transparency receipts for the statement
CWT_ISS, CWT_SUB = 1, 2

_ECDSA_HASH: dict[int, type[hashes.HashAlgorithm]] = {
    ALG_ES256: hashes.SHA256, ALG_ES384: hashes.SHA384, ALG_ES512: hashes.SHA512,
    ALG_ESP256: hashes.SHA256}
_CURVE_OF = {ALG_ESP256: "secp256r1"}  # a fully specified ECDSA algorithm's one curve
SUPPORTED_ALGS = (ALG_EDDSA, ALG_ED25519, *_ECDSA_HASH)
_UNDERSTOOD_HEADERS = {HDR_ALG, HDR_CRIT, HDR_CONTENT_TYPE, HDR_KID, HDR_CWT_CLAIMS, HDR_TYP}


class Sign1(NamedTuple):
    """A parsed COSE_Sign1: the decoded and the raw protected header (the signature
    covers the raw bytes), the unprotected header, payload, signature, and the alg and kid
    read from the headers."""
    protected: dict
    protected_bytes: bytes
    unprotected: dict
    payload: bytes
    signature: bytes
    alg: int
    kid: bytes | None


def sig_structure(protected_bytes: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """The bytes actually signed: ["Signature1", protected, external_aad, payload]."""
    return cbor.dumps(["Signature1", bytes(protected_bytes), bytes(external_aad), bytes(payload)])


def fully_specified_alg(key) -> int:
    """The fully specified algorithm of an Ed25519 or P-256 key (what new cards use)."""
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return ALG_ED25519
    if (isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey))
            and key.curve.name == "secp256r1"):
        return ALG_ESP256
    raise CardFormatError("alg", f"no fully specified COSE algorithm for {type(key).__name__}")


def alg_for_key(key) -> int:
    """The COSE algorithm a private or public key signs with."""
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey,
                        ed448.Ed448PrivateKey, ed448.Ed448PublicKey)):
        return ALG_EDDSA
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        by_curve = {"secp256r1": ALG_ES256, "secp384r1": ALG_ES384, "secp521r1": ALG_ES512}
        if key.curve.name in by_curve:
            return by_curve[key.curve.name]
    raise CardFormatError("alg", f"no COSE algorithm for key type {type(key).__name__}")


def sign_bytes(private_key, alg: int, data: bytes) -> bytes:
    """Sign ``data`` with ``alg``; ECDSA output is raw r||s sized to the curve."""
    if alg == ALG_EDDSA and isinstance(private_key, (ed25519.Ed25519PrivateKey,
                                                     ed448.Ed448PrivateKey)):
        return private_key.sign(data)
    if alg == ALG_ED25519 and isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(data)
    if (alg in _ECDSA_HASH and isinstance(private_key, ec.EllipticCurvePrivateKey)
            and _CURVE_OF.get(alg, private_key.curve.name) == private_key.curve.name):
        der = private_key.sign(data, ec.ECDSA(_ECDSA_HASH[alg]()))
        r, s = decode_dss_signature(der)
        size = _coordinate_size(private_key.curve)
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    raise CardFormatError("alg", f"algorithm {alg} does not match key type "
                                 f"{type(private_key).__name__}")


def verify_bytes(public_key, alg: int, data: bytes, signature: bytes) -> bool:
    """True iff ``signature`` is ``alg``'s signature of ``data`` by ``public_key``; a key
    of the wrong type for ``alg`` or a malformed signature is simply False."""
    try:
        if alg == ALG_EDDSA and isinstance(public_key, (ed25519.Ed25519PublicKey,
                                                        ed448.Ed448PublicKey)):
            public_key.verify(bytes(signature), data)
            return True
        if alg == ALG_ED25519 and isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(bytes(signature), data)
            return True
        if (alg in _ECDSA_HASH and isinstance(public_key, ec.EllipticCurvePublicKey)
                and _CURVE_OF.get(alg, public_key.curve.name) == public_key.curve.name):
            size = _coordinate_size(public_key.curve)
            if len(signature) != 2 * size:
                return False
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            if r == 0 or s == 0:
                return False
            public_key.verify(encode_dss_signature(r, s), data, ec.ECDSA(_ECDSA_HASH[alg]()))
            return True
    except (InvalidSignature, ValueError):
        return False
    return False


def sign1(payload: bytes, private_key, *, kid: bytes, external_aad: bytes = b"",
          alg: int | None = None, headers: dict | None = None) -> bytes:
    """A tagged COSE_Sign1 with {alg, kid} and ``headers`` protected and an empty
    unprotected map; ``alg`` defaults to the key's polymorphic algorithm (EdDSA, ES256)."""
    alg = alg_for_key(private_key) if alg is None else alg
    protected_bytes = cbor.dumps({HDR_ALG: alg, HDR_KID: bytes(kid), **(headers or {})})
    signature = sign_bytes(private_key, alg,
                           sig_structure(protected_bytes, payload, external_aad))
    return cbor.dumps(cbor2.CBORTag(TAG_SIGN1, [protected_bytes, {}, bytes(payload), signature]))


def parse_sign1(data: bytes, *, require_tag: bool = False, deterministic: bool = False,
                field: str = "cose") -> Sign1:
    """Decode a COSE_Sign1 (tag 18, or untagged unless ``require_tag``) strictly; with
    ``deterministic`` the message and its protected header must be in deterministic
    encoding. No signature is checked here.

    Raises CardFormatError naming the part (``{field}``, ``{field}.protected``,
    ``{field}.unprotected.crit``, ...) for malformed CBOR, a wrong shape, an alg that is
    missing or unsupported, a kid that is not a byte string, a header both protected and
    unprotected, and a crit header that is unprotected, empty or names a header not
    understood."""
    item = cbor.loads(data, deterministic=deterministic, field=field)
    if isinstance(item, cbor2.CBORTag):
        if item.tag != TAG_SIGN1:
            raise CardFormatError(field, f"CBOR tag {item.tag} is not COSE_Sign1 (18)")
        item = item.value
    elif require_tag:
        raise CardFormatError(field, "missing COSE_Sign1 tag 18")
    if not isinstance(item, list) or len(item) != 4:
        raise CardFormatError(field, "COSE_Sign1 must be an array of 4 items")
    protected_bytes, unprotected, payload, signature = item
    if not isinstance(protected_bytes, bytes):
        raise CardFormatError(f"{field}.protected", "expected a byte string")
    if not isinstance(unprotected, dict):
        raise CardFormatError(f"{field}.unprotected", "expected a map")
    if payload is None:
        raise CardFormatError(f"{field}.payload", "detached payloads are not supported")
    if not isinstance(payload, bytes):
        raise CardFormatError(f"{field}.payload", "expected a byte string")
    if not isinstance(signature, bytes):
        raise CardFormatError(f"{field}.signature", "expected a byte string")
    protected = {}
    if protected_bytes:
        protected = cbor.loads(protected_bytes, deterministic=deterministic,
                               field=f"{field}.protected")
        if not isinstance(protected, dict):
            raise CardFormatError(f"{field}.protected", "expected a serialized map")
    both = set(protected) & set(unprotected)
    if both:
        raise CardFormatError(f"{field}.unprotected",
                              f"header {sorted(both, key=repr)[0]!r} is both protected and unprotected")
    _check_crit(protected, unprotected, field)
    alg = protected.get(HDR_ALG, unprotected.get(HDR_ALG))
    if alg is None:
        raise CardFormatError(f"{field}.protected.alg", "missing")
    if type(alg) is not int or alg not in SUPPORTED_ALGS:
        raise CardFormatError(f"{field}.protected.alg", f"unsupported algorithm {alg!r}")
    kid = protected.get(HDR_KID, unprotected.get(HDR_KID))
    if (HDR_KID in protected or HDR_KID in unprotected) and type(kid) is not bytes:
        raise CardFormatError(f"{field}.protected.kid", "expected a byte string")
    return Sign1(protected, protected_bytes, unprotected, payload, signature, alg, kid)


def verify_sign1(msg: Sign1, public_key, external_aad: bytes = b"") -> bool:
    """True iff the signature over the Sig_structure verifies with ``public_key``."""
    # RFC 9052 §4.4: an empty protected map is signed as a zero-length string, whichever
    # way the sender serialized it.
    protected_bytes = msg.protected_bytes if msg.protected else b""
    return verify_bytes(public_key, msg.alg,
                        sig_structure(protected_bytes, msg.payload, external_aad),
                        msg.signature)


def _check_crit(protected: dict, unprotected: dict, field: str) -> None:
    if HDR_CRIT in unprotected:
        raise CardFormatError(f"{field}.unprotected.crit", "crit must be protected")
    if HDR_CRIT not in protected:
        return
    crit = protected[HDR_CRIT]
    if not isinstance(crit, list) or not crit:
        raise CardFormatError(f"{field}.protected.crit", "expected a non-empty array")
    unknown = [label for label in crit
               if type(label) is not int or label not in _UNDERSTOOD_HEADERS - {HDR_CRIT}]
    if unknown:
        raise CardFormatError(f"{field}.protected.crit",
                              f"critical header {unknown[0]!r} is not understood")


def _coordinate_size(curve) -> int:
    return (curve.key_size + 7) // 8
