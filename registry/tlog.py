"""The service's append-only transparency log (RFC 9162 Merkle tree) and its tree heads.

Leaves live in the database (``db.LogEntry``); this module keeps an in-process copy of
the committed leaf hashes (append-only, so a cached prefix never goes stale), computes
roots and proofs with ``cards.merkle``, and signs tree heads with the service key.
Proof checks and tree-head signing live in ``verifier.logproof``.
"""
from __future__ import annotations

import threading

from sqlalchemy import select

from cards import merkle
from cards.errors import LaminateError
from verifier.logproof import TreeHead, sign_tree_head

from .db import Database, LogEntry, LogHead, now_ms


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

    def tree_head(self) -> TreeHead:
        """The signed head of the current tree; no other size is ever signed, so a
        signature never vouches for a view of the log that is already stale."""
        size = self.sync()
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
