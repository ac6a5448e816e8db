"""The witness cosigns a checkpoint only if it extends the last one it saw; each
refusal is provoked on purpose and named."""
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from registry.witness import Refused, log_origin, witness
from test_tiles_proofs import Store
from verifier import logproof, tiles

LOG = ed25519.Ed25519PrivateKey.generate()
WIT = ed25519.Ed25519PrivateKey.generate()
ORIGIN = log_origin(LOG.public_key())
LOGKEY = logproof.parse_verifier_key(logproof.verifier_key(ORIGIN, LOG.public_key()))


def checkpoint(store, size=None, key=LOG):
    size = store.size if size is None else size
    return logproof.sign_checkpoint(ORIGIN, size, tiles.tree_root(store.read_tile, size),
                                    ORIGIN, key)


def grown(n, prefix=b"e"):
    store = Store()
    store.append([prefix + b"%d" % i for i in range(n)])
    return store


def test_cosigns_a_log_that_grows_and_clients_count_it(tmp_path):
    state = tmp_path / "w.json"
    store = grown(10)
    first = witness(checkpoint(store), LOGKEY, [], state, "w1", WIT)
    assert logproof.check_cosignatures(first, {"w1": WIT.public_key()}, 1) == ["w1"]
    store.append([b"more%d" % i for i in range(300)])
    proof = tiles.consistency_proof(store.read_tile, 10, store.size)
    second = witness(checkpoint(store), LOGKEY, proof, state, "w1", WIT)
    assert logproof.check_cosignatures(second, {"w1": WIT.public_key()}, 1)
    assert json.loads(state.read_text())[ORIGIN]["size"] == 310
    with pytest.raises(logproof.LogProofError, match="1 valid witness cosignatures, 2"):
        logproof.check_cosignatures(second, {"w1": WIT.public_key(),
                                             "w2": LOG.public_key()}, 2)


def test_fork_two_roots_for_one_size_is_refused(tmp_path):
    state = tmp_path / "w.json"
    witness(checkpoint(grown(10)), LOGKEY, [], state, "w1", WIT)
    with pytest.raises(Refused, match="fork: two different roots for tree size 10"):
        witness(checkpoint(grown(10, b"x")), LOGKEY, [], state, "w1", WIT)
    assert json.loads(state.read_text())[ORIGIN]["size"] == 10


def test_forked_history_fails_consistency(tmp_path):
    state = tmp_path / "w.json"
    witness(checkpoint(grown(10)), LOGKEY, [], state, "w1", WIT)
    other = grown(20, b"x")                       # a different first 10 entries
    proof = tiles.consistency_proof(other.read_tile, 10, 20)
    with pytest.raises(Refused, match="consistency from 10 to 20: .*append-only"):
        witness(checkpoint(other), LOGKEY, proof, state, "w1", WIT)


def test_rollback_and_foreign_signature_are_refused(tmp_path):
    state = tmp_path / "w.json"
    store = grown(10)
    witness(checkpoint(store), LOGKEY, [], state, "w1", WIT)
    with pytest.raises(Refused, match="smaller than the 10 already cosigned"):
        witness(checkpoint(store, 5), LOGKEY, [], state, "w1", WIT)
    with pytest.raises(Refused, match="no signature by log key"):
        witness(checkpoint(store, key=WIT), LOGKEY, [], state, "w1", WIT)


def test_cli_witness_against_a_running_service(tmp_path, capsys):
    """`laminate log witness` fetches /checkpoint and the consistency proof, cosigns,
    and after the state is pointed at a forked root refuses with exit 1."""
    import argparse

    from cards import keys
    from registry import cli as cli_service
    from registry import db as dbmod
    from registry.tlog import TransparencyLog
    from servers import start_server

    def run(*argv) -> int:
        parser = argparse.ArgumentParser(prog="laminate")
        cli_service.register(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args([str(a) for a in argv])
        return args.func(args)

    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    key_path = tmp_path / "service.pem"
    server = start_server(tmp_path / "svc", database_url=url, key_path=key_path)
    try:
        service_key = keys.load_private_key(key_path)
        log_key = keys.load_private_key(tmp_path / "laminate-log-key.pem")
        assert keys.key_kind(log_key) == "ed25519"
        pub = tmp_path / "log.vkey"
        pub.write_text(logproof.verifier_key(log_origin(service_key.public_key()),
                                             log_key.public_key()) + "\n")
        wkey = tmp_path / "witness.pem"
        keys.save_private_key(ed25519.Ed25519PrivateKey.generate(), wkey)
        state, out = tmp_path / "state.json", tmp_path / "cosigned.txt"
        argv = ("log", "witness", "--server", server.url, "--log-key", pub,
                "--witness-key", wkey, "--name", "w.test", "--state", state, "--out", out)
        assert run(*argv) == 0
        db = dbmod.open_database(url)
        with db.write() as (session, head):
            TransparencyLog(db, service_key).append_many(
                session, head, [("test", "r", b"%d" % i) for i in range(300)])
        db.dispose()
        assert run(*argv) == 0
        wpub = keys.load_private_key(wkey).public_key()
        assert logproof.check_cosignatures(out.read_text(), {"w.test": wpub}, 1) == ["w.test"]
        saved = json.loads(state.read_text())
        saved[log_origin(service_key.public_key())]["root"] = "A" * 43 + "="
        state.write_text(json.dumps(saved))
        capsys.readouterr()
        assert run(*argv) == 1
        assert "REFUSED: fork: two different roots for tree size 301" in capsys.readouterr().out
    finally:
        server.stop()
