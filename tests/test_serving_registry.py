"""Serving cards and anchored query logs in the card service, and disputes that argue from
DAWN: each check of the DAWN rule is broken once and fails for its reason."""
import base64
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import serving_kit as sk
from cardkit import make_card
from cards import cbor, cose
from cards.card import card_digest, with_receipts
from cards.errors import LaminateError
from registry.app import create_app
from registry.config import ServiceConfig
from service_helpers import combined_policy
from serving import anchor
from verifier import dawn, dawn_evidence

TOKEN = "registry-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A deployment at rate 0.05 whose serving card is registered, alice's 1,000-query
    extraction, bob's honest queries, a head anchored after both, and the models."""
    tmp = tmp_path_factory.mktemp("dawn-registry")
    served = sk.serve(tmp / "deploy", rate=0.05)
    other = make_card(tmp / "other")
    policy = combined_policy(tmp / "policy.yaml", [served.kit, other])
    app = create_app(ServiceConfig(database_url=f"sqlite:///{tmp / 'service.sqlite'}",
                                   key_path=str(tmp / "service.pem"), policy_path=str(policy),
                                   api_tokens=[TOKEN]))
    client = TestClient(app).__enter__()
    _, (xt, yt), (xq, yq) = sk.split()
    labels = []
    for start in range(0, len(xq), 100):
        labels += served.predict(xq[start:start + 100])["labels"]
    served.predict(xt[:100], token=sk.TOKENS["bob"])
    registered = client.post("/v1/cards", content=served.deployment.card_bytes, headers=AUTH)
    head = served.client.get("/v1/log/head",
                             headers={"Authorization": f"Bearer {sk.TOKENS['bob']}"}).content
    anchored = client.post("/v1/serving-heads", content=head, headers=AUTH)
    paths = {"surrogate": sk.export(sk.fit(xq, np.asarray(labels), seed=1), tmp / "surrogate.onnx"),
             "independent": sk.export(sk.fit(xq, yq, seed=2), tmp / "independent.onnx")}
    yield {"served": served, "client": client, "registered": registered, "head": head,
           "anchored": anchored, "paths": paths, "tmp": tmp, "other": other}
    client.__exit__(None, None, None)


def evidence(world, clients=("alice",)):
    served = world["served"]
    return dawn_evidence.build_evidence(served.state / "log.sqlite", world["head"],
                                 served.deployment.card, list(clients))


def dispute(world, suspect, *, evidence_bytes=None, opening=None, served_model=None,
            card_id=None):
    served = world["served"]
    doc = json.loads((served.state / "dawn.opening.json").read_text()) if opening is None else opening
    claim = {"serving_card_id": card_id or served.deployment.card.digest, "opening": doc}
    files = {"model": ("suspect.onnx", Path(world["paths"].get(suspect, suspect)).read_bytes()),
             "dawn_evidence": ("evidence.cbor", evidence_bytes or evidence(world)),
             "served_model": ("model.onnx", Path(served_model or served.kit.model_path).read_bytes())}
    response = world["client"].post("/v1/disputes", data={"dawn_claim": json.dumps(claim)},
                                    files=files, headers=AUTH)
    assert response.status_code == 201, response.text
    verdict = response.json()["verdict"]
    return verdict, verdict["claims"][0]


# ----------------------------------------------------------- registration

def test_the_registry_registers_a_serving_card_and_logs_it(world):
    body = world["registered"].json()
    assert world["registered"].status_code == 201, body
    assert body["card_id"] == world["served"].deployment.card.digest and body["serving_card"]
    assert world["client"].get(f"/v1/log/entries/{body['leaf_index']}").json()["kind"] \
        == "serving-card"
    view = world["client"].get(f"/v1/cards/{body['card_id']}").json()
    assert view["serving_card"] and view["model_sha256"] == world["served"].deployment.model_sha256
    again = world["client"].post("/v1/cards", content=world["served"].deployment.card_bytes,
                                 headers=AUTH)
    assert again.status_code == 200 and again.json()["already_registered"]


def test_a_serving_card_carrying_a_receipt_is_named_by_its_statement(world, tmp_path):
    """A serving card is named by its statement digest like any card: registered first
    with a receipt attached, it is stored without it, under the bare card's id."""
    bare = world["served"].deployment.card_bytes
    attached = with_receipts(bare, [base64.b64decode(world["registered"].json()["receipt"])])
    config = ServiceConfig(database_url=f"sqlite:///{tmp_path / 'fresh.sqlite'}",
                           key_path=str(tmp_path / "fresh.pem"),
                           policy_path=str(world["tmp"] / "policy.yaml"), api_tokens=[TOKEN])
    with TestClient(create_app(config)) as fresh:
        first = fresh.post("/v1/cards", content=attached, headers=AUTH)
        assert first.status_code == 201, first.text
        assert first.json()["card_id"] == card_digest(bare) != hashlib.sha256(attached).hexdigest()
        assert fresh.get(f"/v1/cards/{card_digest(bare)}").json()["serving_card"]
        again = fresh.post("/v1/cards", content=bare, headers=AUTH)
        assert again.status_code == 200 and again.json()["already_registered"]


def test_a_serving_card_changed_after_attestation_is_refused_for_its_reason(world):
    sign1 = cose.parse_sign1(world["served"].deployment.card_bytes)
    payload = cbor.loads(sign1.payload)
    payload["statement"]["dawn"]["rate"] = 0.5          # a rate the quote never saw
    key = sk.release_key(world["served"].kit)
    forged = cose.sign1(cbor.dumps(payload), key, kid=sign1.kid)
    response = world["client"].post("/v1/cards", content=forged, headers=AUTH)
    assert response.status_code == 422
    assert "qualifying_data (serving_card.statement)" in response.json()["detail"]


def test_an_anchored_head_is_logged_with_its_proof(world):
    body = world["anchored"].json()
    assert world["anchored"].status_code == 201, body
    size, root = dawn_evidence.open_head(world["head"], world["served"].deployment.card)
    assert body["log_head"] == {"tree_size": size, "root": root.hex()}
    assert size == world["served"].server.log.tree_head()[0]
    entry = world["client"].get(f"/v1/log/entries/{body['leaf_index']}").json()
    assert entry["kind"] == "serving-head"


def test_a_head_not_signed_by_the_receipt_key_is_refused(world):
    card = world["served"].deployment.card
    forged = dawn_evidence.sign_head(sk.release_key(world["served"].kit), card.digest, 1,
                                     b"\x00" * 32)
    response = world["client"].post("/v1/serving-heads", content=forged, headers=AUTH)
    assert response.status_code == 422 and "log_head.signature" in response.json()["detail"]


def test_a_head_of_an_unregistered_deployment_is_refused(world):
    served = world["served"]
    head = dawn_evidence.sign_head(served.deployment.receipt_key, "ab" * 32, 1, b"\x00" * 32)
    response = world["client"].post("/v1/serving-heads", content=head, headers=AUTH)
    assert response.status_code == 422 and "not a serving card registered" in response.json()["detail"]


# ----------------------------------------------------------- disputes

def test_a_surrogate_of_a_clients_answers_loses_to_the_dawn_claim(world):
    verdict, claim = dispute(world, "surrogate")
    assert claim["won"], claim["reason"]
    assert verdict["evidence"] == "dawn" and claim["evidence"] == "dawn"
    assert claim["commitment_leaf_index"] == world["anchored"].json()["leaf_index"]
    assert claim["ownership"]["p_value"] <= 1e-6


def test_an_independent_model_is_not_shown(world):
    _, claim = dispute(world, "independent")
    assert not claim["won"] and claim["reason"].startswith("ownership:"), claim["reason"]


def test_card_check_the_served_model_must_be_the_serving_cards(world):
    _, claim = dispute(world, "surrogate", served_model=world["paths"]["independent"])
    assert claim["reason"].startswith("card:") and "model_digest" in claim["reason"]


def test_card_check_an_unregistered_serving_card_loses(world):
    _, claim = dispute(world, "surrogate", card_id="cd" * 32)
    assert claim["reason"].startswith("card: serving card is not registered")


def test_order_check_a_head_anchored_after_the_suspect_does_not_count(world):
    from verifier.disputes import judge_dawn_claim

    served = world["served"]
    judged = judge_dawn_claim(card_problem=None, card=served.deployment.card, anchor_index=9,
                              anchor=world["head"], suspect_index=9, evidence=evidence(world),
                              opening=served.deployment.opening, victim=None, suspect=None,
                              alpha=1e-6)
    assert not judged.won and judged.reason.startswith("order: query-log head anchored at "
                                                       "index 9, not before")


def test_the_arbiter_takes_the_last_head_before_the_suspect(world, tmp_path):
    """Evidence against a head logged after the suspect's first sighting is refused."""
    path = sk.export(sk.fit(*sk.split()[2], seed=7), tmp_path / "late.onnx")
    seen = world["client"].post("/v1/verify", headers=AUTH, files={
        "model": ("late.onnx", Path(path).read_bytes())},
        data={"card_id": world["served"].deployment.card.digest})
    assert seen.status_code == 200, seen.text
    served = world["served"]
    served.predict(sk.split()[1][0][:10])
    head = served.client.get("/v1/log/head",
                             headers={"Authorization": f"Bearer {sk.TOKENS['alice']}"}).content
    assert world["client"].post("/v1/serving-heads", content=head, headers=AUTH).status_code == 201
    _, claim = dispute(world, path, evidence_bytes=dawn_evidence.build_evidence(
        served.state / "log.sqlite", head, served.deployment.card, ["alice"]))
    assert claim["reason"].startswith("log: evidence.records:"), claim["reason"]


def _forge_evidence(world, change):
    doc = cbor.loads(evidence(world))
    change(doc)
    return cbor.dumps(doc)


def test_log_check_a_left_out_batch_is_refused(world):
    data = _forge_evidence(world, lambda d: d["batches"].pop(3))
    _, claim = dispute(world, "surrogate", evidence_bytes=data)
    assert claim["reason"].startswith("log: evidence.batches: batch") and "missing" in claim["reason"]


def test_log_check_a_record_not_under_the_anchored_root_is_refused(world):
    def change(d):
        d["records"][0] = d["records"][0][:-1] + bytes([d["records"][0][-1] ^ 1])
    _, claim = dispute(world, "surrogate", evidence_bytes=_forge_evidence(world, change))
    assert claim["reason"] == "log: evidence.records: do not hash to the anchored root"


def test_log_check_a_changed_answer_is_refused(world):
    def change(d):
        leaf = cbor.loads(d["batches"][0][2][0])
        leaf[1] = (leaf[1] + 1) % 10
        d["batches"][0][2][0] = cbor.dumps(leaf)
    _, claim = dispute(world, "surrogate", evidence_bytes=_forge_evidence(world, change))
    assert "leaves: do not hash to the root the record signed" in claim["reason"]
    assert claim["reason"].startswith("log:")


def test_log_check_a_changed_input_is_refused(world):
    def change(d):
        d["batches"][0][1][0] = d["batches"][0][1][0][:-4] + b"\x00\x00\x80\x3f"
    _, claim = dispute(world, "surrogate", evidence_bytes=_forge_evidence(world, change))
    assert claim["reason"].startswith("log:") and "inputs[0]: is not the input" in claim["reason"]


def test_opening_check_a_key_that_does_not_open_the_commitment_loses(world):
    opening = dawn.Opening(b"\x07" * 32, world["served"].deployment.opening.salt)
    doc = {"format": dawn.OPENING_FORMAT, "scheme": dawn.SCHEME, "key": opening.key.hex(),
           "salt": opening.salt.hex()}
    _, claim = dispute(world, "surrogate", opening=doc)
    assert claim["reason"].startswith("opening: the DAWN opening does not open")


def test_a_watermark_claim_and_a_dawn_claim_are_ranked_together(world):
    """The earliest winning commitment wins across evidence kinds; here only DAWN wins."""
    other = world["other"]
    world["client"].post("/v1/cards", content=other.card_bytes, headers=AUTH)
    served = world["served"]
    claim = {"serving_card_id": served.deployment.card.digest,
             "opening": json.loads((served.state / "dawn.opening.json").read_text())}
    response = world["client"].post("/v1/disputes", headers=AUTH, data={
        "dawn_claim": json.dumps(claim),
        "claims": json.dumps([{"card_id": hashlib.sha256(other.card_bytes).hexdigest(),
                              "opening": json.loads(other.opening.to_json())}])},
        files={"model": ("s.onnx", Path(world["paths"]["surrogate"]).read_bytes()),
               "dawn_evidence": ("e.cbor", evidence(world)),
               "served_model": ("m.onnx", Path(served.kit.model_path).read_bytes())})
    assert response.status_code == 201, response.text
    verdict = response.json()["verdict"]
    kinds = {c["evidence"]: c["won"] for c in verdict["claims"]}
    assert kinds == {"watermark": False, "dawn": True}
    assert verdict["winner"] == served.deployment.card.digest and verdict["evidence"] == "dawn"


def test_the_server_anchors_its_log_when_it_grew(world, tmp_path, monkeypatch):
    """The anchoring loop's one step, with HTTP replaced by the in-process service."""
    def post(url, token, body, timeout=30.0):
        response = world["client"].post(url.removeprefix("http://registry"), content=body,
                                        headers={"Authorization": f"Bearer {token}"})
        assert response.status_code in (200, 201), response.text
        return response.json()

    monkeypatch.setattr(anchor, "post", post)
    served = world["served"]
    anchorer = anchor.Anchorer(served.server, "http://registry", TOKEN, 60, tmp_path)
    assert anchorer.register_card()["already_registered"]
    served.predict(sk.split()[1][0][:5])
    first = anchorer.anchor()
    size = served.server.log.tree_head()[0]
    assert first["log_head"]["tree_size"] == size
    assert (tmp_path / "anchors" / f"{size}.head").read_bytes() != b""
    assert anchorer.anchor() is None                   # nothing new: nothing registered
    served.predict(sk.split()[1][0][5:8])
    assert anchorer.anchor()["log_head"]["tree_size"] == size + 1


def test_dispute_open_with_dawn_builds_the_evidence_from_the_state_directory(world, monkeypatch,
                                                                             capsys):
    """`laminate dispute open --dawn STATE --client alice`: the owner's side, with HTTP
    replaced by the in-process service."""
    from laminate.cli import main
    from registry import client as registry_client

    def request(method, url, *, token=None, body=None, content_type=None, timeout=120.0):
        response = world["client"].request(method, url.removeprefix("http://registry"),
                                           content=body, headers={
                                               "Authorization": f"Bearer {token}",
                                               "Content-Type": content_type})
        return response.status_code, response.json()

    monkeypatch.setattr(registry_client, "_request", request)
    served = world["served"]
    (served.state / "anchors").mkdir(exist_ok=True)
    (served.state / "anchors" / "7.head").write_bytes(world["head"])
    argv = ["dispute", "open", "--server", "http://registry", "--token", TOKEN,
            "--suspect", str(world["paths"]["surrogate"]), "--dawn", str(served.state),
            "--client", "alice", "--served-model", str(served.kit.model_path)]
    assert main(argv) == 0
    assert "(dawn evidence): ownership shown" in capsys.readouterr().out
    assert main(argv[:-4]) == 2          # --client and --served-model missing: exit 2
    assert "--dawn needs --client" in capsys.readouterr().err


def test_log_check_evidence_for_another_serving_card_is_refused(world):
    data = _forge_evidence(world, lambda d: d.__setitem__("serving_card", "ab" * 32))
    with pytest.raises(dawn_evidence.EvidenceError, match="evidence.serving_card: names another"):
        dawn_evidence.check_evidence(data, world["served"].deployment.card, world["head"])


def test_log_check_a_client_batch_given_twice_or_for_another_client_is_refused(world):
    def twice(d):
        d["batches"].append(d["batches"][0])
    with pytest.raises(dawn_evidence.EvidenceError, match=r"batches\[\d+\].seq: not a batch"):
        dawn_evidence.check_evidence(_forge_evidence(world, twice),
                                     world["served"].deployment.card, world["head"])


def test_order_check_a_deployment_without_an_anchored_head_loses(world):
    from verifier.disputes import judge_dawn_claim

    served = world["served"]
    judged = judge_dawn_claim(card_problem=None, card=served.deployment.card, anchor_index=None,
                              anchor=None, suspect_index=4, evidence=evidence(world),
                              opening=served.deployment.opening, victim=None, suspect=None,
                              alpha=1e-6, run_all=True)
    assert judged.reason.startswith("order: no head of this deployment's query log was logged")
    assert judged.checks["log"][0] is False and judged.evidence == "dawn"


def test_serve_model_anchors_over_http_with_a_real_service(world, tmp_path):
    """The anchoring client against `laminate serve` in a subprocess: card, then head;
    a wrong token is an error that names the HTTP status."""
    from servers import start_server
    from service_helpers import combined_policy as policy_of

    served = world["served"]
    server = start_server(tmp_path / "svc", database_url=f"sqlite:///{tmp_path / 's.sqlite'}",
                          policy_path=policy_of(tmp_path / "p.yaml", [served.kit]),
                          tokens=(TOKEN,))
    try:
        anchorer = anchor.Anchorer(served.server, server.url, TOKEN, 60, tmp_path)
        assert anchorer.register_card()["serving_card"]
        registered = anchorer.anchor()
        assert registered["log_head"]["tree_size"] == served.server.log.tree_head()[0]
        wrong = anchor.Anchorer(served.server, server.url, "not-the-token-0123", 60, tmp_path)
        with pytest.raises(LaminateError, match="HTTP 401"):
            wrong.register_card()
    finally:
        server.stop()
