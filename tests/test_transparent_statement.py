"""A card with its log receipt embedded (unprotected header 394) is a transparent
statement: it keeps the card's identity, the registry and `laminate verify` accept it,
and `laminate verify --log-key` checks the embedded receipt offline, refusing a tampered
one for its reason."""
import base64
import hashlib
import json

import cbor2
import httpx
import pytest

from cardkit import make_card
from cards import cbor, cose, keys
from cards.card import card_digest, open_card, receipts_of, statement_bytes, with_receipts
from cards.errors import CardFormatError
from laminate.cli import main
from registry.config import ServiceConfig
from registry.service import Service
from servers import start_server
from service_helpers import combined_policy
from verifier import lineage, receipts
from verifier.appraise import appraise
from verifier.policy import Policy

CHECK = "transparency_receipt"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("transparent")
    kit = make_card(base / "kit")
    other = make_card(base / "other")
    policy_path = combined_policy(base / "policy.yaml", [kit, other])
    service = Service(ServiceConfig(database_url=f"sqlite:///{base / 's.sqlite'}",
                                    policy_path=str(policy_path),
                                    key_path=str(base / "service.pem")))
    status, body = service.register_card(kit.card_bytes)
    assert status == 201, body
    status, other_body = service.register_card(other.card_bytes)
    assert status == 201, other_body
    log_pem = base / "log.pub.pem"
    log_pem.write_bytes(keys.public_pem(service.public_key))
    receipt = base64.b64decode(body["receipt"])
    (base / "card.receipt").write_bytes(receipt)
    yield {"kit": kit, "other": other, "service": service, "body": body, "receipt": receipt,
           "other_receipt": base64.b64decode(other_body["receipt"]),
           "policy": Policy.load(policy_path), "policy_path": policy_path,
           "log_pem": log_pem, "dir": base}
    service.close()


def _check(result, name=CHECK):
    found = [c for c in result.checks if c.check == name]
    assert len(found) == 1, [c.check for c in result.checks]
    return found[0]


def _attached(setup, receipt=None) -> bytes:
    return with_receipts(setup["kit"].card_bytes, [receipt or setup["receipt"]])


def test_attach_keeps_the_card_identity(setup):
    card = setup["kit"].card_bytes
    statement = _attached(setup)
    assert statement != card and receipts_of(statement) == [setup["receipt"]]
    assert card_digest(statement) == card_digest(card) == hashlib.sha256(card).hexdigest(), \
        "a card without receipts is named by the SHA-256 of its bytes, and attaching one " \
        "must not rename it"
    assert statement_bytes(statement) == card
    assert setup["body"]["card_id"] == card_digest(statement)
    opened = open_card(statement)
    assert opened.claims == open_card(card).claims
    assert opened.sign1.unprotected == {cose.HDR_RECEIPTS: [setup["receipt"]]}
    # attaching the same receipt twice holds it once; another log's receipt is added
    assert receipts_of(with_receipts(statement, [setup["receipt"]])) == [setup["receipt"]]
    two = with_receipts(statement, [setup["other_receipt"]])
    assert len(receipts_of(two)) == 2 and card_digest(two) == card_digest(card)


def test_attach_refuses_more_receipts_than_the_reader_reads(setup):
    many = [bytes([i]) * 8 for i in range(17)]
    with pytest.raises(CardFormatError, match="card.unprotected: more than 16 receipts"):
        with_receipts(setup["kit"].card_bytes, many)


def test_digest_is_the_one_rule_wherever_a_card_is_named(setup, tmp_path):
    """Lineage finds a parent by its digest: a parent that carries a receipt is still the
    parent its child named."""
    statement = _attached(setup)
    (tmp_path / "parent.cbor").write_bytes(statement)
    found = lineage.gather([tmp_path])
    assert list(found) == [card_digest(setup["kit"].card_bytes)]


def test_registry_accepts_the_transparent_statement_under_the_same_id(setup):
    service = setup["service"]
    status, body = service.register_card(_attached(setup))
    assert status == 200 and body["already_registered"] is True
    assert body["card_id"] == setup["body"]["card_id"]
    row = service.card(body["card_id"])
    assert row.card_bytes == setup["kit"].card_bytes, "the log holds the card, not the receipts"
    # the receipt the registry answers proves the embedded statement's card
    receipts.verify_receipt(base64.b64decode(body["receipt"]),
                            statement_bytes(_attached(setup)), service.public_key)


def test_a_new_card_arriving_with_a_foreign_receipt_is_logged_without_it(tmp_path, setup):
    kit = make_card(tmp_path / "fresh")
    service = Service(ServiceConfig(database_url=f"sqlite:///{tmp_path / 's.sqlite'}",
                                    policy_path=str(combined_policy(tmp_path / "p.yaml", [kit])),
                                    key_path=str(tmp_path / "k.pem")))
    try:
        foreign = with_receipts(kit.card_bytes, [setup["receipt"]])
        status, body = service.register_card(foreign)
        assert status == 201, body
        assert body["card_id"] == card_digest(kit.card_bytes)
        assert service.card(body["card_id"]).card_bytes == kit.card_bytes
        receipts.verify_receipt(base64.b64decode(body["receipt"]), kit.card_bytes,
                                service.public_key)
    finally:
        service.close()


def test_verify_checks_the_embedded_receipt_against_the_log_key(setup):
    policy, key = setup["policy"], setup["service"].public_key
    result = appraise(_attached(setup), policy=policy, log_key=key)
    check = _check(result)
    assert check.status == "affirming", check
    assert check.field == "card.unprotected.394[0]"
    assert f"leaf {setup['body']['leaf_index']} " in check.reason
    assert result.status != "contraindicated", result.to_table()
    # another log's receipt first: passed over, the log's own one is found
    mixed = with_receipts(setup["kit"].card_bytes, [_foreign_receipt(setup), setup["receipt"]])
    assert _check(appraise(mixed, policy=policy, log_key=key)).status == "affirming"


def test_receipt_unchecked_without_a_log_key(setup):
    check = _check(appraise(_attached(setup), policy=setup["policy"]))
    assert check.status == "skipped" and "no log key was given" in check.reason
    assert not [c for c in appraise(setup["kit"].card_bytes, policy=setup["policy"]).checks
                if c.check == CHECK], "a card without receipts gets no receipt check"


def test_a_card_without_a_receipt_is_refused_when_a_log_key_is_given(setup):
    check = _check(appraise(setup["kit"].card_bytes, policy=setup["policy"],
                            log_key=setup["service"].public_key))
    assert check.status == "contraindicated" and check.field == "card.unprotected.394"
    assert "no receipt embedded" in check.reason


def _receipt_parts(receipt: bytes):
    item = cbor2.loads(receipt)
    return item.value


def _rebuild(parts) -> bytes:
    return cbor.dumps(cbor2.CBORTag(18, parts))


def _foreign_receipt(setup) -> bytes:
    """A receipt of the same leaf signed by another log's key."""
    other = keys.generate_private_key("ed25519")
    body = setup["body"]
    return receipts.make_receipt(other, body["tree_size"], body["leaf_index"],
                                 [bytes.fromhex(p) for p in body["inclusion_proof"]],
                                 bytes.fromhex(body["root_hash"]))


def _tampered_path(setup) -> bytes:
    protected, unprotected, payload, signature = _receipt_parts(setup["receipt"])
    size, index, path = cbor2.loads(unprotected[396][-1][0])
    path[0] = bytes(b ^ 0xFF for b in path[0])
    return _rebuild([protected, {396: {-1: [cbor.dumps([size, index, path])]}}, payload,
                     signature])


def _tampered_signature(setup) -> bytes:
    protected, unprotected, payload, signature = _receipt_parts(setup["receipt"])
    return _rebuild([protected, unprotected, payload, signature[:-1] + bytes([signature[-1] ^ 1])])


def _tampered_position(setup) -> bytes:
    protected, unprotected, payload, signature = _receipt_parts(setup["receipt"])
    size, index, path = cbor2.loads(unprotected[396][-1][0])
    return _rebuild([protected, {396: {-1: [cbor.dumps([size, index + 1, path])]}}, payload,
                     signature])


@pytest.mark.parametrize("tamper, reason", [
    (_tampered_path, "does not cover the root this statement and path lead to"),
    (_tampered_signature, "does not cover the root this statement and path lead to"),
    (_tampered_position, "signed position does not match"),
    (lambda setup: setup["other_receipt"], "does not cover the root"),
    (lambda setup: b"\xd2\x84", "receipt"),
], ids=["path", "signature", "position", "other-card", "truncated"])
def test_a_tampered_embedded_receipt_is_refused_for_its_reason(setup, tamper, reason):
    statement = _attached(setup, tamper(setup))
    open_card(statement)                 # the reader accepts it: receipts are opaque to it
    check = _check(appraise(statement, policy=setup["policy"],
                            log_key=setup["service"].public_key))
    assert check.status == "contraindicated", check
    assert check.field == "card.unprotected.394[0]"
    assert reason in check.reason, check.reason


def test_only_another_logs_receipt_is_refused(setup):
    statement = _attached(setup, _foreign_receipt(setup))
    check = _check(appraise(statement, policy=setup["policy"],
                            log_key=setup["service"].public_key))
    assert check.status == "contraindicated" and "is signed by log key" in check.reason


def test_cli_attach_then_verify_with_the_log_key(setup, tmp_path, capsys):
    kit, base = setup["kit"], setup["dir"]
    out = tmp_path / "card.transparent.cbor"
    assert main(["log", "attach", str(kit.card_path), str(base / "card.receipt"),
                 "--service-key", str(setup["log_pem"]), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"card digest {card_digest(kit.card_bytes)} unchanged" in said
    assert card_digest(out.read_bytes()) == card_digest(kit.card_bytes)
    assert main(["verify", str(out), "--policy", str(setup["policy_path"]), "--json",
                 "--log-key", str(setup["log_pem"])]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"check": CHECK, "status": "affirming"}.items() <= next(
        c for c in result["checks"] if c["check"] == CHECK).items()
    assert main(["log", "verify", str(out), "--receipt", str(base / "card.receipt"),
                 "--service-key", str(setup["log_pem"])]) == 0
    # a receipt for another card is not attached
    (tmp_path / "other.receipt").write_bytes(setup["other_receipt"])
    assert main(["log", "attach", str(kit.card_path), str(tmp_path / "other.receipt"),
                 "--service-key", str(setup["log_pem"]), "--out",
                 str(tmp_path / "no.cbor")]) == 1
    assert "not attached" in capsys.readouterr().out and not (tmp_path / "no.cbor").exists()
    # without the key the receipt cannot be checked: a usage error, exit 2
    assert main(["log", "attach", str(kit.card_path), str(base / "card.receipt"),
                 "--out", str(tmp_path / "x.cbor")]) == 2
    assert "--service-key" in capsys.readouterr().err


def test_cli_attach_fetches_the_receipt_from_the_registry(tmp_path, capsys):
    kit = make_card(tmp_path / "kit")
    policy = combined_policy(tmp_path / "policy.yaml", [kit])
    server = start_server(tmp_path / "svc", database_url=f"sqlite:///{tmp_path / 's.sqlite'}",
                          policy_path=policy, tokens=("t",))
    try:
        key_pem = tmp_path / "log.pem"
        key_pem.write_text(httpx.get(server.url + "/v1/log/key").json()["public_key_pem"])
        assert main(["log", "submit", str(kit.card_path), "--server", server.url,
                     "--token", "t"]) == 0
        out = tmp_path / "transparent.cbor"
        assert main(["log", "attach", str(kit.card_path), "--server", server.url,
                     "--service-key", str(key_pem), "--out", str(out)]) == 0
        assert main(["log", "submit", str(out), "--server", server.url, "--token", "t"]) == 0
        assert "already registered" in capsys.readouterr().out
    finally:
        server.stop()
    assert main(["verify", str(out), "--policy", str(policy), "--log-key", str(key_pem)]) == 0
