"""The service's rules under attack: each test replays one attack on the registry and
sees it refused for its reason (issue: the service and disputes)."""
import base64
import concurrent.futures
import hashlib
import json
import time

import httpx
import pytest

from cardkit import make_card
from predict_server import PredictEndpoint
from registry import clocks
from registry.config import ServiceConfig
from registry.service import Service
from servers import start_server
from service_helpers import (
    card_variant,
    combined_policy,
    database_urls,
    make_database,
    memorizing_model,
)
from test_service_suspects import loop_model
from verifier import logproof
from verifier.evidence import Quoted

TOKEN = "attack-token"


@pytest.fixture(scope="module")
def kits(tmp_path_factory):
    base = tmp_path_factory.mktemp("attack-kits")
    owner, thief = make_card(base / "owner"), make_card(base / "thief")
    policy = combined_policy(base / "policy.yaml", [owner, thief])
    return {"owner": owner, "thief": thief, "policy": policy, "dir": base}


@pytest.fixture(scope="module", params=database_urls())
def live(request, kits, tmp_path_factory):
    workdir = tmp_path_factory.mktemp(f"attack-{request.param}")
    url, cleanup = make_database(request.param, workdir)
    mp = pytest.MonkeyPatch()
    mp.setenv("LAMINATE_SUSPECT_SECONDS", "3")
    server = start_server(workdir, database_url=url, policy_path=kits["policy"],
                          key_path=workdir / "key.pem", tokens=(TOKEN,),
                          allow_prediction_urls=True)
    mp.undo()
    client = httpx.Client(base_url=server.url, timeout=120,
                          headers={"Authorization": f"Bearer {TOKEN}"})
    yield {"server": server, "client": client}
    client.close()
    server.stop()
    cleanup()


def _register(client, card_bytes):
    answer = client.post("/v1/cards", content=card_bytes,
                         headers={"Content-Type": "application/cbor"})
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


def test_url_thief_cannot_be_judged_owner_of_the_victims_digest(live, kits, tmp_path):
    """The thief registers its own card, serves its own trigger labels at a URL and
    names the victim's registered model digest: refused. Over the URL alone the verdict
    names the URL and its own first sighting; the victim's digest appears nowhere."""
    client, owner, thief = live["client"], kits["owner"], kits["thief"]
    _register(client, owner.card_bytes)
    thief_id = _register(client, thief.card_bytes)["card_id"]
    victim_digest = owner.claims["model"]["sha256"]
    claims = json.dumps([{"card_id": thief_id, "opening": json.loads(thief.opening.to_json())}])
    with PredictEndpoint(memorizing_model(tmp_path / "thief.onnx", thief.opening, 10)) as api:
        named = client.post("/v1/disputes", data={"claims": claims, "model_sha256": victim_digest,
                                                  "prediction_url": api.url})
        assert named.status_code == 422
        assert "model_sha256: a prediction URL proves nothing" in named.json()["detail"]
        over_url = client.post("/v1/disputes", data={"claims": claims,
                                                     "prediction_url": api.url})
    assert over_url.status_code == 201, over_url.text
    verdict = over_url.json()["verdict"]
    assert verdict["suspect"]["prediction_url"] == api.url
    assert verdict["suspect"]["source"] == "endpoint" and "sha256" not in verdict["suspect"]
    assert victim_digest not in over_url.text
    entry = client.get(f"/v1/log/entries/{verdict['suspect']['leaf_index']}").json()
    assert entry["kind"] == "endpoint"


def test_digest_only_verify_never_logs_a_first_sighting(live, kits):
    client = live["client"]
    owner_id = _register(client, kits["owner"].card_bytes)["card_id"]
    unseen = hashlib.sha256(b"a model this caller never had").hexdigest()
    before = client.get("/healthz").json()["log_size"]
    answer = client.post("/v1/verify", data={"card_id": owner_id, "model_sha256": unseen}).json()
    assert answer["model_first_seen"] is None
    assert client.get("/healthz").json()["log_size"] == before
    # The file is evidence of possession: uploading it does log a first sighting.
    answer = client.post("/v1/verify", data={"card_id": owner_id},
                         files={"model": ("m.onnx", b"some other model bytes")}).json()
    assert answer["model_first_seen"]["source"] == "submitted"
    assert client.get("/healthz").json()["log_size"] == before + 1


def test_healthz_answers_while_loop_suspects_hold_every_worker(live, kits, tmp_path):
    client, owner = live["client"], kits["owner"]
    owner_id = _register(client, owner.card_bytes)["card_id"]
    model = loop_model(tmp_path / "loop.onnx").read_bytes()

    def upload(_):
        return client.post("/v1/ownership", data={"card_id": owner_id,
                                                  "opening": owner.opening.to_json()},
                           files={"model": ("loop.onnx", model)})
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        started = time.monotonic()
        futures = [pool.submit(upload, i) for i in range(6)]
        time.sleep(1.0)
        probe = time.monotonic()
        health = httpx.get(live["server"].url + "/healthz", timeout=5)
        assert health.status_code == 200 and time.monotonic() - probe < 2
        answers = [f.result() for f in futures]
    assert all(a.status_code == 422 for a in answers), [a.text for a in answers]
    assert all("exceeded its 3 s limit" in a.json()["detail"] for a in answers)
    assert time.monotonic() - started < 60


# --- in-process service: tree heads and the TPM clock rule ------------------------------

@pytest.fixture
def service(kits, tmp_path):
    svc = Service(ServiceConfig(database_url=f"sqlite:///{tmp_path / 's.sqlite'}",
                                policy_path=str(kits["policy"]),
                                key_path=str(tmp_path / "key.pem")))
    yield svc
    svc.close()


def test_only_the_current_tree_head_is_ever_signed(service, kits):
    owner = kits["owner"]
    for i in range(3):
        status, _ = service.register_card(card_variant(owner, i))
        assert status == 201
    size = service.log.size()
    assert size >= 5
    old = service.old_inclusion(1, 2)
    assert "receipt" not in old
    head = logproof.verify_tree_head(base64.b64decode(old["tree_head"]["signed"]),
                                     service.public_key)
    assert head.tree_size == size, "a fresh signature over a stale size serves a freeze"
    logproof.check_consistency(2, size, [bytes.fromhex(p) for p in old["consistency_proof"]],
                               bytes.fromhex(old["root_hash"]), head.root_hash)
    logproof.check_inclusion(bytes.fromhex(old["leaf_hash"]), 1, 2,
                             [bytes.fromhex(p) for p in old["inclusion_proof"]],
                             bytes.fromhex(old["root_hash"]))
    with pytest.raises(TypeError):
        service.log.tree_head(2)


def _quote(device, reset, restart, clock):
    return Quoted([16], b"\0" * 32, b"\0" * 32, device,
                  {"clock": clock, "resetCount": reset, "restartCount": restart, "safe": 1})


@pytest.mark.parametrize("second,reason", [
    ((1, 0, 1_000), "resetCount went back from 9 to 1"),
    ((9, 3, 1_000), "clock went back from 9000000 to 1000"),
    ((9, 2, 9_500_000), "restartCount went back from 3 to 2"),
])
def test_tpm_clock_going_back_is_refused_at_registration(service, kits, monkeypatch,
                                                         second, reason):
    """Two cards quoted by one TPM: the second quote's counters went back (a replayed or
    rolled-back TPM state); the registration is refused and leaves no trace."""
    quotes = iter([_quote("tpm:device-a", 9, 3, 9_000_000), _quote("tpm:device-a", *second)])
    monkeypatch.setattr(clocks, "quoted_clock", lambda evidence, policy: next(quotes))
    owner = kits["owner"]
    assert service.register_card(card_variant(owner, 10))[0] == 201
    size = service.log.size()
    status, body = service.register_card(card_variant(owner, 11))
    assert status == 422
    assert f"tpm_clock (tpm:device-a): {reason}" in body["detail"]
    assert service.log.size() == size
    assert service.find_card(hashlib.sha256(card_variant(owner, 11)).hexdigest()) is None


def test_tpm_clock_moving_forward_and_other_devices_are_accepted(service, kits, monkeypatch):
    quotes = iter([_quote("tpm:a", 9, 3, 9_000_000), _quote("tpm:b", 1, 0, 1_000),
                   _quote("tpm:a", 10, 0, 9_100_000)])
    monkeypatch.setattr(clocks, "quoted_clock", lambda evidence, policy: next(quotes))
    for i in range(3):
        assert service.register_card(card_variant(kits["owner"], 20 + i))[0] == 201


def test_untrusted_card_is_refused_before_its_costly_checks(tmp_path):
    """CPU amplification: a card with 1,000 triggers (seconds of exact power computation)
    signed by a key the policy does not trust is refused without that work."""
    from verifier.appraise import appraise
    from verifier.policy import Policy

    heavy = make_card(tmp_path / "heavy", watermark_claim={"trigger_count": 1000})
    stranger = make_card(tmp_path / "stranger")
    doc = yaml_policy(heavy, release=stranger)
    started = time.perf_counter()
    result = appraise(heavy.card_bytes, policy=Policy.from_mapping(doc))
    elapsed = time.perf_counter() - started
    assert [c.check for c in result.failed()] == ["release_signature"]
    assert result.get("watermark_power") is None and result.get("log_replay") is None
    assert "release signature failed" in result.get("remaining_checks").reason
    assert elapsed < 0.5, elapsed
    trusted = appraise(heavy.card_bytes, policy=Policy.from_mapping(yaml_policy(heavy)))
    assert trusted.get("watermark_power") is not None      # the work a trusted card gets


def test_untrusted_root_stops_after_the_evidence_checks(tmp_path):
    from verifier.appraise import appraise
    from verifier.policy import Policy

    kit, other = make_card(tmp_path / "kit"), make_card(tmp_path / "other")
    doc = {**yaml_policy(kit), "trusted_roots": [str(other.root_pem_path)]}
    result = appraise(kit.card_bytes, policy=Policy.from_mapping(doc))
    assert "cert_chain" in {c.check for c in result.failed()}
    assert result.get("claims_in_log") is None and result.get("dp_epsilon") is None
    assert "trust chain failed" in result.get("remaining_checks").reason


def yaml_policy(kit, release=None):
    return {"policy_id": "amplification", "allow_backends": ["sim"],
            "trusted_roots": [str(kit.root_pem_path)],
            "trusted_release_keys": [str((release or kit).release_public_pem_path)],
            "reference_values": {"code": [kit.code_sha256]}}
