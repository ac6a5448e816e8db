"""Pure transparency-log proof checks (RFC 9162) and signed tree heads.

No storage and no service dependency: the service, the offline ``laminate log verify``
and the tests against the public vectors all accept proofs only through these functions.
"""
from __future__ import annotations

import base64
import time
from dataclasses import dataclass

from cards import cbor, cose, keys, merkle
from cards.errors import LaminateError

TREE_HEAD_TYPE = "laminate-tree-head/1"
HASH_SIZE = 32


class LogProofError(LaminateError):
    """A proof, tree head or receipt that does not verify; the message says why."""


# ---------------------------------------------------------------- verification path

def _digest(value, name: str) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != HASH_SIZE:
        raise LogProofError(f"{name}: expected a {HASH_SIZE}-byte SHA-256 digest")
    return bytes(value)


def _size(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LogProofError(f"{name}: expected a non-negative integer, got {value!r}")
    return value


def _path(proof, name: str) -> list[bytes]:
    if proof is None:
        return []
    if not isinstance(proof, (list, tuple)):
        raise LogProofError(f"{name}: expected a list of digests")
    return [_digest(node, f"{name}[{i}]") for i, node in enumerate(proof)]


def check_inclusion(leaf_hash, leaf_index, tree_size, proof, root) -> None:
    """RFC 9162 §2.1.3.2: raise LogProofError unless ``proof`` shows ``leaf_hash`` at
    ``leaf_index`` in the tree of ``tree_size`` leaves with ``root``."""
    root = _digest(root, "root_hash")
    if root_from_inclusion(leaf_hash, leaf_index, tree_size, proof) != root:
        raise LogProofError(f"inclusion proof for leaf {leaf_index} in tree of size "
                            f"{tree_size} does not lead to root {root.hex()}")


def check_consistency(size1, size2, proof, root1, root2) -> None:
    """RFC 9162 §2.1.4.2: raise LogProofError unless the tree of ``size2`` leaves with
    ``root2`` extends the tree of ``size1`` leaves with ``root1``."""
    size1 = _size(size1, "first")
    size2 = _size(size2, "second")
    if size1 > size2:
        raise LogProofError(f"first tree size {size1} is larger than second {size2}")
    if size1 == 0:
        raise LogProofError("a consistency proof from the empty tree proves nothing")
    if size1 == size2:
        # Nothing to prove but that both heads name the same tree.
        if proof:
            raise LogProofError("equal tree sizes need an empty consistency proof")
        if root1 != root2:
            raise LogProofError(f"two different roots for the same tree size {size1}")
        return
    root1 = _digest(root1, "first root")
    root2 = _digest(root2, "second root")
    path = _path(proof, "consistency_proof")
    if not merkle.verify_consistency(size1, size2, path, root1, root2):
        raise LogProofError(f"consistency proof from size {size1} to {size2} does not verify: "
                            "the log was not extended append-only")


def root_from_inclusion(leaf_hash: bytes, leaf_index: int, tree_size: int,
                        proof: list[bytes]) -> bytes:
    """The root an inclusion path leads to, needed where the root itself is not
    transmitted (COSE Receipts detach it); malformed input raises LogProofError."""
    leaf_hash = _digest(leaf_hash, "leaf_hash")
    leaf_index = _size(leaf_index, "leaf_index")
    tree_size = _size(tree_size, "tree_size")
    path = _path(proof, "inclusion_proof")
    if leaf_index >= tree_size:
        raise LogProofError(f"leaf_index {leaf_index} is not below tree_size {tree_size}")
    root = merkle.inclusion_root(leaf_hash, leaf_index, tree_size, path)
    if root is None:
        raise LogProofError(f"inclusion proof of {len(path)} nodes does not fit a tree of "
                            f"size {tree_size}")
    return root


# ---------------------------------------------------------------- signed tree heads

@dataclass(frozen=True)
class TreeHead:
    """A signed tree head: the log's size and root at a time, and the service's
    COSE_Sign1 over them."""
    tree_size: int
    root_hash: bytes
    timestamp_ms: int
    signed: bytes          # COSE_Sign1 by the service key over dcbor(payload)

    def to_dict(self) -> dict:
        """JSON-ready fields: root as hex, the signed bytes as base64."""
        return {"tree_size": self.tree_size, "root_hash": self.root_hash.hex(),
                "timestamp_ms": self.timestamp_ms,
                "signed": base64.b64encode(self.signed).decode("ascii")}


def sign_tree_head(tree_size: int, root_hash: bytes, private_key) -> TreeHead:
    """Sign the head of a log of ``tree_size`` leaves with root ``root_hash``,
    stamped with the current time, with the service's ``private_key`` (Ed25519 or P-256)."""
    stamp = int(time.time() * 1000)
    payload = {"type": TREE_HEAD_TYPE, "tree_size": tree_size, "root_hash": root_hash,
               "timestamp_ms": stamp}
    signed = cose.sign1(cbor.dumps(payload), private_key,
                        kid=keys.key_id(keys.public_key_of(private_key)))
    return TreeHead(tree_size, root_hash, stamp, signed)


def verify_tree_head(signed: bytes, public_key) -> TreeHead:
    """Check a signed tree head against the service's public key and return its fields."""
    try:
        msg = cose.parse_sign1(signed)
    except LaminateError as exc:
        raise LogProofError(f"tree head: not a COSE_Sign1 ({exc})") from None
    if not cose.verify_sign1(msg, public_key):
        raise LogProofError("tree head: signature does not verify with the service key")
    try:
        payload = cbor.loads(msg.payload, deterministic=True, field="tree head")
    except LaminateError as exc:
        raise LogProofError(str(exc)) from None
    if not isinstance(payload, dict) or payload.get("type") != TREE_HEAD_TYPE \
            or set(payload) != {"type", "tree_size", "root_hash", "timestamp_ms"}:
        raise LogProofError(f"tree head: payload is not a {TREE_HEAD_TYPE} statement")
    size = _size(payload["tree_size"], "tree head tree_size")
    root = _digest(payload["root_hash"], "tree head root_hash")
    return TreeHead(size, root, _size(payload["timestamp_ms"], "timestamp_ms"), bytes(signed))
