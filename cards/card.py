"""Sealing and opening a laminated card (a COSE_Sign1 over the deterministic payload).

Opening only proves the bytes are a well-formed card; it makes no trust decision.
Whether the release key, the evidence and the claims are trustworthy is the verifier's.
"""
from __future__ import annotations

from typing import NamedTuple

from . import cbor, cose, keys, schema
from .errors import CardFormatError, LaminateError
from .layout import Encoded, open_by_layout

MAX_CARD_BYTES = 8 * 1024 * 1024
_ALGS_BY_KIND = {"ed25519": cose.ALG_EDDSA, "p256": cose.ALG_ES256}


class Card(NamedTuple):
    """An opened card. The payload is for reading: where an event's data repeats its
    claims section byte for byte, both are the same object (cards.layout)."""
    payload: dict
    claims: dict
    evidence: dict
    sign1: cose.Sign1
    kid: bytes
    alg: int
    encoded: Encoded

    @property
    def backend(self) -> str:
        return self.evidence["backend"]

    @property
    def simulated(self) -> bool:
        return self.backend == "sim"


def build_payload(claims: dict, evidence: dict) -> dict:
    return {"schema_version": schema.SCHEMA_VERSION, "claims": claims, "evidence": evidence}


def seal(claims: dict, evidence: dict, private_key) -> bytes:
    """Validate, encode deterministically and sign with the release key. What is
    validated is the decoded form of the very bytes signed, so tuples, numpy scalars or
    other look-alikes cannot slip past the schema."""
    keys.key_kind(private_key)
    encoded = cbor.dumps(build_payload(claims, evidence))
    payload = cbor.loads(encoded, deterministic=True, field="payload")
    schema.validate_payload(payload)
    data = cose.sign1(encoded, private_key, kid=keys.key_id(private_key.public_key()))
    if len(data) > MAX_CARD_BYTES:
        raise CardFormatError("card", f"{len(data)} bytes exceeds the {MAX_CARD_BYTES}-byte limit")
    return data


def open_card(data: bytes) -> Card:
    """Parse and strictly validate card bytes; CardFormatError names what is wrong."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CardFormatError("card", f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_CARD_BYTES:
        raise CardFormatError("card", f"{len(data)} bytes exceeds the {MAX_CARD_BYTES}-byte limit")
    msg = cose.parse_sign1(bytes(data), require_tag=True, deterministic=True, field="card")
    if set(msg.protected) != {cose.HDR_ALG, cose.HDR_KID}:
        raise CardFormatError("card.protected", "expected exactly the alg (1) and kid (4) headers")
    if msg.unprotected:
        raise CardFormatError("card.unprotected", "must be empty")
    if msg.alg not in _ALGS_BY_KIND.values():
        raise CardFormatError("card.protected.alg",
                              f"algorithm {msg.alg} is not EdDSA (-8) or ES256 (-7)")
    if len(msg.kid) != 32:
        raise CardFormatError("card.protected.kid", f"expected 32 bytes, got {len(msg.kid)}")
    payload, encoded = open_by_layout(msg.payload) or _open_strictly(msg.payload)
    return Card(payload, payload["claims"], payload["evidence"], msg, msg.kid, msg.alg, encoded)


def _open_strictly(data: bytes) -> tuple[dict, Encoded]:
    """Decode, validate and prove deterministic the general way, which names the first
    problem; a payload that passes is then read along its layout, which it must follow."""
    payload = cbor.decode(data, definite=True, field="payload")
    try:
        settled = schema.validate_payload(payload, encoded=data)
    except CardFormatError:  # an encoding error is the one to name first, as it was signed
        cbor.require_deterministic(payload, data, field="payload")
        raise
    cbor.require_deterministic(payload, data, field="payload", settled=settled)
    opened = open_by_layout(data, cut_repeats=False)
    assert opened is not None, "a valid payload in deterministic form follows the layout"
    return opened


def release_key_matches(card: Card, public_key) -> bool:
    """True iff ``public_key`` is the card's kid and its signature verifies."""
    try:
        kind = keys.key_kind(public_key)
    except LaminateError:
        return False
    public_key = keys.public_key_of(public_key)
    if _ALGS_BY_KIND[kind] != card.alg or keys.key_id(public_key) != card.kid:
        return False
    return cose.verify_sign1(card.sign1, public_key)
