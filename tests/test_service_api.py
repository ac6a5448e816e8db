"""The service end to end over loopback: register -> fetch -> verify -> ownership ->
dispute, against a real uvicorn process on SQLite, and on PostgreSQL when
LAMINATE_TEST_PG_URL is set."""
import base64
import json

import httpx
import pytest

from cardkit import make_card
from cards import keys, merkle, watermark
from registry import disputes
from servers import start_server
from service_helpers import combined_policy, database_urls, make_database, memorizing_model
from verifier import logproof, receipts

TOKEN = "test-token"


@pytest.fixture(scope="module")
def kits(tmp_path_factory):
    base = tmp_path_factory.mktemp("kits")
    owner = make_card(base / "owner")
    rival = make_card(base / "rival")
    bare = make_card(base / "bare", watermark_claim=None)
    policy = combined_policy(base / "policy.yaml", [owner, rival, bare])
    stolen = memorizing_model(base / "stolen.onnx", owner.opening, 10)
    return {"owner": owner, "rival": rival, "bare": bare, "policy": policy, "stolen": stolen,
            "dir": base}


@pytest.fixture(scope="module", params=database_urls())
def service(request, kits, tmp_path_factory):
    workdir = tmp_path_factory.mktemp(f"svc-{request.param}")
    url, cleanup = make_database(request.param, workdir)
    server = start_server(workdir, database_url=url, policy_path=kits["policy"],
                          key_path=workdir / "service-key.pem", tokens=(TOKEN,))
    client = httpx.Client(base_url=server.url, timeout=120,
                          headers={"Authorization": f"Bearer {TOKEN}"})
    anon = httpx.Client(base_url=server.url, timeout=60)
    public_key = keys.load_public_key(anon.get("/v1/log/key").json()["public_key_pem"].encode())
    state = {"server": server, "client": client, "anon": anon, "key": public_key}
    yield state
    client.close()
    anon.close()
    server.stop()
    cleanup()


def _register(service, card_bytes):
    return service["client"].post("/v1/cards", content=card_bytes,
                                  headers={"Content-Type": "application/cbor"})


def _check_registration(body, card_bytes, public_key):
    leaf = merkle.leaf_hash(card_bytes)
    assert body["leaf_hash"] == leaf.hex()
    root = bytes.fromhex(body["root_hash"])
    logproof.check_inclusion(leaf, body["leaf_index"], body["tree_size"],
                         [bytes.fromhex(p) for p in body["inclusion_proof"]], root)
    head = logproof.verify_tree_head(base64.b64decode(body["tree_head"]["signed"]), public_key)
    assert (head.tree_size, head.root_hash) == (body["tree_size"], root)
    check = receipts.verify_receipt(base64.b64decode(body["receipt"]), card_bytes, public_key)
    assert (check.leaf_index, check.root_hash) == (body["leaf_index"], root)


def test_open_endpoints_and_tokens(service, kits):
    anon = service["anon"]
    assert anon.get("/healthz").json()["status"] == "ok"
    spec = anon.get("/openapi.json").json()
    for path in ("/v1/cards", "/v1/cards/{card_id}", "/v1/verify", "/v1/ownership",
                 "/v1/disputes", "/v1/disputes/{dispute_id}", "/v1/log/tree-head",
                 "/v1/log/inclusion", "/v1/log/consistency"):
        assert path in spec["paths"], path
    card = kits["owner"].card_bytes
    assert anon.post("/v1/cards", content=card).status_code == 401
    wrong = anon.post("/v1/cards", content=card, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "token" in wrong.json()["detail"]
    assert anon.post("/v1/verify", data={"card_id": "0" * 64,
                                         "model_sha256": "0" * 64}).status_code == 401


def test_register_fetch_verify(service, kits):
    owner, key = kits["owner"], service["key"]
    first_head = service["anon"].get("/v1/log/tree-head").json()
    response = _register(service, owner.card_bytes)
    assert response.status_code == 201, response.text
    body = response.json()
    _check_registration(body, owner.card_bytes, key)
    assert body["appraisal"]["status"] in ("affirming", "warning")
    # The commitment leaf precedes the card leaf and has its own verifiable receipt.
    commitment = body["commitment"]
    assert commitment["commitment"] == owner.claims["defenses"]["watermark"]["commitment"]
    assert commitment["leaf_index"] == body["leaf_index"] - 1
    entry = service["anon"].get(f"/v1/log/entries/{commitment['leaf_index']}").json()
    receipts.verify_receipt(base64.b64decode(commitment["receipt"]),
                            base64.b64decode(entry["data"]), key)

    again = _register(service, owner.card_bytes)
    assert again.status_code == 200 and again.json()["already_registered"]
    assert again.json()["leaf_index"] == body["leaf_index"]

    card_id = body["card_id"]
    anon = service["anon"]
    raw = anon.get(f"/v1/cards/{card_id}", headers={"Accept": "application/cbor"})
    assert raw.headers["content-type"] == "application/cbor" and raw.content == owner.card_bytes
    as_json = anon.get(f"/v1/cards/{card_id}").json()
    assert as_json["payload"]["claims"]["model"]["sha256"] == owner.claims["model"]["sha256"]
    assert as_json["simulated"] is True and as_json["leaf_index"] == body["leaf_index"]
    page = anon.get(f"/v1/cards/{card_id}", headers={"Accept": "text/html"})
    assert page.headers["content-type"].startswith("text/html")
    assert "simulated hardware" in page.text.lower() and card_id in page.text
    assert anon.get(f"/v1/cards/{'ab' * 32}").status_code == 404

    client = service["client"]
    with open(owner.model_path, "rb") as f:
        verified = client.post("/v1/verify", data={"card_id": card_id},
                               files={"model": ("model.onnx", f)}).json()
    assert verified["result"]["status"] in ("affirming", "warning")
    assert verified["model_first_seen"]["leaf_index"] == body["leaf_index"]
    wrong = client.post("/v1/verify", data={"card_id": card_id, "model_sha256": "0" * 64}).json()
    assert wrong["result"]["status"] == "contraindicated"
    assert any(c["check"] == "model_digest" and c["status"] == "contraindicated"
               for c in wrong["result"]["checks"])
    # Card and model digest are now in memory, so these are answered on the event loop
    # instead of a worker thread: the same answers.
    assert client.post("/v1/verify", data={"card_id": card_id,
                                            "model_sha256": "0" * 64}).json() == wrong
    by_digest = client.post("/v1/verify", data={"card_id": card_id,
                                                "model_sha256": owner.claims["model"]["sha256"]})
    assert [(c["check"], c["status"]) for c in by_digest.json()["result"]["checks"]] == \
        [(c["check"], c["status"]) for c in verified["result"]["checks"]]

    # The log only grew: consistency from the head before registration to now.
    proof = anon.get("/v1/log/consistency", params={"first": first_head["tree_size"]}).json()
    new_head = logproof.verify_tree_head(base64.b64decode(proof["tree_head"]["signed"]), key)
    old_head = logproof.verify_tree_head(base64.b64decode(first_head["signed"]), key)
    logproof.check_consistency(old_head.tree_size, new_head.tree_size,
                           [bytes.fromhex(p) for p in proof["consistency_proof"]],
                           old_head.root_hash, new_head.root_hash)


def test_rejected_card_is_not_logged(service, kits):
    before = service["anon"].get("/healthz").json()["log_size"]
    owner = kits["owner"]
    # Tamper with exactly one thing: a claim changed after sealing (the signature breaks).
    from cardkit import forge

    def lower(claims):
        claims["evaluation"]["accuracy"] = 0.99
    forged = forge(owner, mutate_claims=lower, resign=False)
    response = _register(service, forged)
    assert response.status_code == 422
    body = response.json()
    assert body["result"]["status"] == "contraindicated"
    assert "release_signature" in body["detail"]
    garbage = _register(service, b"\xa1\x01")
    assert garbage.status_code == 422 and "card_format" in garbage.json()["detail"]
    assert service["anon"].get("/healthz").json()["log_size"] == before


def test_ownership_and_disputes(service, kits):
    owner, rival, key = kits["owner"], kits["rival"], service["key"]
    client = service["client"]
    owner_id = _register(service, owner.card_bytes).json()["card_id"]
    stolen_bytes = kits["stolen"].read_bytes()

    shown = client.post("/v1/ownership", data={"card_id": owner_id,
                                               "opening": owner.opening.to_json()},
                        files={"model": ("stolen.onnx", stolen_bytes)})
    assert shown.status_code == 200, shown.text
    result = shown.json()
    assert result["ownership"]["verdict"] == "shown"
    suspect_index = result["suspect"]["first_seen"]["leaf_index"]

    # The rival registers only after the suspect was first seen.
    rival_body = _register(service, rival.card_bytes).json()
    rival_id = rival_body["card_id"]
    assert rival_body["commitment"]["leaf_index"] > suspect_index

    params = watermark.make_parameters(100, 10, [64], [0.0, 1.0])
    fresh = watermark.Opening(seed=b"\x01" * 32, salt=b"\x02" * 32, parameters=params,
                              commitment=watermark.commit(b"\x01" * 32, b"\x02" * 32, params))
    claims = [
        {"card_id": rival_id, "opening": json.loads(rival.opening.to_json())},
        {"card_id": owner_id, "opening": json.loads(rival.opening.to_json())},
        {"card_id": owner_id, "opening": json.loads(fresh.to_json())},
        {"card_id": "cd" * 32, "opening": json.loads(fresh.to_json())},
        {"card_id": owner_id, "opening": json.loads(owner.opening.to_json())},
    ]
    response = client.post("/v1/disputes", data={"claims": json.dumps(claims)},
                           files={"model": ("stolen.onnx", stolen_bytes)})
    assert response.status_code == 201, response.text
    view = response.json()
    verdict = view["verdict"]
    assert verdict["winner"] == owner_id
    assert verdict["suspect"]["leaf_index"] == suspect_index
    reasons = [c["reason"] for c in verdict["claims"]]
    won = [c["won"] for c in verdict["claims"]]
    assert won == [False, False, False, False, True]
    assert "not before the suspect" in reasons[0]
    assert "does not match" in reasons[1] and "does not match" in reasons[2]
    assert "not registered" in reasons[3]
    assert "ownership shown" in reasons[4]

    # Signed, logged, and ordered inside a signed tree head.
    signed = base64.b64decode(view["signed_verdict"])
    assert disputes.verify_verdict(signed, key)["winner"] == owner_id
    receipts.verify_receipt(base64.b64decode(view["log"]["receipt"]), signed, key)
    head = verdict["tree_head"]
    owner_claim = verdict["claims"][4]
    for index in (suspect_index, owner_claim["commitment_leaf_index"]):
        entry = service["anon"].get(f"/v1/log/entries/{index}").json()
        logproof.check_inclusion(bytes.fromhex(entry["leaf_hash"]), index, head["tree_size"],
                             [bytes.fromhex(p) for p in verdict["inclusion_proofs"][str(index)]],
                             bytes.fromhex(head["root_hash"]))
    fetched = service["anon"].get(f"/v1/disputes/{view['dispute_id']}").json()
    assert fetched["signed_verdict"] == view["signed_verdict"]
    assert service["anon"].get("/v1/disputes/nope").status_code == 404

    # A forger swapping the winner breaks the service signature.
    import cbor2
    protected, unprotected, payload, signature = cbor2.loads(signed).value
    swapped = cbor2.loads(payload)
    swapped["winner"] = rival_id
    forged = cbor2.CBORTag(18, [protected, unprotected, cbor2.dumps(swapped, canonical=True),
                                signature])
    with pytest.raises(Exception, match="signature"):
        disputes.verify_verdict(cbor2.dumps(forged, canonical=True), key)


def test_malformed_requests_get_4xx_with_reason(service, kits):
    client = service["client"]
    owner_id = _register(service, kits["owner"].card_bytes).json()["card_id"]
    cases = [
        client.post("/v1/cards", content=b""),
        client.post("/v1/verify", data={"model_sha256": "0" * 64}),
        client.post("/v1/verify", data={"card_id": owner_id, "model_sha256": "xyz"}),
        client.post("/v1/verify", data={"card_id": owner_id}),
        client.post("/v1/verify", data={"card_id": owner_id, "model": "not a file"}),
        client.post("/v1/verify", files={"card_id": ("id", owner_id.encode())},
                    data={"model_sha256": "0" * 64}),
        client.post("/v1/verify", content=b"\x00\xff garbage",
                    headers={"Content-Type": "multipart/form-data; boundary=zzz"}),
        client.post("/v1/ownership", data={"card_id": owner_id, "opening": "{not json"},
                    files={"model": ("m.onnx", b"not onnx")}),
        client.post("/v1/ownership", data={"card_id": owner_id,
                                           "opening": kits["owner"].opening.to_json()},
                    files={"model": ("m.onnx", b"not onnx")}),
        client.post("/v1/ownership", data={"card_id": owner_id,
                                           "opening": kits["owner"].opening.to_json(),
                                           "prediction_url": "http://127.0.0.1:9/predict"}),
        client.post("/v1/disputes", data={"claims": "[oops"}, files={"model": ("m", b"x")}),
        client.post("/v1/disputes", data={"claims": json.dumps([{"card_id": 1}])},
                    files={"model": ("m", b"x")}),
        client.post("/v1/disputes", data={"claims": json.dumps(
            [{"card_id": owner_id, "opening": {}}])}),
        service["anon"].get("/v1/log/inclusion", params={"leaf_index": 10 ** 6}),
        service["anon"].get("/v1/log/inclusion", params={"leaf_index": -1}),
        service["anon"].get("/v1/log/consistency", params={"first": 0}),
        service["anon"].get("/v1/log/consistency", params={"first": 5, "second": 3}),
        service["anon"].get("/v1/log/consistency", params={"first": 1, "second": 10 ** 9}),
        service["anon"].get(f"/v1/cards/{owner_id}", params={"format": "pdf"}),
        # Inputs that once reached a 500: an index beyond 64 bits, JSON nested deeper
        # than the parser's recursion limit.
        service["anon"].get("/v1/log/entries/" + "9" * 30),
        client.post("/v1/disputes", data={"claims": "[" * 50000 + "]" * 50000},
                    files={"model": ("m", b"x")}),
        client.post("/v1/ownership", data={"card_id": owner_id,
                                           "opening": "[" * 50000 + "]" * 50000},
                    files={"model": ("m.onnx", b"not onnx")}),
    ]
    for response in cases:
        assert 400 <= response.status_code < 500, (response.request.url, response.status_code,
                                                   response.text)
        assert response.json().get("detail"), response.text
    assert cases[9].status_code == 403 and "prediction" in cases[9].json()["detail"]


def test_metrics(service):
    text = service["anon"].get("/metrics").text
    assert "laminate_http_requests_total" in text and "laminate_log_size" in text
