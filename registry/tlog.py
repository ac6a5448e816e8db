"""The service's append-only transparency log (RFC 9162 Merkle tree) and its tree heads.

Leaves live in the database (``db.LogEntry``) and the tree lives beside them as tiles
(``db.TileRow``), updated in the same transaction as each append, so a proof reads
O(log n) tiles and nothing reads all leaves. A committed tile only ever grows, so any
prefix once read stays true and is cached (a wider request reads the row again).
Proof code and tree-head signing live in ``verifier.tiles`` and ``verifier.logproof``.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import func, select

from cards import keys, merkle
from cards.errors import LaminateError
from verifier import tiles
from verifier.logproof import TreeHead, sign_checkpoint, sign_tree_head

from .db import Database, LogEntry, LogHead, TileRow, now_ms

TILE_CACHE = 4096               # 4096 * 8 KiB = 32 MiB at most
TILE_BYTES = tiles.TILE_WIDTH * tiles.HASH_SIZE


class TransparencyLog:
    """Reads and appends the database log; any number of processes share one database."""

    def __init__(self, db: Database, private_key):
        self.db = db
        self.private_key = private_key
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    # tiles ------------------------------------------------------------------
    def read_tile(self, level: int, index: int, width: int, session=None) -> bytes:
        """The first ``width`` hashes of a stored tile (a prefix is the tile at an
        older tree size); TileError if the database does not reach that far."""
        key = (level, index)
        with self._lock:
            known = self._cache.get(key)
        if known is not None and len(known) >= width * tiles.HASH_SIZE:
            return known[:width * tiles.HASH_SIZE]
        if session is None:
            with self.db.read() as s:
                row = s.get(TileRow, key)
                data = bytes(row.data) if row is not None else b""
        else:
            row = session.get(TileRow, key)
            data = bytes(row.data) if row is not None else b""
        if len(data) < width * tiles.HASH_SIZE:
            raise tiles.TileError(f"tile {tiles.tile_path(level, index, max(width, 1))} "
                                  "is not in the database")
        if session is None:
            with self._lock:
                self._cache[key] = data
                while len(self._cache) > TILE_CACHE:
                    self._cache.popitem(last=False)
        return data[:width * tiles.HASH_SIZE]

    def _write_tiles(self, session, changed: dict[tuple[int, int], bytes]) -> None:
        for (level, index), data in changed.items():
            row = session.get(TileRow, (level, index))
            if row is None:
                session.add(TileRow(level=level, idx=index, data=data))
            else:
                row.data = data

    # reads ------------------------------------------------------------------
    def size(self) -> int:
        """The committed size, as any process sees it now."""
        with self.db.read() as session:
            head = session.get(LogHead, 1)
            return head.size if head is not None else 0

    def _check_size(self, size: int) -> None:
        current = self.size()
        if size > current:
            raise LaminateError(f"tree_size {size} is larger than the log ({current} leaves)")

    def leaf_hash(self, leaf_index: int) -> bytes:
        self._check_size(leaf_index + 1)
        return tiles.TileReader(self.read_tile, leaf_index + 1).node(0, leaf_index)

    def root(self, size: int) -> bytes:
        self._check_size(size)
        return tiles.tree_root(self.read_tile, size)

    def tree_head(self) -> TreeHead:
        """The signed head of the current tree; no other size is ever signed, so a
        signature never vouches for a view of the log that is already stale."""
        size = self.size()
        return sign_tree_head(size, tiles.tree_root(self.read_tile, size), self.private_key)

    @property
    def origin(self) -> str:
        """The checkpoint origin line and note key name: one per service key."""
        return f"laminate.log/{keys.key_id(self.private_key.public_key()).hex()}"

    def checkpoint(self) -> str:
        """The current tree as a signed-note checkpoint, for tlog-tiles clients and
        witnesses; only an Ed25519 service key can sign one."""
        if not isinstance(self.private_key, ed25519.Ed25519PrivateKey):
            raise LaminateError("checkpoints need an Ed25519 service key; this service "
                                "signs with P-256")
        size = self.size()
        return sign_checkpoint(self.origin, size, tiles.tree_root(self.read_tile, size),
                               self.origin, self.private_key)

    def entry_bundle(self, index: int, width: int) -> bytes:
        """Entries 256*index .. 256*index+width-1 as a tile entry bundle."""
        first = index * tiles.TILE_WIDTH
        self._check_size(first + width)
        with self.db.read() as session:
            rows = [bytes(d) for (d,) in session.execute(
                select(LogEntry.data).where(LogEntry.leaf_index >= first,
                                            LogEntry.leaf_index < first + width)
                .order_by(LogEntry.leaf_index))]
        return tiles.encode_bundle(rows)

    def inclusion_proof(self, leaf_index: int, tree_size: int) -> list[bytes]:
        if not 0 <= leaf_index < tree_size:
            raise LaminateError(f"leaf_index {leaf_index} is not in a tree of size {tree_size}")
        self._check_size(tree_size)
        return tiles.inclusion_proof(self.read_tile, tree_size, leaf_index)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        if not 1 <= first <= second:
            raise LaminateError(f"first ({first}) must be between 1 and second ({second}): "
                                "a proof from the empty tree proves nothing")
        self._check_size(second)
        if first == second:
            return []
        return tiles.consistency_proof(self.read_tile, first, second)

    def entry(self, leaf_index: int) -> LogEntry | None:
        with self.db.read() as session:
            return session.get(LogEntry, leaf_index)

    # writes -----------------------------------------------------------------
    def append(self, session, head: LogHead, kind: str, ref: str, data: bytes) -> tuple[int, bytes]:
        """Append one leaf inside ``db.write()``: the entry, the head and the changed
        tiles commit together or not at all, so a rolled-back append leaves no trace."""
        return self.append_many(session, head, [(kind, ref, data)])[0]

    def append_many(self, session, head: LogHead,
                    items: list[tuple[str, str, bytes]]) -> list[tuple[int, bytes]]:
        """Append a batch of (kind, ref, data) leaves in one transaction; each tile
        that changes is written once per batch."""
        start, stamp = head.size, now_ms()
        out = []
        for offset, (kind, ref, data) in enumerate(items):
            leaf_hash = merkle.leaf_hash(data)
            session.add(LogEntry(leaf_index=start + offset, leaf_hash=leaf_hash, kind=kind,
                                 ref=ref, data=data, logged_ms=stamp))
            out.append((start + offset, leaf_hash))
        size, changed = tiles.append_leaves(
            lambda lv, i, w: self.read_tile(lv, i, w, session), start, [h for _, h in out])
        self._write_tiles(session, changed)
        head.size = size
        session.flush()
        return out

    def audit(self, full: bool = False) -> int:
        """Check that the head, the tiles and the stored entries agree, so a database
        whose log and tables disagree is refused at start-up. Tiles missing for an older
        database are built here once. Without ``full`` only the last tile's entries are
        rehashed (start-up stays O(256 + log n)); ``full`` rehashes every entry."""
        with self.db.read() as session:
            head = session.get(LogHead, 1)
            size = head.size if head is not None else 0
            count = session.execute(select(func.count()).select_from(LogEntry)).scalar_one()
            tiled = session.execute(select(func.count()).select_from(TileRow)
                                    .where(TileRow.level == 0)).scalar_one()
        if count != size:
            raise LaminateError(f"log head says {size} leaves, the database holds {count}")
        if size and not tiled:
            self._build_tiles(size)
        start = 0 if full else size - 1 - (size - 1) % tiles.TILE_WIDTH
        reader = tiles.TileReader(self.read_tile, size)
        with self.db.read() as session:
            expect = max(start, 0)
            for index, leaf_hash, data in session.execute(
                    select(LogEntry.leaf_index, LogEntry.leaf_hash, LogEntry.data)
                    .where(LogEntry.leaf_index >= expect).order_by(LogEntry.leaf_index)):
                if index != expect:
                    raise LaminateError(f"log entry {expect} is missing from the database")
                if merkle.leaf_hash(bytes(data)) != bytes(leaf_hash) \
                        or reader.node(0, index) != bytes(leaf_hash):
                    raise LaminateError(f"log entry {index}: stored data does not match "
                                        "its leaf hash")
                expect += 1
        return size

    def _build_tiles(self, size: int) -> None:
        """Tiles for a database written before the log kept them, in chunks."""
        done, chunk = 0, 65_536
        while done < size:
            with self.db.write() as (session, _head):
                hashes = [bytes(h) for (h,) in session.execute(
                    select(LogEntry.leaf_hash).where(LogEntry.leaf_index >= done)
                    .order_by(LogEntry.leaf_index).limit(chunk))]
                new_size, changed = tiles.append_leaves(
                    lambda lv, i, w: self.read_tile(lv, i, w, session), done, hashes)
                self._write_tiles(session, changed)
            done = new_size
