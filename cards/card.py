"""Sealing and opening a laminated card (a COSE_Sign1 over the deterministic payload).

Opening only proves the bytes are a well-formed card; it makes no trust decision.
Whether the release key, the evidence and the claims are trustworthy is the verifier's.
Opening reads plainly: strict decode, the one deterministic encoding compared byte for
byte, then the closed schema.
"""
from __future__ import annotations

from typing import NamedTuple

from . import cbor, cose, keys, schema
from .errors import CardFormatError, LaminateError

MAX_CARD_BYTES = 8 * 1024 * 1024
_ALGS_BY_KIND = {"ed25519": cose.ALG_EDDSA, "p256": cose.ALG_ES256}


class Encoded(NamedTuple):
    """Deterministic encodings of payload parts, as the signed payload holds them: what
    a verifier hashes and compares."""
    claims: bytes         # dcbor(claims): the quote's qualifying data is its hash
    config: bytes         # dcbor(claims.training.config)
    claim_events: dict    # event type -> dcbor(the data that event must carry, per the claims)
    event_data: tuple     # dcbor(evidence.event_log[i].data), in log order


class Card(NamedTuple):
    """An opened card. ``claims`` and ``evidence`` are the payload's own sections; each
    event's data is a value of its own, never shared with the claims."""
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
    """The CardPayload map of FORMAT.md for these sections (not validated here)."""
    return {"schema_version": schema.SCHEMA_VERSION, "claims": claims, "evidence": evidence}


def seal(claims: dict, evidence: dict, private_key) -> bytes:
    """Validate, encode deterministically and sign with the release key (Ed25519 or
    P-256). What is validated is the decoded form of the very bytes signed, so tuples,
    numpy scalars or other look-alikes cannot slip past the schema.

    Raises CardFormatError for claims or evidence that break FORMAT.md or a card over
    MAX_CARD_BYTES, LaminateError for another kind of key."""
    keys.key_kind(private_key)
    encoded = cbor.dumps(build_payload(claims, evidence))
    payload = cbor.loads(encoded, deterministic=True, field="payload")
    schema.validate_payload(payload)
    data = cose.sign1(encoded, private_key, kid=keys.key_id(private_key.public_key()))
    if len(data) > MAX_CARD_BYTES:
        raise CardFormatError("card", f"{len(data)} bytes exceeds the {MAX_CARD_BYTES}-byte limit")
    return data


def open_card(data: bytes) -> Card:
    """Parse and strictly validate card bytes (at most MAX_CARD_BYTES): a deterministic
    tagged COSE_Sign1 with exactly {alg, kid} protected, nothing unprotected, an EdDSA
    or ES256 alg and a 32-byte kid, over a deterministic payload that follows FORMAT.md.
    No signature is checked (``release_key_matches`` does).

    Raises CardFormatError naming the field at fault and why; an encoding that is not
    deterministic is named before a schema error, as it is what was signed."""
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
    kid = msg.kid
    if kid is None or len(kid) != 32:
        raise CardFormatError("card.protected.kid",
                              f"expected 32 bytes, got {len(kid) if kid else 0}")
    payload = cbor.loads(msg.payload, deterministic=True, field="payload")
    schema.validate_payload(payload)
    claims, evidence = payload["claims"], payload["evidence"]
    return Card(payload, claims, evidence, msg, kid, msg.alg, _encodings(claims, evidence))


def _encodings(claims: dict, evidence: dict) -> Encoded:
    """Each part encoded again: the payload is deterministic, so these are the very
    bytes it holds."""
    return Encoded(
        cbor.dumps(claims), cbor.dumps(claims["training"]["config"]),
        {spec.type: cbor.dumps(spec.data(claims)) for spec in schema.EVENT_CLAIMS.values()},
        tuple(cbor.dumps(event["data"]) for event in evidence["event_log"]))


def release_key_matches(card: Card, public_key) -> bool:
    """True iff ``public_key`` (an Ed25519 or P-256 public or private key) is the card's
    kid and its signature verifies; any other key is simply False."""
    try:
        kind = keys.key_kind(public_key)
    except LaminateError:
        return False
    public_key = keys.public_key_of(public_key)
    if _ALGS_BY_KIND[kind] != card.alg or keys.key_id(public_key) != card.kid:
        return False
    return cose.verify_sign1(card.sign1, public_key)
