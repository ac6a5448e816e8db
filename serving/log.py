"""The deployment's query log: every answer, append-only, under one RFC 9162 Merkle tree.

One row per answered batch: the client, the receipt payload it was signed under, the
canonical bytes of its inputs (the owner needs them to replay a client's flipped queries
in an ownership test) and its leaves, dcbor([input digest, answer]) each. The
deployment's tree has one leaf per batch, the receipt payload itself (which holds the
batch's own Merkle root), so an answer is proven by its path in the batch and the
batch's path in the log, and a batch costs one row and one hash whatever its size.
SQLite triggers refuse UPDATE and DELETE, and the tree head is rebuilt from the stored
payloads on open. The standard library's sqlite3 is enough here: one writer, short
transactions, no server to run. Clients see only their own rows (`entries(client)`); the
owner reads everything.
"""
from __future__ import annotations

import sqlite3
import threading
import time

from cards import cbor, merkle
from cards.errors import LaminateError

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    client TEXT NOT NULL,
    first_index INTEGER NOT NULL,
    count INTEGER NOT NULL,
    record BLOB NOT NULL,
    inputs BLOB NOT NULL,
    leaves BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_client ON batches (client, seq);
CREATE TRIGGER IF NOT EXISTS batches_no_update BEFORE UPDATE ON batches
    BEGIN SELECT RAISE(ABORT, 'the query log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS batches_no_delete BEFORE DELETE ON batches
    BEGIN SELECT RAISE(ABORT, 'the query log is append-only'); END;
"""
MAX_PAGE = 1000
GATHER_S = 0.01           # longest a batch waits to be committed with later ones
GATHER_ROWS = 256


class LogUnavailable(LaminateError):
    """The log cannot be written: the server stops answering rather than answer unlogged."""


class QueryLog:
    """Append and read over one SQLite file, safe across threads.

    Appends are ordered, indexed and added to the tree at once (the receipt names the
    index), and written by one writer thread that commits whatever has queued up in one
    transaction: under load one commit covers many batches instead of one each, and no
    request waits for the disk. A crash can lose the last few milliseconds of rows; a
    write error stops the server from answering (every later append raises)."""

    def __init__(self, path):
        self.path = str(path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        self._db_lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending = []
        self._writing, self._closed, self._failed = False, False, None
        self._flushing = 0        # readers waiting for the rows to be on disk
        self._tree = merkle.MerkleTree()
        for (record,) in self._db.execute("SELECT record FROM batches ORDER BY seq"):
            self._tree.add(record)
        (count,) = self._db.execute("SELECT coalesce(sum(count), 0) FROM batches").fetchone()
        self._next_index = count
        self._committed = self._tree.size        # batches known to be on disk
        self._writer = threading.Thread(target=self._write_loop, name="query-log", daemon=True)
        self._writer.start()

    def append(self, client: str, inputs: list[bytes], leaves: list[bytes],
               record) -> tuple[int, bytes]:
        """Queue a batch: its canonical inputs, its leaves and its record,
        ``record(first index)`` (the receipt payload); (first index, record bytes)."""
        blobs = cbor.dumps(inputs), cbor.dumps(leaves)
        with self._lock:
            if self._failed is not None or self._closed:
                raise LogUnavailable(f"{self.path}: the query log cannot be written "
                                     f"({self._failed or 'closed'}); not answering unlogged")
            first = self._next_index
            data = record(first)
            self._pending.append((self._tree.size, client, first, len(leaves), data, *blobs))
            self._tree.add(data)
            self._next_index += len(leaves)
            # Wake the writer only when it has something new to do: waking it for every
            # batch costs a thread switch per answer.
            if len(self._pending) in (1, GATHER_ROWS):
                self._changed.notify_all()
            return first, data

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._changed.wait()
                if not self._pending:
                    return
                # A commit costs about as much as answering a batch: gather what arrives
                # within GATHER_S (or GATHER_ROWS batches) so one commit covers many.
                deadline = time.monotonic() + GATHER_S
                while (len(self._pending) < GATHER_ROWS and not self._closed
                       and self._flushing == 0 and time.monotonic() < deadline):
                    self._changed.wait(max(0.0, deadline - time.monotonic()))
                rows, self._pending, self._writing = self._pending, [], True
            try:
                with self._db_lock:
                    self._db.execute("BEGIN")
                    self._db.executemany(
                        "INSERT INTO batches (seq, client, first_index, count, record, inputs, "
                        "leaves) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                    self._db.execute("COMMIT")
                with self._lock:
                    self._committed = rows[-1][0] + 1
            except sqlite3.Error as exc:
                with self._lock:
                    self._failed = str(exc)
                with self._db_lock:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
            finally:
                with self._lock:
                    self._writing = False
                    self._changed.notify_all()

    def flush(self) -> None:
        """Wait until every appended row is committed."""
        with self._lock:
            self._flushing += 1
            self._changed.notify_all()
            while (self._pending or self._writing) and self._failed is None:
                self._changed.wait()
            self._flushing -= 1
            if self._failed is not None:
                raise LogUnavailable(f"{self.path}: the query log cannot be written ({self._failed})")

    def tree_head(self) -> tuple[int, bytes]:
        with self._lock:
            return self._tree.size, self._tree.root()

    def durable_head(self) -> tuple[int, bytes]:
        """A tree head every row under which is committed (what may be signed and
        anchored: it can always be rebuilt from the file)."""
        with self._lock:
            head = self._tree.size, self._tree.root()
            self._flushing += 1
            self._changed.notify_all()
            while self._committed < head[0] and self._failed is None:
                self._changed.wait()
            self._flushing -= 1
            if self._failed is not None:
                raise LogUnavailable(f"{self.path}: the query log cannot be written ({self._failed})")
        return head

    def entries(self, client: str, start: int = 0, limit: int = MAX_PAGE) -> list[dict]:
        """One client's answers from log index ``start`` on (digests and answers only)."""
        limit = max(0, min(int(limit), MAX_PAGE))
        self.flush()
        with self._db_lock:
            batches = self._db.execute(
                "SELECT first_index, leaves FROM batches WHERE client = ? AND "
                "first_index + count > ? ORDER BY seq LIMIT ?",
                (client, int(start), limit)).fetchall()
        out = []
        for first, leaves in batches:
            for i, leaf in enumerate(cbor.loads(leaves)):
                if first + i >= start and len(out) < limit:
                    digest, label, *probabilities = cbor.loads(leaf)
                    out.append({"index": first + i, "input_sha256": digest.hex(), "label": label})
        return out

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._changed.notify_all()
        self._writer.join()
        with self._db_lock:
            self._db.close()
