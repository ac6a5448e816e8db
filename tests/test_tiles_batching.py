"""The integrator commits many callers' leaves in few transactions; a failed batch
fails every caller in it and commits none of its leaves."""
import threading

import pytest

from cards import keys, merkle
from registry import db as dbmod
from registry.batching import Integrator
from registry.tlog import LeafBatch, TransparencyLog
from verifier import tiles


@pytest.fixture
def log(tmp_path):
    db = dbmod.open_database(f"sqlite:///{tmp_path / 'log.sqlite'}")
    yield TransparencyLog(db, keys.generate_private_key("ed25519"))
    db.dispose()


def test_many_threads_share_batches(log):
    integ = Integrator(log, interval=0.05, max_batch=64)
    got: dict[bytes, int] = {}

    def worker(t):
        for i in range(40):
            data = b"t%d-%d" % (t, i)
            got[data] = integ.add("test", "r", data)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    integ.close()
    assert sorted(got.values()) == list(range(320)), "indices must be unique and dense"
    assert integ.batches < 320 // 2, f"{integ.batches} transactions for 320 leaves"
    hashes = [b""] * 320
    for data, index in got.items():
        hashes[index] = merkle.leaf_hash(data)
    assert tiles.tree_root(log.read_tile, 320) == merkle.root_of(hashes)


def test_failed_batch_fails_its_callers_and_commits_nothing(log, monkeypatch):
    integ = Integrator(log, interval=0.01, max_batch=8)
    plain = LeafBatch.finish

    def crash(self):
        plain(self)
        raise RuntimeError("database went away mid-batch")

    monkeypatch.setattr(LeafBatch, "finish", crash)
    with pytest.raises(RuntimeError, match="went away mid-batch"):
        integ.add("test", "r", b"lost")
    monkeypatch.setattr(LeafBatch, "finish", plain)
    assert log.size() == 0
    assert integ.add("test", "r", b"kept") == 0
    integ.close()
    with pytest.raises(Exception, match="integrator is closed"):
        integ.add("test", "r", b"late")


def test_proofs_from_cached_tiles_and_memoized_tile_trees_stay_exact(log):
    """One log object answers proofs while it grows: the tile cache and the memo of
    tile trees hold prefixes of tiles that later widen, and every proof at every old
    size must still be the RFC 9162 one."""
    leaves: list[bytes] = []
    for step in (1, 255, 2, 300, 65_000 - 558):
        data = [b"g%d" % (len(leaves) + i) for i in range(step)]
        with log.db.write() as (session, head):
            log.append_many(session, head, [("t", "r", d) for d in data])
        leaves += [merkle.leaf_hash(d) for d in data]
        n = len(leaves)
        for size in sorted({1, 2, 255, 256, 257, n // 2 + 1, n - 1, n} - {0}):
            if size > n:
                continue
            assert log.root(size) == merkle.root_of(leaves[:size]), size
            for index in {0, size // 3, size - 1}:
                assert log.inclusion_proof(index, size) == \
                    merkle.inclusion_proof(leaves[:size], index), (index, size)
            for first in {1, size // 2 or 1, size}:
                assert log.consistency_proof(first, size) == \
                    merkle.consistency_proof(leaves[:size], first, size), (first, size)
