"""The service's append-only transparency log (RFC 9162 Merkle tree) and its tree heads.

Leaves live in the database (``db.LogEntry``); this module keeps an in-process copy of
the committed leaf hashes (append-only, so a cached prefix never goes stale), computes
roots and proofs with ``cards.merkle``, and signs tree heads with the service key.
The ``check_*`` functions are the one verification path used by the service, the CLI
and the tests against the public vectors: every proof anyone accepts passes through them.
"""
from __future__ import annotations

import base64
import threading
from dataclasses import dataclass

from sqlalchemy import select

from cards import cbor, cose, keys, merkle
from cards.errors import LaminateError

from .db import Database, LogEntry, LogHead, now_ms

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
    tree_size: int
    root_hash: bytes
    timestamp_ms: int
    signed: bytes          # COSE_Sign1 by the service key over dcbor(payload)

    def to_dict(self) -> dict:
        return {"tree_size": self.tree_size, "root_hash": self.root_hash.hex(),
                "timestamp_ms": self.timestamp_ms,
                "signed": base64.b64encode(self.signed).decode("ascii")}


def sign_tree_head(tree_size: int, root_hash: bytes, private_key) -> TreeHead:
    stamp = now_ms()
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


# ---------------------------------------------------------------- the log itself

class TransparencyLog:
    """Reads and appends the database log; thread-safe within one process."""

    def __init__(self, db: Database, private_key):
        self.db = db
        self.private_key = private_key
        self._hashes: list[bytes] = []
        self._roots: dict[int, bytes] = {0: merkle.root_of([])}
        self._lock = threading.Lock()

    # reads ------------------------------------------------------------------
    def sync(self) -> int:
        """Load leaves committed by any process since the last look; returns the size."""
        with self._lock:
            start = len(self._hashes)
        with self.db.read() as session:
            rows = session.execute(
                select(LogEntry.leaf_index, LogEntry.leaf_hash)
                .where(LogEntry.leaf_index >= start).order_by(LogEntry.leaf_index)).all()
        with self._lock:
            for index, leaf_hash in rows:
                if index == len(self._hashes):
                    self._hashes.append(bytes(leaf_hash))
            return len(self._hashes)

    def size(self) -> int:
        return self.sync()

    def leaf_hashes(self, size: int) -> list[bytes]:
        if size > len(self._hashes):
            self.sync()
        with self._lock:
            if size > len(self._hashes):
                raise LaminateError(f"tree_size {size} is larger than the log "
                                    f"({len(self._hashes)} leaves)")
            return self._hashes[:size]

    def root(self, size: int) -> bytes:
        with self._lock:
            cached = self._roots.get(size)
        if cached is not None:
            return cached
        root = merkle.root_of(self.leaf_hashes(size))
        with self._lock:
            if len(self._roots) > 4096:
                self._roots.clear()
                self._roots[0] = merkle.root_of([])
            self._roots[size] = root
        return root

    def tree_head(self, size: int | None = None) -> TreeHead:
        size = self.sync() if size is None else size
        return sign_tree_head(size, self.root(size), self.private_key)

    def inclusion_proof(self, leaf_index: int, tree_size: int) -> list[bytes]:
        if not 0 <= leaf_index < tree_size:
            raise LaminateError(f"leaf_index {leaf_index} is not in a tree of size {tree_size}")
        return merkle.inclusion_proof(self.leaf_hashes(tree_size), leaf_index)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        if not 1 <= first <= second:
            raise LaminateError(f"first ({first}) must be between 1 and second ({second}): "
                                "a proof from the empty tree proves nothing")
        if first == second:
            return []
        return merkle.consistency_proof(self.leaf_hashes(second), first, second)

    def entry(self, leaf_index: int) -> LogEntry | None:
        with self.db.read() as session:
            return session.get(LogEntry, leaf_index)

    # writes -----------------------------------------------------------------
    def append(self, session, head: LogHead, kind: str, ref: str, data: bytes) -> tuple[int, bytes]:
        """Append one leaf inside ``db.write()``. The in-process cache only ever learns
        committed leaves (through ``sync``), so a rolled-back append leaves no trace."""
        index = head.size
        leaf_hash = merkle.leaf_hash(data)
        session.add(LogEntry(leaf_index=index, leaf_hash=leaf_hash, kind=kind, ref=ref,
                             data=data, logged_ms=now_ms()))
        head.size = index + 1
        session.flush()
        return index, leaf_hash

    def audit(self) -> int:
        """Recompute every leaf hash from its stored data and compare with the head row,
        so a database whose log and tables disagree is refused at start-up."""
        with self.db.read() as session:
            head = session.get(LogHead, 1)
            count = 0
            for index, leaf_hash, data in session.execute(
                    select(LogEntry.leaf_index, LogEntry.leaf_hash, LogEntry.data)
                    .order_by(LogEntry.leaf_index)):
                if index != count:
                    raise LaminateError(f"log entry {count} is missing from the database")
                if merkle.leaf_hash(bytes(data)) != bytes(leaf_hash):
                    raise LaminateError(f"log entry {index}: stored data does not match its leaf hash")
                count += 1
        if head is None or head.size != count:
            raise LaminateError(f"log head says {head.size if head else None} leaves, "
                                f"the database holds {count}")
        return self.sync()
