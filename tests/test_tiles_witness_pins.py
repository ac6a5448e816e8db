"""Clients pin the log's note key and k of n witnesses: `laminate log verify` (offline)
and `laminate log checkpoint` (online) refuse a checkpoint with fewer valid
cosignatures than asked, and name what each pinned witness lacked."""
import argparse
import base64
import json

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from cards import cbor, keys
from cards.errors import LaminateError
from registry import cli as cli_service
from registry import db as dbmod
from registry.tlog import TransparencyLog
from verifier import logproof, receipts

W1, W2, W3 = (ed25519.Ed25519PrivateKey.generate() for _ in range(3))


def run(*argv) -> int:
    parser = argparse.ArgumentParser(prog="laminate")
    cli_service.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def wkey(name, key):
    return logproof.verifier_key(name, key.public_key(), logproof.SIG_COSIGN)


@pytest.fixture
def setup(tmp_path):
    """A log whose service key is P-256 (no signed notes) and whose checkpoints are
    signed by an Ed25519 log key of its own; a card-like statement at leaf 4 of 6."""
    db = dbmod.open_database(f"sqlite:///{tmp_path / 'l.sqlite'}")
    service_key = keys.generate_private_key("p256")
    log_key = ed25519.Ed25519PrivateKey.generate()
    log = TransparencyLog(db, service_key, log_key)
    # COSE_Sign1 envelopes (unsigned here): `log verify` reads the card file's statement
    statements = [cbor.dumps(cbor2.CBORTag(18, [cbor.dumps({1: -19, 4: bytes(32)}), {},
                                                b"statement %d" % i, bytes(64)]))
                  for i in range(9)]
    with db.write() as (session, head):
        log.append_many(session, head, [("t", "r", s) for s in statements[:6]])
    receipt = receipts.make_receipt(service_key, 6, 4, log.inclusion_proof(4, 6), log.root(6))
    (tmp_path / "card").write_bytes(statements[4])
    (tmp_path / "receipt").write_bytes(receipt)
    (tmp_path / "service.pub").write_bytes(keys.public_pem(service_key))
    (tmp_path / "log.vkey").write_text(log.note_key + "\n")
    yield tmp_path, log, db, statements
    db.dispose()


def verify(tmp, note, *pins, k=2):
    (tmp / "cp.txt").write_text(note)
    return run("log", "verify", tmp / "card", "--receipt", tmp / "receipt",
               "--service-key", tmp / "service.pub", "--checkpoint", tmp / "cp.txt",
               "--log-key", tmp / "log.vkey", *pins, "--min-witnesses", k)


PINS = ("--witness", wkey("w1", W1), "--witness", wkey("w2", W2))


def test_a_p256_service_still_gets_checkpoints_by_its_ed25519_log_key(setup):
    tmp, log, _, _ = setup
    note = log.checkpoint()
    key = logproof.parse_verifier_key(log.note_key)
    assert key.sig_type == logproof.SIG_ED25519 and key.name == log.origin
    cp = logproof.check_witnessed(note, key, [], 0)
    assert (cp.tree_size, cp.root_hash) == (6, log.root(6))


@pytest.mark.parametrize("signers, code, said", [
    ((), 1, "witness_cosignatures: 0 valid witness cosignatures, 2 required "
            "(w1: no cosignature; w2: no cosignature)"),
    (("w1",), 1, "1 valid witness cosignatures, 2 required (w2: no cosignature)"),
    (("w1", "w2"), 0, "in the log"),
    (("w1", "w3"), 1, "1 valid witness cosignatures, 2 required (w2: no cosignature)"),
])
def test_offline_verify_counts_cosignatures_against_k(setup, capsys, signers, code, said):
    tmp, log, _, _ = setup
    note = log.checkpoint()
    for name in signers:
        note = logproof.cosign_checkpoint(note, name, {"w1": W1, "w2": W2, "w3": W3}[name])
    assert verify(tmp, note, *PINS) == code
    assert said in capsys.readouterr().out


def test_a_forged_cosignature_does_not_count(setup, capsys):
    tmp, log, _, _ = setup
    note = logproof.cosign_checkpoint(logproof.cosign_checkpoint(log.checkpoint(), "w1", W1),
                                      "w2", W2)
    line = note.rstrip("\n").split("\n")[-1]
    blob = bytearray(base64.b64decode(line.split(" ")[2]))
    blob[-1] ^= 1                                   # one bit of w2's signature
    forged = note.replace(line, f"\u2014 w2 {base64.b64encode(bytes(blob)).decode()}")
    assert verify(tmp, forged, *PINS) == 1
    assert "w2: its cosignature does not verify" in capsys.readouterr().out
    assert verify(tmp, note, *PINS) == 0


def test_a_pinned_witness_key_that_does_not_match_the_cosigner(setup, capsys):
    tmp, log, _, _ = setup
    note = logproof.cosign_checkpoint(logproof.cosign_checkpoint(log.checkpoint(), "w1", W1),
                                      "w2", W2)
    wrong = ("--witness", wkey("w1", W1), "--witness", wkey("w2", W3))   # w2 pinned to W3
    assert verify(tmp, note, *wrong) == 1
    assert "w2: a cosignature by another key than the pinned one" in capsys.readouterr().out
    good = wkey("w2", W2)
    name, digest, key = good.split("+", 2)
    altered = f"{name}+{digest}+{wkey('w2', W3).split('+', 2)[2]}"    # key swapped, hash kept
    with pytest.raises(LaminateError, match="--witness w2: key hash .* does not match its key"):
        verify(tmp, note, "--witness", wkey("w1", W1), "--witness", altered)
    log_as_witness = logproof.verifier_key("w2", W2.public_key())       # type 1, not 4
    with pytest.raises(LaminateError, match="--witness w2: must be a cosignature/v1 key"):
        verify(tmp, note, "--witness", wkey("w1", W1), "--witness", log_as_witness)


def test_checkpoint_must_be_the_receipts_tree_or_linked_to_it(setup, capsys):
    tmp, log, db, statements = setup
    with db.write() as (session, head):
        log.append_many(session, head, [("t", "r", s) for s in statements[6:]])
    note = logproof.cosign_checkpoint(logproof.cosign_checkpoint(log.checkpoint(), "w1", W1),
                                      "w2", W2)
    assert verify(tmp, note, *PINS) == 1
    assert "pass --consistency" in capsys.readouterr().out
    proof = {"consistency_proof": [p.hex() for p in log.consistency_proof(6, 9)]}
    (tmp / "cons.json").write_text(json.dumps(proof))
    assert verify(tmp, note, *PINS, "--consistency", tmp / "cons.json") == 0
    assert "checkpoint of size 9" in capsys.readouterr().out
    proof["consistency_proof"][0] = "00" * 32
    (tmp / "cons.json").write_text(json.dumps(proof))
    assert verify(tmp, note, *PINS, "--consistency", tmp / "cons.json") == 1
    assert "NOT in the log" in capsys.readouterr().out


def test_a_checkpoint_signed_by_another_log_key_is_refused(setup, capsys):
    tmp, log, _, _ = setup
    impostor = TransparencyLog(log.db, log.private_key, ed25519.Ed25519PrivateKey.generate())
    note = impostor.checkpoint()
    for name, key in (("w1", W1), ("w2", W2)):
        note = logproof.cosign_checkpoint(note, name, key)
    assert verify(tmp, note, *PINS) == 1
    assert f"no signature by log key {log.origin}" in capsys.readouterr().out


def test_incomplete_pins_are_usage_errors(setup):
    tmp, log, _, _ = setup
    with pytest.raises(LaminateError, match="--min-witnesses 3: only 2 --witness keys"):
        verify(tmp, log.checkpoint(), *PINS, k=3)
    base = ("log", "verify", tmp / "card", "--receipt", tmp / "receipt",
            "--service-key", tmp / "service.pub")
    with pytest.raises(LaminateError, match="need --checkpoint"):
        run(*base, *PINS, "--min-witnesses", 2)
    (tmp / "cp.txt").write_text(log.checkpoint())
    with pytest.raises(LaminateError, match="--checkpoint: needs --log-key"):
        run(*base, "--checkpoint", tmp / "cp.txt")
    with pytest.raises(LaminateError, match="--log-key 'nope': neither a verifier key nor"):
        run(*base, "--checkpoint", tmp / "cp.txt", "--log-key", "nope")


def test_online_checkpoint_merges_witness_copies(tmp_path, capsys):
    from servers import start_server

    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    key_path = tmp_path / "service.pem"
    keys.save_private_key(keys.generate_private_key("p256"), key_path)
    server = start_server(tmp_path / "svc", database_url=url, key_path=key_path)
    try:
        import urllib.request
        with urllib.request.urlopen(f"{server.url}/v1/log/note-key") as r:
            vkey = r.read().decode().strip()
        with urllib.request.urlopen(f"{server.url}/checkpoint") as r:
            note = r.read().decode()
        copies = []
        for i, (name, key) in enumerate((("w1", W1), ("w2", W2))):
            copies.append(tmp_path / f"c{i}.txt")
            copies[-1].write_text(logproof.cosign_checkpoint(note, name, key))
        base = ("log", "checkpoint", "--server", server.url, "--log-key", vkey, *PINS,
                "--min-witnesses", 2)
        assert run(*base, "--cosigned", copies[0]) == 1
        assert "1 valid witness cosignatures, 2 required" in capsys.readouterr().out
        out = tmp_path / "both.txt"
        assert run(*base, "--cosigned", copies[0], "--cosigned", copies[1], "--out", out) == 0
        assert "size 1," in capsys.readouterr().out
        assert logproof.check_cosignatures(out.read_text(), {"w1": W1.public_key(),
                                                             "w2": W2.public_key()}, 2)
    finally:
        server.stop()
