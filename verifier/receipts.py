"""COSE Receipts of inclusion (RFC 9942, RFC9162_SHA256 profile).

A receipt is a COSE_Sign1 by the service key whose protected header carries
``vds`` (395) = 1 (RFC9162_SHA256) and whose unprotected ``vdp`` (396) map holds, under
-1, inclusion proofs each encoded as ``bstr .cbor [tree-size, leaf-index, [+ bstr]]``.
The payload (the Merkle root) is detached: a verifier must recompute the root from the
statement and the path before the signature can verify, so a valid signature can never
be paired with a proof that does not lead to the signed root. A card plus its receipt is
a transparent statement (RFC 9943 style) checked offline with the service's public key.

We issue and accept exactly one inclusion proof per receipt. The proof's position
(tree size, leaf index) sits in the unprotected header, where the same path and root can
also prove other positions; so our receipts repeat the position in the protected header
(a private-use label, ``HDR_POSITION``), where the signature covers it, and a receipt
whose proof names another position is refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import cbor2

from cards import cbor, cose, keys, merkle
from cards.card import Card, statement_of
from cards.errors import LaminateError

from .logproof import LogProofError, check_inclusion, root_from_inclusion
from .result import AFFIRMING, CONTRAINDICATED, SKIPPED, Check

HDR_VDS = 395
HDR_VDP = 396
VDS_RFC9162_SHA256 = 1
PROOF_INCLUSION = -1
HDR_POSITION = -65537      # private use (RFC 9052 §3.1): [tree-size, leaf-index], signed


def make_receipt(private_key, tree_size: int, leaf_index: int, path: list[bytes],
                 root: bytes) -> bytes:
    """Sign ``root`` (detached) and attach the inclusion proof of ``leaf_index``."""
    alg = cose.alg_for_key(private_key)
    protected_bytes = cbor.dumps({cose.HDR_ALG: alg, HDR_VDS: VDS_RFC9162_SHA256,
                                  cose.HDR_KID: keys.key_id(keys.public_key_of(private_key)),
                                  HDR_POSITION: [tree_size, leaf_index]})
    signature = cose.sign_bytes(private_key, alg, cose.sig_structure(protected_bytes, root))
    proof = cbor.dumps([tree_size, leaf_index, [bytes(p) for p in path]])
    unprotected = {HDR_VDP: {PROOF_INCLUSION: [proof]}}
    return cbor.dumps(cbor2.CBORTag(cose.TAG_SIGN1, [protected_bytes, unprotected, None, signature]))


@dataclass(frozen=True)
class Receipt:
    """A parsed COSE Receipt: its header fields and the RFC 9162 inclusion proof."""
    alg: int
    kid: bytes | None
    protected_bytes: bytes
    tree_size: int
    leaf_index: int
    path: list
    signature: bytes


def parse_receipt(data: bytes) -> Receipt:
    """Strict structural decoding; raises LogProofError naming the offending part."""
    try:
        item = cbor.loads(data, field="receipt")
    except LaminateError as exc:
        raise LogProofError(str(exc)) from None
    if not isinstance(item, cbor2.CBORTag) or item.tag != cose.TAG_SIGN1:
        raise LogProofError("receipt: not a tagged COSE_Sign1 (tag 18)")
    body = item.value
    if not isinstance(body, list) or len(body) != 4:
        raise LogProofError("receipt: COSE_Sign1 must be an array of 4 items")
    protected_bytes, unprotected, payload, signature = body
    if payload is not None:
        raise LogProofError("receipt.payload: must be detached (nil); the verifier "
                            "recomputes the root")
    if not isinstance(protected_bytes, bytes) or not isinstance(signature, bytes) \
            or not isinstance(unprotected, dict):
        raise LogProofError("receipt: malformed COSE_Sign1 headers or signature")
    try:
        protected = cbor.loads(protected_bytes, field="receipt.protected")
    except LaminateError as exc:
        raise LogProofError(str(exc)) from None
    if not isinstance(protected, dict):
        raise LogProofError("receipt.protected: expected a serialized map")
    if protected.get(HDR_VDS) != VDS_RFC9162_SHA256:
        raise LogProofError(f"receipt.protected.vds: expected {VDS_RFC9162_SHA256} "
                            f"(RFC9162_SHA256), got {protected.get(HDR_VDS)!r}")
    alg = protected.get(cose.HDR_ALG)
    if type(alg) is not int or alg not in cose.SUPPORTED_ALGS:
        raise LogProofError(f"receipt.protected.alg: unsupported algorithm {alg!r}")
    kid = protected.get(cose.HDR_KID)
    if kid is not None and not isinstance(kid, bytes):
        raise LogProofError("receipt.protected.kid: expected a byte string")
    if set(protected) & set(unprotected):
        raise LogProofError("receipt.unprotected: repeats a protected header")
    vdp = unprotected.get(HDR_VDP)
    if not isinstance(vdp, dict) or set(vdp) != {PROOF_INCLUSION}:
        raise LogProofError("receipt.unprotected.vdp: expected a map holding only "
                            "inclusion proofs (-1)")
    proofs = vdp[PROOF_INCLUSION]
    if not isinstance(proofs, list) or len(proofs) != 1 or not isinstance(proofs[0], bytes):
        raise LogProofError("receipt.unprotected.vdp.-1: expected exactly one inclusion "
                            "proof (a byte string)")
    try:
        proof = cbor.loads(proofs[0], field="receipt inclusion proof")
    except LaminateError as exc:
        raise LogProofError(str(exc)) from None
    if not isinstance(proof, list) or len(proof) != 3 or not isinstance(proof[2], list):
        raise LogProofError("receipt inclusion proof: expected [tree-size, leaf-index, "
                            "[+ inclusion-path]]")
    tree_size, leaf_index, path = proof
    if not path:
        raise LogProofError("receipt inclusion proof: the inclusion path must not be empty")
    if protected.get(HDR_POSITION) != [tree_size, leaf_index]:
        raise LogProofError("receipt.protected.position: the signed position does not match "
                            "the inclusion proof's (tree size, leaf index)")
    return Receipt(alg, kid, protected_bytes, tree_size, leaf_index, path, signature)


@dataclass(frozen=True)
class ReceiptCheck:
    """What a verified receipt proves: the statement is leaf ``leaf_index`` of the
    tree of ``tree_size`` leaves with root ``root_hash``."""
    tree_size: int
    leaf_index: int
    root_hash: bytes


def verify_receipt(receipt_bytes: bytes, statement: bytes, public_key) -> ReceiptCheck:
    """Prove that ``statement`` (e.g. the card bytes) is in the service's log: recompute
    the root from the leaf and the path, then check the service's signature over it.
    Returns the position and root on success, raises LogProofError otherwise."""
    receipt = parse_receipt(receipt_bytes)
    if receipt.kid is not None and receipt.kid != keys.key_id(public_key):
        raise LogProofError("receipt.protected.kid: signed by a different key than the "
                            "service key given")
    leaf = merkle.leaf_hash(statement)
    root = root_from_inclusion(leaf, receipt.leaf_index, receipt.tree_size, receipt.path)
    check_inclusion(leaf, receipt.leaf_index, receipt.tree_size, receipt.path, root)
    if not cose.verify_bytes(public_key, receipt.alg,
                             cose.sig_structure(receipt.protected_bytes, root), receipt.signature):
        raise LogProofError("receipt: the service signature does not cover the root this "
                            "statement and path lead to (wrong statement, altered path or "
                            "wrong service key)")
    return ReceiptCheck(receipt.tree_size, receipt.leaf_index, root)


CHECK = "transparency_receipt"
FIELD = "card.unprotected.394"


def check_embedded(card: Card, log_key):
    """The ``transparency_receipt`` check of an opened card: that a receipt it carries
    proves, under ``log_key``, that the card's statement (the card without its receipts)
    is in that log. Receipts of other logs are passed over. None when the card carries
    no receipt and no key is given, as there is nothing to say."""
    receipts = card.sign1.unprotected.get(cose.HDR_RECEIPTS, [])
    if log_key is None:
        if not receipts:
            return None
        return Check(CHECK, SKIPPED, FIELD, f"not checked: the card carries {len(receipts)} "
                     "receipt(s) but no log key was given (--log-key)")
    key_id = keys.key_id(keys.public_key_of(log_key))
    kid = key_id.hex()[:16]
    if not receipts:
        return Check(CHECK, CONTRAINDICATED, FIELD, f"no receipt embedded, so nothing shows "
                     f"the card is in log {kid}... (add one with `laminate log attach`)")
    statement = statement_of(card)
    failed = None
    for i, receipt in enumerate(receipts):
        try:
            if parse_receipt(receipt).kid not in (None, key_id):
                continue        # another log's receipt
            proved = verify_receipt(receipt, statement, log_key)
        except LogProofError as exc:
            failed = failed or Check(CHECK, CONTRAINDICATED, f"{FIELD}[{i}]", str(exc))
            continue
        return Check(CHECK, AFFIRMING, f"{FIELD}[{i}]",
                     f"the card is leaf {proved.leaf_index} of log {kid}...'s tree of size "
                     f"{proved.tree_size}, root {proved.root_hash.hex()[:16]}..., signed by "
                     "the log key")
    return failed or Check(CHECK, CONTRAINDICATED, FIELD, f"none of the {len(receipts)} "
                           f"receipt(s) is signed by log key {kid}...")
