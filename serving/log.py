"""The deployment's query log: every answer, append-only, under one RFC 9162 Merkle tree.

One row per answered input: the client, the input's digest and canonical bytes (the owner
needs the inputs to replay a client's flipped queries in an ownership test), what was
answered, and the leaf the batch's receipt signed. SQLite triggers refuse UPDATE and
DELETE, and the tree head is rebuilt from the leaves on open, so a row changed behind the
server's back changes every later root a client holds a receipt for. The standard
library's sqlite3 is enough here: one writer, short transactions, no server to run.
Clients see only their own rows (`entries(client)`); the owner reads everything.
"""
from __future__ import annotations

import sqlite3
import threading

from cards import merkle

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    idx INTEGER PRIMARY KEY,
    client TEXT NOT NULL,
    input_sha256 BLOB NOT NULL,
    input BLOB NOT NULL,
    label INTEGER NOT NULL,
    leaf BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_client ON entries (client, idx);
CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries
    BEGIN SELECT RAISE(ABORT, 'the query log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries
    BEGIN SELECT RAISE(ABORT, 'the query log is append-only'); END;
"""
MAX_PAGE = 1000


class QueryLog:
    """Thread-safe append and read over one SQLite file (or ":memory:")."""

    def __init__(self, path):
        self.path = str(path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        self._tree = merkle.MerkleTree()
        for (leaf,) in self._db.execute("SELECT leaf FROM entries ORDER BY idx"):
            self._tree.add(leaf)

    def append(self, client: str, rows: list[tuple[bytes, bytes, int, bytes]]) -> int:
        """Append (input digest, canonical input, label, leaf) rows; the first index."""
        with self._lock:
            first = self._tree.size
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO entries (idx, client, input_sha256, input, label, leaf) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(first + i, client, d, x, y, leaf) for i, (d, x, y, leaf) in enumerate(rows)])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            for *_, leaf in rows:
                self._tree.add(leaf)
            return first

    def tree_head(self) -> tuple[int, bytes]:
        with self._lock:
            return self._tree.size, self._tree.root()

    def entries(self, client: str, start: int = 0, limit: int = MAX_PAGE) -> list[dict]:
        """One client's rows from log index ``start`` on (digests and answers only)."""
        limit = max(0, min(int(limit), MAX_PAGE))
        with self._lock:
            rows = self._db.execute(
                "SELECT idx, input_sha256, label FROM entries WHERE client = ? AND idx >= ? "
                "ORDER BY idx LIMIT ?", (client, int(start), limit)).fetchall()
        return [{"index": i, "input_sha256": d.hex(), "label": y} for i, d, y in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()

