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
from sqlalchemy import func, insert, select

from cards import keys, merkle
from cards.errors import LaminateError
from verifier import tiles
from verifier.logproof import TreeHead, sign_checkpoint, sign_tree_head, verifier_key

from .db import Database, LogEntry, LogHead, TileRow, now_ms

TILE_CACHE = 4096               # 4096 * 8 KiB = 32 MiB at most
TILE_BYTES = tiles.TILE_WIDTH * tiles.HASH_SIZE
MEMO_TILES = 512                # internal trees of 511 hashes: about 40 KiB each


class _Memo:
    """Tiles' internal trees across proofs (a tile of a given width never changes),
    least recently used first out."""

    def __init__(self, limit: int):
        self.limit, self._items, self._lock = limit, OrderedDict(), threading.Lock()

    def get(self, key):
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def __setitem__(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.limit:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class LeafBatch:
    """Leaves appended inside one ``db.write()`` transaction: each gets its index at
    once, the tiles and the head move once, in ``finish``. Entry rows go to the
    database at once while ``immediate`` (rows that reference them may follow in the
    same transaction), else in one bulk insert at ``flush_rows`` or ``finish``.
    ``mark``/``undo`` drop the leaves of a part of the batch whose savepoint rolled back."""

    def __init__(self, log: TransparencyLog, session, head: LogHead, immediate: bool = True):
        self.log, self.session, self.head = log, session, head
        self.start, self.hashes = head.size, []
        self.immediate = immediate
        self._rows: list[dict] = []
        self.stamp = now_ms()

    def add(self, kind: str, ref: str, data: bytes) -> tuple[int, bytes]:
        index, leaf_hash = self.start + len(self.hashes), merkle.leaf_hash(data)
        self._rows.append({"leaf_index": index, "leaf_hash": leaf_hash, "kind": kind,
                           "ref": ref, "data": data, "logged_ms": self.stamp})
        self.hashes.append(leaf_hash)
        if self.immediate:
            self.flush_rows()
        return index, leaf_hash

    def flush_rows(self) -> None:
        """One executemany, handed to the driver as is: SQLAlchemy's per-row parameter
        processing would cost more than the insert itself on a bulk append."""
        if self._rows:
            conn = self.session.connection()
            compiled = insert(LogEntry.__table__).compile(dialect=conn.dialect)
            if compiled.positional:
                order = compiled.positiontup or []
                params: list = [tuple(r[k] for k in order) for r in self._rows]
            else:
                params = self._rows
            conn.exec_driver_sql(str(compiled), params)
            self._rows = []

    def mark(self) -> int:
        return len(self.hashes)

    def undo(self, mark: int) -> None:
        del self.hashes[mark:]

    def finish(self) -> int:
        """Write the entries, the changed tiles and the new size; returns the size."""
        self.flush_rows()
        if self.hashes:
            size, changed = tiles.append_leaves(
                lambda lv, i, w: self.log.read_tile(lv, i, w, self.session),
                self.start, self.hashes)
            self.log._write_tiles(self.session, changed)
            self.head.size = size
        self.session.flush()
        self.start, self.hashes = self.head.size, []
        return self.head.size


class TransparencyLog:
    """Reads and appends the database log; any number of processes share one database."""

    def __init__(self, db: Database, private_key, log_key=None):
        self.db = db
        self.private_key = private_key
        self.log_key = log_key
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._known_size = 0          # the log only grows: any size up to this exists
        self._memo = _Memo(MEMO_TILES)
        self.fetches = 0              # tile statements sent (one per uncached proof)

    # tiles ------------------------------------------------------------------
    def _cached(self, level: int, index: int, width: int) -> bytes | None:
        with self._lock:
            known = self._cache.get((level, index))
            if known is not None and len(known) >= width * tiles.HASH_SIZE:
                self._cache.move_to_end((level, index))
                return known[:width * tiles.HASH_SIZE]
        return None

    def _remember(self, key: tuple[int, int], data: bytes) -> None:
        with self._lock:
            if len(data) > len(self._cache.get(key, b"")):
                self._cache[key] = data
            while len(self._cache) > TILE_CACHE:
                self._cache.popitem(last=False)

    def read_tile(self, level: int, index: int, width: int, session=None) -> bytes:
        """The first ``width`` hashes of a stored tile (a prefix is the tile at an
        older tree size); TileError if the database does not reach that far."""
        known = self._cached(level, index, width)
        if known is not None:
            return known
        if session is None:
            return self._fetch({(level, index): width})[(level, index)][:width * tiles.HASH_SIZE]
        row = session.get(TileRow, (level, index))
        data = bytes(row.data) if row is not None else b""
        if len(data) < width * tiles.HASH_SIZE:
            raise tiles.TileError(f"tile {tiles.tile_path(level, index, max(width, 1))} "
                                  "is not in the database")
        return data[:width * tiles.HASH_SIZE]

    def _fetch(self, need: dict[tuple[int, int], int]) -> dict[tuple[int, int], bytes]:
        """Committed tiles, all in one statement on a pooled driver connection (a proof
        pays one round trip, no transaction around it), checked to reach the widths."""
        engine = self.db.tile_reader or self.db.reader
        mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        by_level: dict[int, list[int]] = {}
        for level, index in need:
            by_level.setdefault(level, []).append(index)
        # One (level = ? AND idx IN (...)) term per level: each is a primary-key search
        # on SQLite and PostgreSQL alike (SQLite scans the table for a row-value IN).
        terms, params = [], []
        for level, idxs in sorted(by_level.items()):
            terms.append(f"(level = {mark} AND idx IN ({', '.join([mark] * len(idxs))}))")
            params += [level, *idxs]
        sql = f"SELECT level, idx, data FROM {TileRow.__tablename__} WHERE " + " OR ".join(terms)
        for attempt in (1, 2):
            conn = engine.raw_connection()
            try:
                cursor = conn.cursor()
                cursor.execute(sql, params)
                got = {(lv, i): bytes(d) for lv, i, d in cursor.fetchall()}
                cursor.close()
                self.fetches += 1
                break
            except engine.dialect.loaded_dbapi.OperationalError:
                conn.invalidate()          # a pooled connection the server dropped
                if attempt == 2:
                    raise
            finally:
                conn.close()
        for (level, index), width in need.items():
            data = got.get((level, index), b"")
            if len(data) < width * tiles.HASH_SIZE:
                raise tiles.TileError(f"tile {tiles.tile_path(level, index, max(width, 1))} "
                                      "is not in the database")
            self._remember((level, index), data)
        return got

    def _with_tiles(self, compute):
        """``compute(read_tile, memo, plan)`` with every tile it needs read in one
        statement: a planning pass (no hashing) names the tiles that are not cached."""
        need: dict[tuple[int, int], int] = {}

        def plan(level: int, index: int, width: int) -> bytes:
            if self._cached(level, index, width) is None:
                need[(level, index)] = max(width, need.get((level, index), 0))
            return bytes(width * tiles.HASH_SIZE)
        compute(plan, None, True)
        fetched = self._fetch(need) if need else {}
        return compute(lambda lv, i, w: fetched[(lv, i)][:w * tiles.HASH_SIZE]
                       if (lv, i) in fetched else self.read_tile(lv, i, w), self._memo, False)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
        self._memo.clear()

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
            size = head.size if head is not None else 0
        with self._lock:
            self._known_size = max(self._known_size, size)
        return size

    def _check_size(self, size: int) -> None:
        """The log never shrinks, so a size up to one seen before needs no query."""
        if size <= self._known_size:
            return
        current = self.size()
        if size > current:
            raise LaminateError(f"tree_size {size} is larger than the log ({current} leaves)")

    def leaf_hash(self, leaf_index: int) -> bytes:
        self._check_size(leaf_index + 1)
        return self.read_tile(0, leaf_index // tiles.TILE_WIDTH,
                              leaf_index % tiles.TILE_WIDTH + 1)[-tiles.HASH_SIZE:]

    def root(self, size: int) -> bytes:
        self._check_size(size)
        return self._with_tiles(lambda read, memo, plan: tiles.tree_root(read, size, memo, plan))

    def tree_head(self) -> TreeHead:
        """The signed head of the current tree; no other size is ever signed, so a
        signature never vouches for a view of the log that is already stale."""
        size = self.size()
        return sign_tree_head(size, self.root(size), self.private_key)

    @property
    def origin(self) -> str:
        """The checkpoint origin line and note key name: one per service key."""
        return f"laminate.log/{keys.key_id(self.private_key.public_key()).hex()}"

    @property
    def note_key(self) -> str:
        """The log key's note verifier key (``<origin>+<hash>+<key>``), what clients
        and witnesses pin to check checkpoints."""
        if self.log_key is None:
            raise LaminateError("this log has no log key: checkpoints need one")
        return verifier_key(self.origin, self.log_key.public_key())

    def checkpoint(self) -> str:
        """The current tree as a signed-note checkpoint, for tlog-tiles clients and
        witnesses, signed by the log's own Ed25519 key (whatever the service key is)."""
        if not isinstance(self.log_key, ed25519.Ed25519PrivateKey):
            raise LaminateError("checkpoints need an Ed25519 log key")
        size = self.size()
        return sign_checkpoint(self.origin, size, self.root(size), self.origin, self.log_key)

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
        return self._with_tiles(lambda read, memo, plan: tiles.inclusion_proof(
            read, tree_size, leaf_index, memo, plan))

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        if not 1 <= first <= second:
            raise LaminateError(f"first ({first}) must be between 1 and second ({second}): "
                                "a proof from the empty tree proves nothing")
        self._check_size(second)
        if first == second:
            return []
        return self._with_tiles(lambda read, memo, plan: tiles.consistency_proof(
            read, first, second, memo, plan))

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
        batch = LeafBatch(self, session, head, immediate=False)
        out = [batch.add(kind, ref, data) for kind, ref, data in items]
        batch.finish()
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
