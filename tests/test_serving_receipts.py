"""Inference receipts and serving cards, checked offline: each tamper fails its own check."""
import base64
import copy
import json

import numpy as np
import pytest

import serving_kit as sk
from cards import cbor, cose
from laminate.cli import main
from verifier import dawn, serving_card
from verifier.cli_inference import verify
from verifier.result import AFFIRMING, CONTRAINDICATED


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return sk.serve(tmp_path_factory.mktemp("receipts"), rate=0.2)


@pytest.fixture(scope="module")
def answer(served):
    _, (x, _), _ = sk.split()
    return served.predict(x[:32])


def status(result, name):
    check = result.get(name)
    assert check is not None, f"no {name} check in {[c.check for c in result.checks]}"
    return check.status, check.field


def test_an_honest_receipt_verifies_against_its_serving_card(served, answer):
    result = verify(served.deployment.card_bytes, answer, served.policy,
                    model_sha256=served.deployment.model_sha256)
    assert result.failed() == []
    for name in ("receipt_signature", "receipt_serving_card", "receipt_model", "receipt_root",
                 "qualifying_data", "log_replay", "statement_in_log", "model_digest"):
        assert status(result, name)[0] == AFFIRMING
    assert result.exit_code == 0


def test_a_changed_label_breaks_the_signed_root(served, answer):
    doc = copy.deepcopy(answer)
    doc["labels"][3] = (doc["labels"][3] + 1) % 10
    result = verify(served.deployment.card_bytes, doc, served.policy)
    assert status(result, "receipt_root") == (CONTRAINDICATED, "receipt.root")
    assert status(result, "receipt_signature")[0] == AFFIRMING   # only the answers changed
    assert result.exit_code == 1


def test_a_changed_input_digest_breaks_the_signed_root(served, answer):
    doc = copy.deepcopy(answer)
    doc["input_sha256"][0] = "00" * 32
    result = verify(served.deployment.card_bytes, doc, served.policy)
    assert status(result, "receipt_root") == (CONTRAINDICATED, "receipt.root")


def test_a_forged_receipt_signature_is_rejected(served, answer):
    doc = copy.deepcopy(answer)
    raw = bytearray(base64.b64decode(doc["receipt"]))
    raw[-1] ^= 1
    doc["receipt"] = base64.b64encode(bytes(raw)).decode()
    result = verify(served.deployment.card_bytes, doc, served.policy)
    assert status(result, "receipt_signature") == (CONTRAINDICATED, "receipt.receipt.signature")
    assert status(result, "receipt_root")[0] == AFFIRMING


def test_a_receipt_for_another_model_is_rejected(served, answer, tmp_path):
    _, (x, _), (xq, yq) = sk.split()
    other = sk.serve(tmp_path, rate=0.2, kit=sk.make_kit(tmp_path / "kit",
                                                         sk.fit(xq, yq, hidden=64, seed=3)))
    theirs = other.predict(x[:8])
    result = verify(served.deployment.card_bytes, theirs, served.policy)
    assert status(result, "receipt_model") == (CONTRAINDICATED, "receipt.model_sha256")
    assert status(result, "receipt_serving_card") == (CONTRAINDICATED, "receipt.serving_card")
    assert status(result, "receipt_signature")[0] == CONTRAINDICATED


def test_receipts_are_bound_to_the_inputs_sent(served, answer):
    _, (x, _), _ = sk.split()
    mine = [dawn.input_digest(c) for c in dawn.canonical_inputs(x[:32])]
    assert status(verify(served.deployment.card_bytes, answer, served.policy,
                         inputs_sha256=mine), "receipt_inputs")[0] == AFFIRMING
    result = verify(served.deployment.card_bytes, answer, served.policy,
                    inputs_sha256=mine[::-1])
    assert status(result, "receipt_inputs") == (CONTRAINDICATED, "receipt.input_sha256")


def _resealed(served, mutate, *, requote=False):
    """The serving card with its statement changed and re-signed by the release key."""
    card = serving_card.open_serving_card(served.deployment.card_bytes)
    statement, evidence = copy.deepcopy(card.statement), copy.deepcopy(card.evidence)
    mutate(statement)
    return serving_card.seal(statement, evidence, sk.release_key(served.kit))


def test_a_statement_changed_after_attestation_fails_the_quote(served, answer):
    forged = _resealed(served, lambda s: s["dawn"].update(key_commitment="ab" * 32))
    result = verify(forged, answer, served.policy)
    assert status(result, "release_signature")[0] == AFFIRMING
    assert status(result, "qualifying_data") == (CONTRAINDICATED, "serving_card.statement")


def test_a_key_commitment_that_does_not_open_is_rejected(served, answer):
    wrong = dawn.Opening(b"\x01" * 32, served.deployment.opening.salt)
    result = verify(served.deployment.card_bytes, answer, served.policy, opening=wrong)
    assert status(result, "dawn_key_commitment") == (
        CONTRAINDICATED, "serving_card.statement.dawn.key_commitment")
    good = verify(served.deployment.card_bytes, answer, served.policy,
                  opening=served.deployment.opening)
    assert status(good, "dawn_key_commitment")[0] == AFFIRMING


def test_a_serving_card_signed_by_an_untrusted_key_is_rejected(served, answer):
    from cards import keys

    card = serving_card.open_serving_card(served.deployment.card_bytes)
    forged = serving_card.seal(card.statement, card.evidence, keys.generate_private_key())
    result = verify(forged, answer, served.policy)
    assert status(result, "release_signature") == (CONTRAINDICATED, "serving_card.kid")


def test_an_unknown_statement_field_is_named(served, answer):
    card = serving_card.open_serving_card(served.deployment.card_bytes)
    payload = cbor.dumps({"format": serving_card.FORMAT,
                          "statement": {**card.statement, "extra": 1}, "evidence": card.evidence})
    forged = cose.sign1(payload, sk.release_key(served.kit), kid=card.kid)
    result = verify(forged, answer, served.policy)
    assert status(result, "serving_card_format") == (CONTRAINDICATED,
                                                    "serving_card.statement.extra")


def test_probability_answers_are_covered_by_the_receipt(tmp_path):
    served = sk.serve(tmp_path, rate=0.5, probabilities=True)
    _, (x, _), _ = sk.split()
    doc = served.predict(x[:16])
    assert np.allclose(np.sum(doc["probabilities"], axis=1), 1.0, atol=1e-5)
    assert [int(np.argmax(p)) for p in doc["probabilities"]] == doc["labels"]
    assert verify(served.deployment.card_bytes, doc, served.policy).failed() == []
    doc["probabilities"][0][0] += 1e-3
    result = verify(served.deployment.card_bytes, doc, served.policy)
    assert status(result, "receipt_root") == (CONTRAINDICATED, "receipt.root")
    del doc["probabilities"]
    result = verify(served.deployment.card_bytes, doc, served.policy)
    assert status(result, "receipt_answers") == (CONTRAINDICATED, "receipt.probabilities")


def test_verify_inference_command(served, answer, tmp_path, capsys):
    path = tmp_path / "answer.json"
    path.write_text(json.dumps(answer))
    card = served.state / "serving-card.cbor"
    base = ["verify-inference", "--serving-card", str(card), "--receipt", str(path),
            "--policy", str(served.kit.policy_path)]
    assert main(base) == 0
    assert main(base + ["--opening", str(served.state / "dawn.opening.json")]) == 0
    tampered = dict(answer, labels=[(v + 1) % 10 for v in answer["labels"]])
    path.write_text(json.dumps(tampered))
    assert main(base) == 1
    assert "receipt_root" in capsys.readouterr().out
    path.write_text("{not json")
    assert main(base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "not a JSON receipt" in err[0]


def test_the_servers_signer_writes_the_same_receipt_as_sign_receipt(served):
    from verifier import receipts_inference

    key = served.deployment.receipt_key
    payload = cbor.dumps({"any": "payload", "n": 1})
    assert receipts_inference.ReceiptSigner(key).sign(payload) == \
        receipts_inference.sign_receipt(key, payload)
