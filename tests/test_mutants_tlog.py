"""The service log's start-up audit, tampered one way at a time: each way names its check.

An attacker with write access to the database who drops a log entry must also lower the
head row, or the head check alone would notice; the gap check must catch that pair.
"""
import pytest

from cards import keys, merkle
from cards.errors import LaminateError
from registry import db as dbmod
from registry import tlog
from verifier import tiles


@pytest.fixture
def log(tmp_path):
    db = dbmod.open_database(f"sqlite:///{tmp_path / 'log.sqlite'}")
    tl = tlog.TransparencyLog(db, keys.generate_private_key("ed25519"))
    with db.write() as (session, head):
        for i, data in enumerate([b"a", b"b", b"c"]):
            tl.append(session, head, "test", f"r{i}", data)
    yield tl, db
    db.dispose()


def test_untouched_log_passes_the_audit(log):
    tl, _ = log
    assert tl.audit() == 3


def test_entry_removed_and_head_lowered_is_a_gap(log):
    tl, db = log
    with db.write() as (session, head):
        session.delete(session.get(dbmod.LogEntry, 1))
        head.size = 2     # the head now agrees with the number of rows left
    with pytest.raises(LaminateError, match=r"^log entry 1 is missing from the database$"):
        tl.audit()


def test_last_entry_removed_is_a_head_mismatch(log):
    tl, db = log
    with db.write() as (session, _head):
        session.delete(session.get(dbmod.LogEntry, 2))
    with pytest.raises(LaminateError, match=r"^log head says 3 leaves, the database holds 2$"):
        tl.audit()


@pytest.mark.parametrize("size", [2, 4])
def test_head_row_that_disagrees_with_the_entries(log, size):
    tl, db = log
    with db.write() as (_session, head):
        head.size = size
    with pytest.raises(LaminateError, match=rf"^log head says {size} leaves, the database holds 3$"):
        tl.audit()


def test_a_tile_the_database_does_not_reach_is_named(log):
    """Three leaves: tile 0/0 holds three hashes, so a reader asking for four is told the
    tile is not stored, not handed a short tile."""
    tl, _ = log
    assert len(tl.read_tile(0, 0, 3)) == 3 * 32
    with pytest.raises(tiles.TileError, match=r"^tile tile/0/000\.p/4 is not in the database$"):
        tl.read_tile(0, 0, 4)
    with pytest.raises(tiles.TileError, match=r"^tile tile/1/000\.p/1 is not in the database$"):
        tl.read_tile(1, 0, 1)


def test_tiles_read_inside_a_rolled_back_write_are_not_remembered(log):
    """Within a write the second append reads the tile the first one wrote; that tile
    is rolled back with the write, so no later reader may be served it from memory."""
    tl, db = log
    with pytest.raises(RuntimeError):
        with db.write() as (session, head):
            tl.append(session, head, "test", "x", b"x")
            tl.append(session, head, "test", "y", b"y")
            raise RuntimeError("crash before commit")
    with db.write() as (session, head):
        tl.append(session, head, "test", "d", b"d")
    hashes = [merkle.leaf_hash(d) for d in (b"a", b"b", b"c", b"d")]
    assert tl.leaf_hash(3) == hashes[3]
    assert tl.root(4) == merkle.root_of(hashes)
    assert tl.audit(full=True) == 4


@pytest.mark.parametrize("log_key", [None, "p256"])
def test_checkpoints_need_an_ed25519_log_key(tmp_path, log_key):
    """Checkpoints are signed notes: only an Ed25519 log key of the log's own signs them,
    whatever the service key is; no log key, or a P-256 one, is refused by name."""
    db = dbmod.open_database(f"sqlite:///{tmp_path / 'p256.sqlite'}")
    tl = tlog.TransparencyLog(db, keys.generate_private_key("p256"),
                              log_key and keys.generate_private_key(log_key))
    with pytest.raises(LaminateError, match=r"^checkpoints need an Ed25519 log key"):
        tl.checkpoint()
    db.dispose()


@pytest.mark.parametrize("index, size", [(3, 3), (-1, 3), (0, 0)])
def test_inclusion_proof_of_a_leaf_outside_the_tree(log, index, size):
    tl, _ = log
    with pytest.raises(LaminateError,
                       match=rf"^leaf_index {index} is not in a tree of size {size}$"):
        tl.inclusion_proof(index, size)


@pytest.mark.parametrize("first, second", [(0, 3), (3, 2), (-1, 3)])
def test_consistency_proof_from_the_empty_tree_or_backwards(log, first, second):
    tl, _ = log
    with pytest.raises(LaminateError, match=rf"^first \({first}\) must be between 1 and second"):
        tl.consistency_proof(first, second)


def test_sizes_beyond_the_log_are_named(log):
    tl, _ = log
    with pytest.raises(LaminateError, match=r"^tree_size 4 is larger than the log \(3 leaves\)$"):
        tl.root(4)
    with pytest.raises(LaminateError, match=r"^tree_size 4 is larger than the log \(3 leaves\)$"):
        tl.inclusion_proof(0, 4)
    with pytest.raises(LaminateError, match=r"^tree_size 4 is larger than the log \(3 leaves\)$"):
        tl.consistency_proof(1, 4)
    assert tl.root(3) == merkle.root_of([merkle.leaf_hash(d) for d in (b"a", b"b", b"c")])
    assert tl.consistency_proof(3, 3) == []


@pytest.mark.parametrize("size, first_checked", [(257, 256), (512, 256), (258, 256), (3, 0)])
def test_the_quick_audit_rehashes_the_last_tile_and_the_full_one_everything(tmp_path, size,
                                                                           first_checked):
    """Start-up stays O(256 + log n): the quick audit rehashes the entries of the last
    tile only, so it finds an altered entry there but not one just before it; the full
    audit finds both."""
    db = dbmod.open_database(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    tl = tlog.TransparencyLog(db, keys.generate_private_key("ed25519"))
    with db.write() as (session, head):
        tl.append_many(session, head, [("test", f"r{i}", b"%d" % i) for i in range(size)])
    for index, quick_sees in [(first_checked, True), (first_checked - 1, False),
                              (size - 1, True)]:
        if index < 0:
            continue
        with db.write() as (session, _head):
            session.get(dbmod.LogEntry, index).data = b"altered"
        if quick_sees:
            with pytest.raises(LaminateError, match=rf"^log entry {index}: stored data does "
                                                    "not match its leaf hash$"):
                tl.audit()
        else:
            assert tl.audit() == size
        with pytest.raises(LaminateError, match=rf"^log entry {index}: stored data"):
            tl.audit(full=True)
        with db.write() as (session, _head):
            session.get(dbmod.LogEntry, index).data = b"%d" % index
    assert tl.audit(full=True) == size
    db.dispose()


class _DroppedForTiles:
    """A pooled connection whose server drops every tile read (other statements pass
    through to the real connection, as the ORM shares the engine)."""

    def __init__(self, real, error, calls):
        self._real, self._error, self._calls = real, error, calls

    def __getattr__(self, name):
        return getattr(self._real, name)

    def cursor(self, *args, **kwargs):
        real_cursor, conn = self._real.cursor(*args, **kwargs), self

        class Cursor:
            def __getattr__(self, name):
                return getattr(real_cursor, name)

            def execute(self, sql, *params):
                if "FROM laminate_tiles" in sql:
                    conn._calls.append("tile read")
                    raise conn._error("server closed the connection unexpectedly")
                return real_cursor.execute(sql, *params)
        return Cursor()

    def invalidate(self, *args, **kwargs):
        self._calls.append("invalidate")
        return self._real.invalidate(*args, **kwargs)


def test_a_tile_read_retries_a_dropped_connection_once_then_raises(log, monkeypatch):
    """A connection the server dropped is invalidated and the read tried once more on a
    fresh one; when that fails too the driver's error reaches the caller (it is not
    swallowed into a half-read proof)."""
    tl, db = log
    engine = db.tile_reader or db.reader
    error = engine.dialect.loaded_dbapi.OperationalError
    calls: list[str] = []
    real = engine.raw_connection
    monkeypatch.setattr(engine, "raw_connection",
                        lambda *a, **k: _DroppedForTiles(real(*a, **k), error, calls))
    with pytest.raises(error, match="server closed the connection"):
        tl.inclusion_proof(0, 3)
    assert calls == ["tile read", "invalidate"] * 2


def test_a_tile_read_inside_a_write_names_a_tile_the_database_does_not_reach(log):
    """Inside a write (the append path) tiles are read through the write's session: a
    tile shorter than asked is named there too, not handed back short."""
    tl, db = log
    with db.write() as (session, _head):
        assert len(tl.read_tile(0, 0, 3, session=session)) == 3 * 32
        with pytest.raises(tiles.TileError, match=r"^tile tile/0/000\.p/4 is not in the database$"):
            tl.read_tile(0, 0, 4, session=session)


def test_a_log_without_a_log_key_has_no_note_key(tmp_path):
    """Clients and witnesses pin the note key: a log made without a log key has none and
    says so, rather than naming a key nobody holds."""
    db = dbmod.open_database(f"sqlite:///{tmp_path / 'nokey.sqlite'}")
    try:
        tl = tlog.TransparencyLog(db, keys.generate_private_key("ed25519"))
        with pytest.raises(LaminateError, match=r"^this log has no log key: checkpoints need one$"):
            _ = tl.note_key
    finally:
        db.dispose()
