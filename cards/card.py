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
    payload = cbor.decode(msg.payload, definite=True, field="payload")
    try:
        settled = schema.validate_payload(payload, encoded=msg.payload)
    except CardFormatError:  # an encoding error is the one to name first, as it was signed
        cbor.require_deterministic(payload, msg.payload, field="payload")
        raise
    shared = _shortcut(payload, settled)
    if shared and shared[0] == msg.payload:  # the signed bytes are that deterministic encoding
        encoded = shared[1]
    else:  # prove it the long way; encode the parts as they are
        cbor.require_deterministic(payload, msg.payload, field="payload", settled=settled)
        encoded = _encode_parts(payload, settled, share=False)
    return Card(payload, payload["claims"], payload["evidence"], msg, msg.kid, msg.alg, encoded)


def _shortcut(payload, settled) -> tuple[bytes, Encoded] | None:
    """dcbor of a value that decodes like ``payload``, cheaper than re-encoding it, and
    its parts: the claims are encoded once, and an event whose data equals the claims it
    measures reuses their encoding. Built with ``cbor.dumps`` and ``encode_map`` only, it
    is a deterministic encoding, so signed bytes equal to it are one too. (If equal in
    Python but not in type, 1 vs 1.0, the bytes differ from the payload's and the caller
    re-encodes the payload itself.)"""
    try:
        parts = _encode_parts(payload, settled, share=True)
        evidence = payload["evidence"]
        skeleton = dict(payload, claims=_SLOT, evidence=dict(
            evidence, event_log=[dict(event, data=_SLOT) for event in evidence["event_log"]]))
    except (LookupError, TypeError, CardFormatError):
        return None
    pieces = cbor.dumps(skeleton, settled=settled).split(cbor.dumps(_SLOT))
    fills = (parts.claims, *parts.event_data)
    if len(pieces) != len(fills) + 1:
        return None
    whole = b"".join(piece for pair in zip(pieces, fills) for piece in pair) + pieces[-1]
    return whole, parts


# The claims sections whose fields events measure on their own (FORMAT.md, "Events and
# registers"): each field of these is encoded apart, the rest of the claims whole.
_SPLIT = frozenset({"dataset", "training", "defenses"})


def _encode_parts(payload, settled, *, share: bool) -> Encoded:
    """Each claims section encoded once; event data too, or with ``share`` the claims
    section it equals. Raises LookupError or TypeError when the payload is no card.
    ``settled`` as for ``cbor.dumps``."""
    claims, known = payload["claims"], {}

    def encode(value) -> bytes:
        encoded = cbor.dumps(value, settled=settled)
        known[id(value)] = (value, encoded)  # holding the value keeps its id unique
        return encoded

    claims_bytes = cbor.encode_map({
        key: cbor.encode_map({name: encode(item) for name, item in section.items()})
        if key in _SPLIT and type(section) is dict else encode(section)
        for key, section in claims.items()})
    claim_events = {}
    for spec in schema.EVENT_CLAIMS.values():
        data = spec.data(claims)
        part = known.get(id(data))
        if part is None:  # a map of sections, as the config event's
            part = data, cbor.encode_map({name: known[id(item)][1] if id(item) in known
                                          else encode(item) for name, item in data.items()})
        claim_events[spec.type] = part
    event_data = []
    for event in payload["evidence"]["event_log"]:
        data, expected = event["data"], claim_events.get(event["type"])
        shared = share and expected is not None and data == expected[0]
        event_data.append(expected[1] if shared else cbor.dumps(data, settled=settled))
    return Encoded(claims_bytes, known[id(claims["training"]["config"])][1],
                   {kind: encoded for kind, (_, encoded) in claim_events.items()},
                   tuple(event_data))


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
