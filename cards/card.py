"""Sealing and opening a laminated card (a COSE_Sign1 over the deterministic payload).

Opening only proves the bytes are a well-formed card; it makes no trust decision.
Whether the release key, the evidence and the claims are trustworthy is the verifier's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import cbor, cose, keys, schema
from .errors import CardFormatError, LaminateError

MAX_CARD_BYTES = 8 * 1024 * 1024
_ALGS_BY_KIND = {"ed25519": cose.ALG_EDDSA, "p256": cose.ALG_ES256}
# Marks where separately encoded parts go in the payload's skeleton. Random per process
# and counted, so signed content that holds it only costs the shortcut, never a wrong yes.
_SLOT = os.urandom(16)


@dataclass(frozen=True)
class Encoded:
    """Deterministic encodings of payload parts, byte for byte as the signed payload
    holds them: a verifier hashes and compares them without encoding anything again."""
    claims: bytes         # dcbor(claims): the quote's qualifying data is its hash
    config: bytes         # dcbor(claims.training.config)
    claim_events: dict    # event type -> dcbor(the data that event must carry, per the claims)
    event_data: tuple     # dcbor(evidence.event_log[i].data), in log order


@dataclass(frozen=True)
class Card:
    payload: dict
    claims: dict
    evidence: dict
    sign1: cose.Sign1
    kid: bytes
    alg: int
    encoded: Encoded = field(repr=False, compare=False)

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
    built = []
    payload = cbor.loads(msg.payload, deterministic=True, field="payload",
                         shortcut=lambda value: _shortcut(value, built))
    schema.validate_payload(payload, encoded=msg.payload)
    if built and built[0][0] == msg.payload:
        encoded = built[0][1]
    else:  # proved deterministic the long way; encode the parts as they are
        encoded = _encode_parts(payload, share=False)
    return Card(payload, payload["claims"], payload["evidence"], msg, msg.kid, msg.alg, encoded)


def _shortcut(payload, built: list) -> bytes | None:
    """dcbor of a value that decodes like ``payload``, cheaper than re-encoding it: the
    claims are encoded once, and an event whose data equals the claims it measures
    reuses their encoding. (If equal in Python but not in type, 1 vs 1.0, the bytes
    differ from the payload's and the caller re-encodes the payload itself.)"""
    try:
        parts = _encode_parts(payload, share=True)
        evidence = payload["evidence"]
        skeleton = dict(payload, claims=_SLOT, evidence=dict(
            evidence, event_log=[dict(event, data=_SLOT) for event in evidence["event_log"]]))
    except (LookupError, TypeError, CardFormatError):
        return None
    pieces = cbor.dumps(skeleton).split(cbor.dumps(_SLOT))
    fills = (parts.claims, *parts.event_data)
    if len(pieces) != len(fills) + 1:
        return None
    whole = b"".join(piece for pair in zip(pieces, fills) for piece in pair) + pieces[-1]
    built.append((whole, parts))
    return whole


def _encode_parts(payload, *, share: bool) -> Encoded:
    """Each claims section encoded once; event data too, or with ``share`` the claims
    section it equals. Raises LookupError or TypeError when the payload is no card."""
    claims, memo = payload["claims"], {}
    claims_bytes = _encode(claims, 2, memo)
    claim_events = {spec.type: _claim_event(spec.data(claims), memo)
                    for spec in schema.EVENT_CLAIMS.values()}
    event_data = []
    for event in payload["evidence"]["event_log"]:
        data, expected = event["data"], claim_events.get(event["type"])
        shared = share and expected is not None and data == expected[0]
        event_data.append(expected[1] if shared else cbor.dumps(data))
    return Encoded(claims_bytes, _encode(claims["training"]["config"], 0, memo),
                   {kind: encoded for kind, (_, encoded) in claim_events.items()},
                   tuple(event_data))


def _claim_event(data, memo) -> tuple:
    return data, _encode(data, 1, memo)


def _encode(value, depth: int, memo: dict) -> bytes:
    """dcbor(value). Down to ``depth``, a text-keyed map holding maps is encoded from its
    parts, so each nested section gets an encoding of its own (a map of scalars is not
    split: that buys nothing). Parts are remembered by identity; ``memo`` holds the value
    too, so an identity cannot be reused while the memo lives."""
    known = memo.get(id(value))
    if known is not None:
        return known[1]
    if (depth and type(value) is dict and all(type(key) is str for key in value)
            and any(type(item) is dict for item in value.values())):
        encoded = cbor.encode_map({key: _encode(item, depth - 1, memo)
                                   for key, item in value.items()})
    else:
        encoded = cbor.dumps(value)
    memo[id(value)] = (value, encoded)
    return encoded


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
