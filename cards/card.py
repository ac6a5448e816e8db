"""Sealing and opening a laminated card (a COSE_Sign1 over the deterministic payload).

Opening only proves the bytes are a well-formed card; it makes no trust decision.
Whether the release key, the evidence and the claims are trustworthy is the verifier's.
Opening reads plainly: strict decode, the one deterministic encoding compared byte for
byte, then the closed schema.
"""
from __future__ import annotations

import hashlib
from typing import NamedTuple

import cbor2

from . import cbor, cose, keys, schema
from .errors import CardFormatError, LaminateError

MAX_CARD_BYTES = 8 * 1024 * 1024
MAX_RECEIPTS = 16
# Each key kind's algorithms: fully specified (new cards) first, then the older one.
_ALGS_BY_KIND = {"ed25519": (cose.ALG_ED25519, cose.ALG_EDDSA),
                 "p256": (cose.ALG_ESP256, cose.ALG_ES256)}
TYP = "application/laminate-card+cbor"
CONTENT_TYPE = "application/cbor"
# Protected headers: older cards carry {alg, kid}; new ones also typ, content type and
# CWT claims (iss: the release key, sub: the model), which make card + receipt a
# transparent statement.
_LEGACY_HEADERS = {cose.HDR_ALG, cose.HDR_KID}
_HEADERS = _LEGACY_HEADERS | {cose.HDR_CONTENT_TYPE, cose.HDR_CWT_CLAIMS, cose.HDR_TYP}


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
    kid = keys.key_id(private_key.public_key())
    data = cose.sign1(encoded, private_key, kid=kid, alg=cose.fully_specified_alg(private_key),
                      headers=statement_headers(kid, payload["claims"]["model"]["sha256"]))
    if len(data) > MAX_CARD_BYTES:
        raise CardFormatError("card", f"{len(data)} bytes exceeds the {MAX_CARD_BYTES}-byte limit")
    return data


def statement_headers(kid: bytes, model_sha256: str) -> dict:
    """typ, content type and CWT claims of a new card's protected header."""
    return {cose.HDR_TYP: TYP, cose.HDR_CONTENT_TYPE: CONTENT_TYPE,
            cose.HDR_CWT_CLAIMS: {cose.CWT_ISS: f"laminate-release-key:sha256:{kid.hex()}",
                                  cose.CWT_SUB: f"sha-256:{model_sha256}"}}


def open_card(data: bytes) -> Card:
    """Parse and strictly validate card bytes (at most MAX_CARD_BYTES): a deterministic
    tagged COSE_Sign1 with the statement headers (or, for an older card, exactly {alg,
    kid}) protected, nothing unprotected but receipts (394, opaque here), a supported alg
    and a 32-byte kid, over a deterministic payload that follows FORMAT.md.
    No signature is checked (``release_key_matches`` does).

    Raises CardFormatError naming the field at fault and why; an encoding that is not
    deterministic is named before a schema error, as it is what was signed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CardFormatError("card", f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_CARD_BYTES:
        raise CardFormatError("card", f"{len(data)} bytes exceeds the {MAX_CARD_BYTES}-byte limit")
    msg = cose.parse_sign1(bytes(data), require_tag=True, deterministic=True, field="card")
    legacy = set(msg.protected) == _LEGACY_HEADERS
    if not legacy and set(msg.protected) != _HEADERS:
        raise CardFormatError("card.protected", "expected exactly the alg (1) and kid (4) "
                              "headers, or those and content type (3), CWT claims (15), typ (16)")
    _check_unprotected(msg.unprotected)
    if msg.alg not in {algs[legacy] for algs in _ALGS_BY_KIND.values()}:
        raise CardFormatError("card.protected.alg", f"algorithm {msg.alg} is not " + (
            "EdDSA (-8) or ES256 (-7)" if legacy else "Ed25519 (-19) or ESP256 (-9)"))
    kid = msg.kid
    if kid is None or len(kid) != 32:
        raise CardFormatError("card.protected.kid",
                              f"expected 32 bytes, got {len(kid) if kid else 0}")
    payload = cbor.loads(msg.payload, deterministic=True, field="payload")
    schema.validate_payload(payload)
    claims, evidence = payload["claims"], payload["evidence"]
    if not legacy and msg.protected != {
            cose.HDR_ALG: msg.alg, cose.HDR_KID: kid,
            **statement_headers(kid, claims["model"]["sha256"])}:
        raise CardFormatError("card.protected", "typ, content type or CWT claims (iss: the "
                              "release key id, sub: the model digest) do not match the card")
    return Card(payload, claims, evidence, msg, kid, msg.alg, _encodings(claims, evidence))


def _encodings(claims: dict, evidence: dict) -> Encoded:
    """Each part encoded again: the payload is deterministic, so these are the very
    bytes it holds."""
    return Encoded(
        cbor.dumps(claims), cbor.dumps(claims["training"]["config"]),
        {spec.type: cbor.dumps(spec.data(claims)) for spec in schema.EVENT_CLAIMS.values()},
        tuple(cbor.dumps(event["data"]) for event in evidence["event_log"]))


def _check_unprotected(unprotected: dict) -> None:
    """Empty, or transparency receipts (a non-empty array of byte strings) only."""
    if not unprotected:
        return
    receipts = unprotected.get(cose.HDR_RECEIPTS)
    if set(unprotected) != {cose.HDR_RECEIPTS} or not isinstance(receipts, list) or not receipts \
            or len(receipts) > MAX_RECEIPTS or not all(isinstance(r, bytes) for r in receipts):
        raise CardFormatError("card.unprotected", "must be empty, or hold only receipts "
                              f"(394: an array of up to {MAX_RECEIPTS} byte strings)")


# --- identity and receipts ---------------------------------------------------------------

def _envelope(data) -> list:
    """The four items of a card's COSE_Sign1, read as strictly as ``open_card`` reads
    the envelope (size bound, tag 18, deterministic encoding, unprotected header)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CardFormatError("card", f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_CARD_BYTES:
        raise CardFormatError("card", f"{len(data)} bytes exceeds the {MAX_CARD_BYTES}-byte limit")
    msg = cose.parse_sign1(bytes(data), require_tag=True, deterministic=True, field="card")
    _check_unprotected(msg.unprotected)
    return [msg.protected_bytes, msg.unprotected, msg.payload, msg.signature]


def _encode(protected: bytes, unprotected: dict, payload: bytes, signature: bytes) -> bytes:
    return cbor.dumps(cbor2.CBORTag(cose.TAG_SIGN1, [protected, unprotected, payload, signature]))


def statement_bytes(data) -> bytes:
    """The signed statement a card is: its bytes with the unprotected header emptied, so
    with any transparency receipts taken off. For a card that carries none, exactly its
    bytes. This is what a transparency log logs and what a receipt proves.

    Raises CardFormatError if ``data`` is not a card envelope."""
    protected, _, payload, signature = _envelope(data)
    return _encode(protected, {}, payload, signature)


def statement_of(card: Card) -> bytes:
    """``statement_bytes`` of a card already opened (no second decode)."""
    msg = card.sign1
    return _encode(msg.protected_bytes, {}, msg.payload, msg.signature)


def card_digest(data) -> str:
    """A card's identity, as lowercase hex: SHA-256 of its ``statement_bytes``. Attaching
    a receipt leaves it unchanged, so registry ids, parent digests and serving cards keep
    naming the same card. Raises CardFormatError if ``data`` is not a card envelope."""
    return hashlib.sha256(statement_bytes(data)).hexdigest()


def receipts_of(data) -> list[bytes]:
    """The receipts embedded in a card's unprotected header (394), in order."""
    return list(_envelope(data)[1].get(cose.HDR_RECEIPTS, []))


def with_receipts(data, receipts: list[bytes]) -> bytes:
    """The card with ``receipts`` added to those it carries (an identical one only once):
    a transparent statement. The signature and the card's digest are unchanged.

    Raises CardFormatError if ``data`` is not a card or the result would hold more than
    MAX_RECEIPTS receipts or exceed MAX_CARD_BYTES."""
    protected, unprotected, payload, signature = _envelope(data)
    held = list(unprotected.get(cose.HDR_RECEIPTS, []))
    held += [bytes(r) for r in receipts if bytes(r) not in held]
    if len(held) > MAX_RECEIPTS:
        raise CardFormatError("card.unprotected", f"more than {MAX_RECEIPTS} receipts")
    out = _encode(protected, {cose.HDR_RECEIPTS: held} if held else {}, payload, signature)
    if len(out) > MAX_CARD_BYTES:
        raise CardFormatError("card", f"{len(out)} bytes with receipts exceeds the "
                              f"{MAX_CARD_BYTES}-byte limit")
    return out


def release_key_matches(card: Card, public_key) -> bool:
    """True iff ``public_key`` (an Ed25519 or P-256 public or private key) is the card's
    kid and its signature verifies; any other key is simply False."""
    try:
        kind = keys.key_kind(public_key)
    except LaminateError:
        return False
    public_key = keys.public_key_of(public_key)
    if card.alg not in _ALGS_BY_KIND[kind] or keys.key_id(public_key) != card.kid:
        return False
    return cose.verify_sign1(card.sign1, public_key)
