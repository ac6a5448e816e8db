"""The service log's verification path against public RFC 6962/9162 vectors, plus its
own proofs, signed tree heads and COSE Receipts, checked adversarially."""
import cbor2
import pytest
from cryptography.hazmat.primitives import serialization

from cards import cbor, keys, merkle
from registry import db as dbmod
from registry import tlog
from service_helpers import database_urls, make_database
from test_tiles_proofs import (
    spec_leaf,
    spec_root_from_tiles,
    spec_verify_checkpoint,
    spec_verify_consistency,
    spec_verify_inclusion,
)
from vectors import b64, b64_list, merkle_cases
from verifier import logproof, receipts


def _accepts(fn, *args):
    try:
        fn(*args)
        return True
    except logproof.LogProofError:
        return False


def test_every_inclusion_vector():
    accepted = rejected = 0
    for name, case in merkle_cases("inclusion"):
        ok = _accepts(logproof.check_inclusion, b64(case["leafHash"]), case["leafIdx"],
                      case["treeSize"], b64_list(case["proof"]), b64(case["root"]))
        assert ok == (not case["wantErr"]), f"{name}: {case['desc']}"
        accepted += ok
        rejected += not ok
    assert accepted >= 5 and rejected >= 50


def test_inclusion_vectors_through_receipt_root_computation():
    """The receipt path recomputes the root from the path; for every valid vector it
    must find exactly the published root, for every invalid one a different root or an
    error."""
    for name, case in merkle_cases("inclusion"):
        try:
            root = logproof.root_from_inclusion(b64(case["leafHash"]), case["leafIdx"],
                                                case["treeSize"], b64_list(case["proof"]))
        except logproof.LogProofError:
            root = None
        if not case["wantErr"]:
            assert root == b64(case["root"]), name


def test_every_consistency_vector():
    accepted = rejected = 0
    for name, case in merkle_cases("consistency"):
        ok = _accepts(logproof.check_consistency, case["size1"], case["size2"],
                      b64_list(case["proof"]), b64(case["root1"]), b64(case["root2"]))
        assert ok == (not case["wantErr"]), f"{name}: {case['desc']}"
        accepted += ok
        rejected += not ok
    assert accepted >= 5 and rejected >= 50


@pytest.fixture
def log(tmp_path):
    db = dbmod.open_database(f"sqlite:///{tmp_path / 'log.sqlite'}")
    key = keys.generate_private_key("ed25519")
    yield tlog.TransparencyLog(db, key), db, key
    db.dispose()


def _append(db, log, datas):
    with db.write() as (session, head):
        out = [log.append(session, head, "test", f"r{i}", d) for i, d in enumerate(datas)]
    return out


def test_log_proofs_match_an_independent_tree(log):
    tl, db, key = log
    datas = [f"entry {i}".encode() for i in range(13)]
    _append(db, tl, datas[:5])
    _append(db, tl, datas[5:])
    assert tl.size() == 13
    hashes = [merkle.leaf_hash(d) for d in datas]
    for size in (1, 2, 5, 8, 13):
        root = merkle.root_of(hashes[:size])
        assert tl.root(size) == root
        for index in range(size):
            logproof.check_inclusion(hashes[index], index, size, tl.inclusion_proof(index, size), root)
    for first in range(1, 14):
        proof = tl.consistency_proof(first, 13)
        logproof.check_consistency(first, 13, proof, merkle.root_of(hashes[:first]), tl.root(13))
    # A forked history (one entry rewritten) is caught by the consistency check.
    forked = list(hashes)
    forked[3] = merkle.leaf_hash(b"rewritten")
    with pytest.raises(logproof.LogProofError, match="append-only"):
        logproof.check_consistency(5, 13, tl.consistency_proof(5, 13), merkle.root_of(forked[:5]),
                               tl.root(13))


def test_rolled_back_append_leaves_no_trace(log):
    tl, db, _ = log
    _append(db, tl, [b"a"])
    with pytest.raises(RuntimeError):
        with db.write() as (session, head):
            tl.append(session, head, "test", "x", b"b")
            raise RuntimeError("crash between write steps")
    assert tl.size() == 1
    index, _ = _append(db, tl, [b"c"])[0]
    assert index == 1
    assert tl.audit() == 2


def test_audit_detects_a_tampered_entry(log):
    tl, db, _ = log
    _append(db, tl, [b"a", b"b"])
    with db.write() as (session, head):
        session.get(dbmod.LogEntry, 1).data = b"B"
    with pytest.raises(Exception, match="does not match its leaf hash"):
        tl.audit()


def test_signed_tree_head_round_trip_and_tampering(log):
    tl, db, key = log
    _append(db, tl, [b"a", b"b", b"c"])
    sth = tl.tree_head()
    got = logproof.verify_tree_head(sth.signed, key.public_key())
    assert (got.tree_size, got.root_hash) == (3, tl.root(3))
    other = keys.generate_private_key("ed25519")
    with pytest.raises(logproof.LogProofError, match="signature"):
        logproof.verify_tree_head(sth.signed, other.public_key())
    forged = bytearray(sth.signed)
    forged[-70] ^= 1  # inside the payload
    with pytest.raises(logproof.LogProofError):
        logproof.verify_tree_head(bytes(forged), key.public_key())


@pytest.mark.parametrize("kind", ["ed25519", "p256"])
def test_receipt_layout_and_verification(tmp_path, kind):
    db = dbmod.open_database(f"sqlite:///{tmp_path / 'r.sqlite'}")
    key = keys.generate_private_key(kind)
    tl = tlog.TransparencyLog(db, key)
    statements = [f"statement {i}".encode() for i in range(6)]
    _append(db, tl, statements)
    size, index = 6, 4
    receipt = receipts.make_receipt(key, size, index, tl.inclusion_proof(index, size), tl.root(size))

    # RFC 9942 layout: tag 18, protected {alg, vds: 1}, unprotected {396: {-1: [bstr]}}, nil payload.
    item = cbor2.loads(receipt)
    assert item.tag == 18
    protected, unprotected, payload, _sig = item.value
    assert cbor2.loads(protected)[395] == 1 and cbor2.loads(protected)[1] in (-7, -8)
    assert payload is None
    proof = cbor2.loads(unprotected[396][-1][0])
    assert proof[0] == size and proof[1] == index and len(proof[2]) >= 1

    check = receipts.verify_receipt(receipt, statements[index], key.public_key())
    assert (check.tree_size, check.leaf_index, check.root_hash) == (size, index, tl.root(size))

    with pytest.raises(logproof.LogProofError):  # a different statement
        receipts.verify_receipt(receipt, statements[3], key.public_key())
    with pytest.raises(logproof.LogProofError, match="different key"):
        receipts.verify_receipt(receipt, statements[index],
                                keys.generate_private_key(kind).public_key())
    # Claim another position for the same path: the recomputed root is not the signed one.
    moved = cbor2.CBORTag(18, [protected, {396: {-1: [cbor.dumps([size, 5, proof[2]])]}},
                              None, _sig])
    with pytest.raises(logproof.LogProofError):
        receipts.verify_receipt(cbor.dumps(moved), statements[index], key.public_key())
    # Altered path element.
    bad_path = [bytes(32)] + proof[2][1:]
    altered = cbor2.CBORTag(18, [protected, {396: {-1: [cbor.dumps([size, index, bad_path])]}},
                                None, _sig])
    with pytest.raises(logproof.LogProofError, match="signature"):
        receipts.verify_receipt(cbor.dumps(altered), statements[index], key.public_key())
    # Attached payload is refused (the root must be recomputed, never trusted).
    attached = cbor2.CBORTag(18, [protected, unprotected, tl.root(size), _sig])
    with pytest.raises(logproof.LogProofError, match="detached"):
        receipts.verify_receipt(cbor.dumps(attached), statements[index], key.public_key())
    # Wrong vds.
    wrong_vds = cbor.dumps({1: cbor2.loads(protected)[1], 395: 2})
    with pytest.raises(logproof.LogProofError, match="vds"):
        receipts.verify_receipt(cbor.dumps(cbor2.CBORTag(18, [wrong_vds, unprotected, None, _sig])),
                                statements[index], key.public_key())
    db.dispose()


def test_receipt_position_is_bound_by_the_signature(tmp_path):
    """The same path and root also prove leaf 2 of a tree of 4 (the left/right pattern
    of leaf 4 in a tree of 6): with the position only in the unprotected header, a
    receipt could be moved there. The signed position refuses it."""
    db = dbmod.open_database(f"sqlite:///{tmp_path / 'p.sqlite'}")
    key = keys.generate_private_key("ed25519")
    tl = tlog.TransparencyLog(db, key)
    statements = [f"statement {i}".encode() for i in range(6)]
    _append(db, tl, statements)
    size, index = 6, 4
    path = tl.inclusion_proof(index, size)
    receipt = receipts.make_receipt(key, size, index, path, tl.root(size))
    leaf = merkle.leaf_hash(statements[index])
    assert logproof.root_from_inclusion(leaf, 2, 4, path) == tl.root(size)   # the attack

    protected, _unprotected, _payload, signature = cbor2.loads(receipt).value
    moved = cbor2.CBORTag(18, [protected, {396: {-1: [cbor.dumps([4, 2, path])]}}, None,
                               signature])
    with pytest.raises(logproof.LogProofError, match="signed position does not match"):
        receipts.verify_receipt(cbor.dumps(moved), statements[index], key.public_key())
    check = receipts.verify_receipt(receipt, statements[index], key.public_key())
    assert (check.tree_size, check.leaf_index) == (size, index)


# ------------------------------------------------------------ the tree as tiles

def test_proofs_come_from_tiles_not_from_leaves(log):
    """With every stored entry but the last deleted, the proofs are still the all-leaves
    ones: they read only tiles, O(log n) of them."""
    tl, db, _ = log
    datas = [b"%d" % i for i in range(1000)]
    for start in range(0, 1000, 300):
        with db.write() as (session, head):
            tl.append_many(session, head, [("test", "r", d) for d in datas[start:start + 300]])
    hashes = [merkle.leaf_hash(d) for d in datas]
    with db.write() as (session, _head):
        session.query(dbmod.LogEntry).filter(dbmod.LogEntry.leaf_index < 999).delete()
    reads = []
    plain = tl.read_tile
    tl.read_tile = lambda *a, **k: reads.append(a) or plain(*a, **k)
    for i in (0, 255, 256, 998):
        assert tl.inclusion_proof(i, 1000) == merkle.inclusion_proof(hashes, i)
        assert tl.leaf_hash(i) == hashes[i]
    assert tl.consistency_proof(300, 1000) == merkle.consistency_proof(hashes, 300, 1000)
    assert tl.root(700) == merkle.root_of(hashes[:700])
    assert len(reads) < 40, f"{len(reads)} tile reads for 10 proofs and roots"


def test_tiles_are_built_once_for_an_older_database(log):
    tl, db, _ = log
    _append(db, tl, [b"%d" % i for i in range(300)])
    root = tl.root(300)
    with db.write() as (session, _head):
        session.query(dbmod.TileRow).delete()
    fresh = tlog.TransparencyLog(db, tl.private_key)
    assert fresh.audit() == 300 and fresh.root(300) == root


def test_audit_detects_a_tile_that_disagrees_with_its_entry(log):
    tl, db, _ = log
    _append(db, tl, [b"a", b"b"])
    with db.write() as (session, _head):
        row = session.get(dbmod.TileRow, (0, 0))
        row.data = bytes(row.data[:32]) + merkle.leaf_hash(b"forged")
    with pytest.raises(Exception, match="log entry 1: stored data does not match"):
        tlog.TransparencyLog(db, tl.private_key).audit()


@pytest.mark.parametrize("kind", database_urls())
def test_tlog_client_verifies_the_served_tiles_and_checkpoint(kind, tmp_path):
    """The client written from the specs (tests/test_tiles_proofs.py) reads only the
    standard HTTP paths and checks them against the signed checkpoint."""
    from fastapi.testclient import TestClient

    from registry.app import create_app
    from registry.config import ServiceConfig

    url, cleanup = make_database(kind, tmp_path)
    try:
        app = create_app(ServiceConfig(database_url=url, key_path=str(tmp_path / "k.pem")))
        service = app.state.service
        with TestClient(app) as client:
            def fetch(path):
                got = client.get("/" + path)
                assert got.status_code == 200, (path, got.text)
                return got.content

            old_note = client.get("/checkpoint").text
            with service.db.write() as (session, head):
                service.log.append_many(session, head,
                                        [("test", "r", b"e%d" % i) for i in range(600)])
            note = client.get("/checkpoint").text
            raw_pub = service.log_key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            name = service.log.origin
            origin, size, root = spec_verify_checkpoint(note, name, raw_pub)
            assert (origin, size) == (name, 601)
            leaves, rebuilt = spec_root_from_tiles(fetch, size)
            assert rebuilt == root
            assert spec_leaf(fetch, size, 600) == b"e599"
            for i in (0, 300, 600):
                proof = [bytes.fromhex(p) for p in
                         client.get(f"/v1/log/inclusion?leaf_index={i}").json()["inclusion_proof"]]
                assert spec_verify_inclusion(leaves[i], i, size, proof, root)
            _, old_size, old_root = spec_verify_checkpoint(old_note, name, raw_pub)
            body = client.get(f"/v1/log/consistency?first={old_size}&second={size}").json()
            assert spec_verify_consistency(old_size, size, [bytes.fromhex(p) for p in
                                                            body["consistency_proof"]],
                                           old_root, root)
            assert client.get("/tile/0/002").status_code == 404      # not full yet
            assert client.get("/tile/0/x001/000").status_code == 404
            assert client.get("/tile/0/002.p/89").status_code == 200
            assert client.get("/tile/0/002.p/90").status_code == 404
            # an index past 64 bits is answered 404 before it reaches the database
            huge = "x999/" * 8 + "999"
            assert client.get(f"/tile/0/{huge}").status_code == 404
            assert client.get(f"/tile/entries/{huge}").status_code == 404
            assert client.get("/tile/0/x000/002").status_code == 404   # non-canonical
    finally:
        cleanup()
