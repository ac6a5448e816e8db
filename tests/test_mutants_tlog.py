"""The service log's start-up audit, tampered one way at a time: each way names its check.

An attacker with write access to the database who drops a log entry must also lower the
head row, or the head check alone would notice; the gap check must catch that pair.
"""
import pytest

from cards import keys
from cards.errors import LaminateError
from registry import db as dbmod
from registry import tlog


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
