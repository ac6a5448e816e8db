"""The service's log writes go through the integrator: concurrent registrations share
one transaction, a refused one rolls back alone, and every service, whatever its key,
signs checkpoints with an Ed25519 log key of its own that the log itself names."""
import hashlib
import threading

import pytest
from sqlalchemy import select

from cards import cbor, keys, merkle
from cards.errors import LaminateError
from registry import db as dbmod
from registry.config import ServiceConfig
from registry.service import Service
from verifier import logproof, tiles


def make(tmp_path, kind="ed25519", **extra) -> Service:
    key_path = tmp_path / "service.pem"
    if not key_path.exists():
        keys.save_private_key(keys.generate_private_key(kind), key_path)
    return Service(ServiceConfig(database_url=f"sqlite:///{tmp_path / 's.sqlite'}",
                                 key_path=str(key_path), **extra))


def test_concurrent_sightings_share_one_integration(tmp_path):
    service = make(tmp_path, log_batch_interval=0.5, log_batch_size=64)
    try:
        start = service.log.size()
        digests = [hashlib.sha256(b"%d" % i).hexdigest() for i in range(24)]
        got: dict[str, int] = {}
        barrier = threading.Barrier(len(digests))

        def see(d):
            barrier.wait()
            got[d] = service.observe_model(d)["leaf_index"]
        threads = [threading.Thread(target=see, args=(d,)) for d in digests]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert sorted(got.values()) == list(range(start, start + 24))
        assert service.integrator.batches <= 2, \
            f"{service.integrator.batches} transactions for 24 concurrent sightings"
        # the second sighting of a digest is the first one's index, without a new leaf
        assert service.observe_model(digests[3])["leaf_index"] == got[digests[3]]
        assert service.log.size() == start + 24
    finally:
        service.close()


def test_a_refused_job_rolls_back_alone_and_the_batch_commits(tmp_path):
    service = make(tmp_path, log_batch_interval=0.5, log_batch_size=64)
    integ = service.integrator
    try:
        start = service.log.size()

        def good(i):
            def job(session, leaves):
                index, _ = leaves.add("model", f"g{i}", b"good %d" % i)
                session.add(dbmod.ModelRow(sha256=f"{i:064x}", leaf_index=index,
                                           source="submitted"))
                return index
            return job

        def refused(session, leaves):
            index, _ = leaves.add("model", "bad", b"refused")
            session.add(dbmod.ModelRow(sha256="f" * 64, leaf_index=index, source="submitted"))
            session.flush()
            raise ValueError("clock went back")

        futures = [integ.submit(good(0)), integ.submit(refused), integ.submit(good(1))]
        assert futures[0].result(30) == start
        with pytest.raises(ValueError, match="clock went back"):
            futures[1].result(30)
        assert futures[2].result(30) == start + 1, "the refused job's index was reused"
        with service.db.read() as session:
            rows = dict(session.execute(select(dbmod.LogEntry.leaf_index, dbmod.LogEntry.data)
                                        .where(dbmod.LogEntry.leaf_index >= start)).all())
            assert session.get(dbmod.ModelRow, "f" * 64) is None
        assert {i: bytes(d) for i, d in rows.items()} == {start: b"good 0",
                                                          start + 1: b"good 1"}
        assert service.log.audit(full=True) == start + 2
        assert tiles.tree_root(service.log.read_tile, start + 2) == service.log.root(start + 2)
        assert service.log.leaf_hash(start + 1) == merkle.leaf_hash(b"good 1")
    finally:
        service.close()


def test_a_p256_service_signs_checkpoints_with_its_own_log_key(tmp_path):
    service = make(tmp_path, kind="p256")
    try:
        assert keys.key_kind(service.key) == "p256"
        note = service.log.checkpoint()
        vkey = logproof.parse_verifier_key(service.log.note_key)
        cp = logproof.check_witnessed(note, vkey, [], 0)
        assert cp.tree_size == service.log.size()
        genesis = cbor.loads(service.log.entry(0).data)
        assert genesis["note_key"] == service.log.note_key, "the log does not name its key"
        assert (tmp_path / "laminate-log-key.pem").exists()
    finally:
        service.close()
    other = tmp_path / "other-log-key.pem"
    keys.save_private_key(keys.generate_private_key("ed25519"), other)
    with pytest.raises(LaminateError, match="checkpoints are signed by log key"):
        make(tmp_path, log_key_path=str(other))
    p256 = tmp_path / "p256-log-key.pem"
    keys.save_private_key(keys.generate_private_key("p256"), p256)
    with pytest.raises(LaminateError, match="the log key must be Ed25519"):
        make(tmp_path, log_key_path=str(p256))


def test_a_log_started_before_log_keys_names_its_key_in_a_leaf(tmp_path):
    from registry.service import GENESIS_TYPE
    from registry.tlog import TransparencyLog

    key = keys.generate_private_key("ed25519")
    keys.save_private_key(key, tmp_path / "service.pem")
    db = dbmod.open_database(f"sqlite:///{tmp_path / 's.sqlite'}")
    with db.write() as (session, head):           # the genesis an older release wrote
        TransparencyLog(db, key).append(session, head, "genesis", keys.key_id(key).hex(),
                                        cbor.dumps({"type": GENESIS_TYPE,
                                                    "service_key_id": keys.key_id(key),
                                                    "created_ms": 1}))
    db.dispose()
    service = make(tmp_path)
    try:
        entry = service.log.entry(service.log.size() - 1)
        assert entry.kind == "log-key"
        assert cbor.loads(entry.data)["note_key"] == service.log.note_key
    finally:
        service.close()
    service = make(tmp_path)                        # a restart adds nothing
    try:
        assert service.log.entry(service.log.size() - 1).kind == "log-key"
    finally:
        service.close()


def test_app_shutdown_commits_the_queued_batch_and_stops_the_integrator(tmp_path):
    """An app that made its own service closes it on shutdown: a sighting queued behind a
    long batch interval is committed, not lost, and no integrator thread is left."""
    from fastapi.testclient import TestClient

    from registry.app import create_app

    key_path = tmp_path / "service.pem"
    keys.save_private_key(keys.generate_private_key("ed25519"), key_path)
    config = ServiceConfig(database_url=f"sqlite:///{tmp_path / 's.sqlite'}",
                           key_path=str(key_path), log_batch_interval=10.0, log_batch_size=64)
    app = create_app(config)
    service = app.state.service
    digest = hashlib.sha256(b"queued").hexdigest()
    with TestClient(app):
        future = service.integrator.submit(("model", digest, cbor.dumps({"sha256": digest})),
                                           isolated=False)
        assert not future.finished            # waits for the 10 s interval
    assert future.result(timeout=0) >= 1      # shutdown committed it
    assert not service.integrator._thread.is_alive()
    reopened = Service(config)
    try:
        assert reopened.log.entry(future.result()).ref == digest
    finally:
        reopened.close()
