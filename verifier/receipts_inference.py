"""Inference receipts: a prediction server's signed statement of what it answered.

One receipt covers one batch: the server signs, once, the RFC 9162 Merkle root of the
batch's leaves dcbor([input digest, label]) (or [input digest, label, probabilities]
when the deployment answers probabilities), with the receipt key its serving card
names. Signing once per batch keeps the signature off the per-answer cost. A client keeps
the receipt with the answers and checks it offline against the serving card: which
model answered, for which inputs, and that nothing in the answers was changed.
(The transparency log's receipts of inclusion are `verifier.receipts`.)
"""
from __future__ import annotations

import base64
import binascii
import hmac
import math
import re

import cbor2

from cards import cbor, cose, keys, merkle
from cards.errors import CardFormatError, LaminateError
from verifier.result import AFFIRMING, CONTRAINDICATED, Check

FORMAT = "laminate-inference-receipt/1"
MAX_BATCH = 1024
MAX_RECEIPT_BYTES = 4096
_HEX64 = re.compile(r"[0-9a-f]{64}")
_PAYLOAD_FIELDS = {"format", "serving_card", "model_sha256", "client", "first_index",
                   "count", "root"}


_LABEL_LEAF_HEAD = b"\x82\x58\x20"   # an array of two, then a 32-byte string


def leaf(input_sha256: bytes, label: int, probabilities=None) -> bytes:
    """The leaf bytes of one answer, dcbor([digest, label(, probabilities)]), hashed as an
    RFC 9162 leaf. A label-only leaf is written directly: its encoding has one form."""
    if probabilities is None and len(input_sha256) == 32 and 0 <= label < 24:
        return _LABEL_LEAF_HEAD + bytes(input_sha256) + bytes([label])
    item = [bytes(input_sha256), int(label)]
    if probabilities is not None:
        item.append([float(p) for p in probabilities])
    return cbor.dumps(item)


def batch_root(leaves: list[bytes]) -> bytes:
    return merkle.root_of([merkle.leaf_hash(item) for item in leaves])


def receipt_payload(*, serving_card: str, model_sha256: str, client: str, first_index: int,
                    leaf_hashes: list[bytes]) -> bytes:
    """The signed statement of one batch; also the batch's leaf in the deployment log."""
    return cbor.dumps({"format": FORMAT, "serving_card": serving_card,
                       "model_sha256": model_sha256, "client": client,
                       "first_index": first_index, "count": len(leaf_hashes),
                       "root": merkle.root_of(leaf_hashes)})


def sign_receipt(private_key, payload: bytes, kid: bytes | None = None) -> bytes:
    """The COSE_Sign1 receipt of one batch (one signature, whatever the batch size)."""
    if kid is None:
        kid = keys.key_id(keys.public_key_of(private_key))
    return cose.sign1(payload, private_key, kid=kid)


class ReceiptSigner:
    """``sign_receipt`` for one key, with the protected header encoded once: a server
    signs every batch with the same key, and encoding the header again per batch costs
    about as much as the Ed25519 signature itself. Same bytes as ``sign_receipt``."""

    def __init__(self, private_key):
        self.key = private_key
        self.alg = cose.alg_for_key(private_key)
        kid = keys.key_id(keys.public_key_of(private_key))
        self.protected = cbor.dumps({cose.HDR_ALG: self.alg, cose.HDR_KID: kid})

    def sign(self, payload: bytes) -> bytes:
        structure = cbor2.dumps(["Signature1", self.protected, b"", payload])
        signature = cose.sign_bytes(self.key, self.alg, structure)
        return cbor2.dumps(cbor2.CBORTag(cose.TAG_SIGN1, [self.protected, {}, payload,
                                                          signature]))


def _answers(doc) -> tuple[list, list, list | None]:
    """The (input digests, labels, probabilities) of a receipt document, validated."""
    if not isinstance(doc, dict):
        raise CardFormatError("receipt", "expected a JSON object")
    digests, labels = doc.get("input_sha256"), doc.get("labels")
    if not isinstance(digests, list) or not 1 <= len(digests) <= MAX_BATCH:
        raise CardFormatError("receipt.input_sha256", f"expected 1 to {MAX_BATCH} hex digests")
    if not all(isinstance(d, str) and _HEX64.fullmatch(d) for d in digests):
        raise CardFormatError("receipt.input_sha256", "expected 64 lowercase hex digits each")
    if not isinstance(labels, list) or len(labels) != len(digests) or not all(
            type(v) is int for v in labels):
        raise CardFormatError("receipt.labels", "expected one integer label per input digest")
    probabilities = doc.get("probabilities")
    if probabilities is not None and (
            not isinstance(probabilities, list) or len(probabilities) != len(digests)
            or not all(isinstance(row, list) and len(row) <= 100_000 and all(
                type(p) in (int, float) and math.isfinite(p) for p in row)
                for row in probabilities)):
        raise CardFormatError("receipt.probabilities", "expected one list of numbers per input")
    return digests, labels, probabilities


def verify_receipt(doc: dict, card, *, inputs_sha256: list | None = None) -> list[Check]:
    """Every check of one receipt document against an (appraised) serving card.

    ``doc`` is what the server returned: {"receipt": base64 COSE_Sign1, "input_sha256",
    "labels", optional "probabilities"}; ``inputs_sha256``: the digests of the inputs the
    client itself sent, when it kept them."""
    try:
        digests, labels, probabilities = _answers(doc)
        raw = doc.get("receipt")
        if not isinstance(raw, str) or len(raw) > MAX_RECEIPT_BYTES:
            raise CardFormatError("receipt.receipt", "expected base64 of a COSE_Sign1")
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise CardFormatError("receipt.receipt", "not base64") from None
        msg = cose.parse_sign1(data, require_tag=True, deterministic=True, field="receipt.receipt")
        payload = cbor.loads(msg.payload, deterministic=True, field="receipt.payload")
        _payload(payload)
    except CardFormatError as exc:
        return [Check("receipt_format", CONTRAINDICATED, exc.field, exc.reason)]
    checks = [Check("receipt_format", AFFIRMING, "receipt", f"{FORMAT}, {len(digests)} answers")]
    public = card.receipt_public_key()
    ok = msg.kid == keys.key_id(public) and cose.verify_sign1(msg, public)
    checks.append(Check("receipt_signature", AFFIRMING if ok else CONTRAINDICATED,
                        "receipt.receipt.signature",
                        "signed by the serving card's receipt key" if ok else
                        "does not verify with the receipt key the serving card names"))
    checks.append(_equal("receipt_serving_card", "receipt.serving_card",
                         payload["serving_card"], card.digest, "digest"))
    checks.append(_equal("receipt_model", "receipt.model_sha256",
                         payload["model_sha256"], card.statement["model_sha256"], "model"))
    wants_probabilities = card.statement["answers"] == "probabilities"
    if wants_probabilities != (probabilities is not None):
        checks.append(Check("receipt_answers", CONTRAINDICATED, "receipt.probabilities",
                            "the serving card says the deployment answers "
                            f"{card.statement['answers']}, the receipt disagrees"))
    leaves = [leaf(bytes.fromhex(d), y, None if probabilities is None else probabilities[i])
              for i, (d, y) in enumerate(zip(digests, labels))]
    root_ok = payload["count"] == len(leaves) and hmac.compare_digest(batch_root(leaves),
                                                                      payload["root"])
    checks.append(Check("receipt_root", AFFIRMING if root_ok else CONTRAINDICATED,
                        "receipt.root", f"the {len(leaves)} answers are the ones signed" if root_ok
                        else "the answers do not hash to the signed Merkle root: "
                             "an input digest, label or probability was changed"))
    if inputs_sha256 is not None:
        mine = [d.hex() if isinstance(d, bytes) else d for d in inputs_sha256]
        same = mine == digests
        checks.append(Check("receipt_inputs", AFFIRMING if same else CONTRAINDICATED,
                            "receipt.input_sha256", "the receipt covers the inputs sent" if same
                            else "the receipt's input digests are not those of the inputs sent"))
    return checks


def _equal(name, field, got, expected, what) -> Check:
    if got == expected:
        return Check(name, AFFIRMING, field, f"names the serving card's {what}")
    return Check(name, CONTRAINDICATED, field,
                 f"names {what} {str(got)[:16]}..., the serving card's is {str(expected)[:16]}...")


def _payload(p) -> None:
    if type(p) is not dict or set(p) != _PAYLOAD_FIELDS:
        raise CardFormatError("receipt.payload", f"expected exactly {sorted(_PAYLOAD_FIELDS)}")
    if p["format"] != FORMAT:
        raise CardFormatError("receipt.payload.format", f"expected {FORMAT!r}")
    for name in ("serving_card", "model_sha256"):
        if type(p[name]) is not str or not _HEX64.fullmatch(p[name]):
            raise CardFormatError(f"receipt.payload.{name}", "expected 64 hex digits")
    if type(p["client"]) is not str or not p["client"]:
        raise CardFormatError("receipt.payload.client", "expected text")
    for name in ("first_index", "count"):
        if type(p[name]) is not int or p[name] < 0:
            raise CardFormatError(f"receipt.payload.{name}", "expected a non-negative integer")
    if type(p["root"]) is not bytes or len(p["root"]) != 32:
        raise CardFormatError("receipt.payload.root", "expected 32 bytes")


def load_receipt_doc(text: bytes, where: str) -> dict:
    import json

    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise LaminateError(f"{where}: not a JSON receipt document") from None
