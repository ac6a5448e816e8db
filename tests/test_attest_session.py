"""The attested session and the sim backend: events, quote binding, order, card files."""
import hashlib

import cbor2
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attest import measure
from attest.backend import Backend, open_backend
from attest.session import AttestedSession
from cardkit import (
    CLASSES,
    EVALUATION,
    START,
    dp_claim,
    fake_records,
    forge,
    make_card,
    make_onnx_model,
    quote_info,
)
from cards import card as cardlib
from cards import keys, schema
from cards.errors import LaminateError

TABLE = [("code", 16), ("config", 23), ("dataset.train", 23), ("dataset.test", 23),
         ("start", 23), ("defense.dp", 23), ("defense.watermark", 23), ("evaluation", 23), ("model", 23)]
WATERMARK = {"scheme": "laminate-trigger-v1", "commitment": "ab" * 32, "trigger_count": 50,
             "classes": CLASSES, "schedule": "joint"}


def replay(events):
    registers = {16: bytes(32), 23: bytes(32)}
    for event in events:
        registers[event["register"]] = hashlib.sha256(
            registers[event["register"]] + event["digest"]).digest()
    return hashlib.sha256(registers[16] + registers[23]).digest()


def measured_session(tmp_path, *, dp=True, watermark=True, backend=None):
    backend = backend or open_backend("sim", sim_dir=tmp_path / "sim")
    session = AttestedSession(backend, keys.generate_private_key("p256"))
    session.measure_code(measure.code_claim())
    session.measure_config(measure.config_claim({"epochs": 2, "lr": 0.5}))
    session.measure_dataset("train", measure.dataset_claim("tr", fake_records(12, seed=1), CLASSES))
    session.measure_dataset("test", measure.dataset_claim("te", fake_records(6, seed=2), CLASSES))
    session.measure_start(START)
    session.measure_dp(dp_claim() if dp else None)
    session.measure_watermark(WATERMARK if watermark else None)
    session.measure_evaluation({**EVALUATION, "test_records": 6})
    session.measure_model(measure.model_claim(make_onnx_model(tmp_path / "m.onnx"), "m"))
    return session


def test_sealed_card_binds_claims_log_and_quote(tmp_path):
    session = measured_session(tmp_path)
    card = cardlib.open_card(session.seal())
    evidence = card.evidence
    assert [(e["type"], e["register"]) for e in evidence["event_log"]] == TABLE
    for event in evidence["event_log"]:
        assert event["digest"] == schema.event_digest(event["type"], event["data"])
        assert event["data"] == schema.claim_for_event(card.claims, event["type"])
    info = cbor2.loads(evidence["quote"])
    assert info["backend"] == "sim" and info["registers"] == [16, 23]
    assert info["qualifying_data"] == schema.claims_digest(card.claims)
    assert info["register_digest"] == replay(evidence["event_log"])
    ak = x509.load_der_x509_certificate(evidence["cert_chain"][0])
    sig = evidence["signature"]
    ak.public_key().verify(encode_dss_signature(int.from_bytes(sig[:32], "big"),
                                                int.from_bytes(sig[32:], "big")),
                           evidence["quote"], ec.ECDSA(hashes.SHA256()))
    assert card.claims["training"]["framework"]["laminate"]
    assert cardlib.release_key_matches(card, session.release_key.public_key())


def test_null_defences_have_no_event(tmp_path):
    card = cardlib.open_card(measured_session(tmp_path, dp=False, watermark=False).seal())
    assert card.claims["defenses"] == {"dp": None, "watermark": None}
    types = [e["type"] for e in card.evidence["event_log"]]
    assert "defense.dp" not in types and "defense.watermark" not in types


def test_session_starts_from_reset_registers(tmp_path):
    backend = open_backend("sim", sim_dir=tmp_path / "sim")
    backend.start([16, 23])
    backend.extend({"register": 23, "type": "junk", "digest": bytes(range(32)), "data": None})
    card = cardlib.open_card(measured_session(tmp_path, backend=backend).seal())
    assert cbor2.loads(card.evidence["quote"])["register_digest"] == replay(card.evidence["event_log"])


def test_optional_defences_may_be_skipped(tmp_path):
    session = AttestedSession(open_backend("sim", sim_dir=tmp_path), keys.generate_private_key())
    session.measure_code(measure.code_claim())
    session.measure_config(measure.config_claim({}))
    session.measure_dataset("train", measure.dataset_claim("a", fake_records(3, seed=0), CLASSES))
    session.measure_dataset("test", measure.dataset_claim("b", fake_records(3, seed=0), CLASSES))
    session.measure_start(START)
    session.measure_evaluation({**EVALUATION, "watermark_accuracy": None})
    with pytest.raises(LaminateError, match="defense.dp measured twice or after evaluation"):
        session.measure_dp(dp_claim())
    with pytest.raises(LaminateError, match="cannot seal before model"):
        session.seal()
    session.measure_model(measure.model_claim(make_onnx_model(tmp_path / "m.onnx"), "m"))
    assert cardlib.open_card(session.seal()).claims["defenses"] == {"dp": None, "watermark": None}


@pytest.mark.parametrize("steps,reason", [
    (["config"], "config measured before code"),
    (["code", "code"], "code measured twice"),
    (["code", "config", "train", "evaluation"], "evaluation measured before dataset.test"),
    (["code", "config", "test"], "dataset.test measured before dataset.train"),
])
def test_order_is_enforced(tmp_path, steps, reason):
    session = AttestedSession(open_backend("sim", sim_dir=tmp_path), keys.generate_private_key())
    calls = {
        "code": lambda: session.measure_code(measure.code_claim()),
        "config": lambda: session.measure_config(measure.config_claim({})),
        "train": lambda: session.measure_dataset("train", {"records": 1}),
        "test": lambda: session.measure_dataset("test", {"records": 1}),
        "evaluation": lambda: session.measure_evaluation(EVALUATION),
    }
    for step in steps[:-1]:
        calls[step]()
    with pytest.raises(LaminateError, match=reason):
        calls[steps[-1]]()


def test_no_measurement_after_sealing_and_bad_split(tmp_path):
    session = measured_session(tmp_path)
    session.seal()
    with pytest.raises(LaminateError, match="after the card was sealed"):
        session.measure_model({})
    with pytest.raises(LaminateError, match="train or test"):
        AttestedSession(open_backend("sim", sim_dir=tmp_path), None).measure_dataset("val", {})


def test_write_emits_card_and_views(tmp_path):
    session = measured_session(tmp_path)
    card_bytes = session.seal()
    files = session.write(tmp_path / "out", card_bytes)
    assert files.cbor.read_bytes() == card_bytes
    view = yaml.safe_load(files.yaml.read_text())
    assert view is not None
    assert "SIMULATED HARDWARE" in files.yaml.read_text()
    assert "SIMULATED HARDWARE" in files.md.read_text()
    with pytest.raises(LaminateError):
        session.write(tmp_path / "out2", card_bytes[:-1])


def test_backends(tmp_path):
    backend = open_backend("sim", sim_dir=tmp_path)
    assert isinstance(backend, Backend) and backend.name == "sim"
    with pytest.raises(LaminateError, match="extend before start"):
        backend.extend({"register": 23, "digest": bytes(32)})
    backend.start([23])
    with pytest.raises(LaminateError, match="register 16 is not one this session quotes"):
        backend.extend({"register": 16, "digest": bytes(32)})
    with pytest.raises(LaminateError, match="unknown attestation backend 'sgx'"):
        open_backend("sgx")
    (tmp_path / "file").write_text("x")
    with pytest.raises(LaminateError, match="not a directory"):
        open_backend("sim", sim_dir=tmp_path / "file")


def test_quote_counter_grows_across_sessions_on_one_device(tmp_path):
    first = quote_info(measured_session(tmp_path).seal())
    second = quote_info(measured_session(tmp_path).seal())
    assert second["device_id"] == first["device_id"]
    assert second["counter"] > first["counter"]
    assert second["reset_count"] > first["reset_count"]


# -- the test kit other helpers build on -------------------------------------------------

def test_cardkit_builds_a_complete_card_and_policy(tmp_path):
    kit = make_card(tmp_path)
    card = cardlib.open_card(kit.card_path.read_bytes())
    assert card.claims == kit.claims and card.evidence == kit.evidence
    assert card.claims["defenses"]["dp"]["epsilon"] == pytest.approx(2.8825982388, rel=1e-6)
    assert card.claims["defenses"]["watermark"]["commitment"] == kit.opening.commitment
    assert card.claims["model"]["sha256"] == measure.file_sha256(kit.model_path)
    assert card.claims["training"]["code"]["wrapper_sha256"] == kit.code_sha256
    policy = yaml.safe_load(kit.policy_path.read_text())
    assert policy["allow_backends"] == ["sim"]
    assert policy["reference_values"]["code"] == [kit.code_sha256]
    assert (tmp_path / policy["trusted_roots"][0]).read_bytes() == kit.device.root_certificate_pem()
    assert cardlib.release_key_matches(
        card, keys.load_public_key(kit.release_public_pem_path))


def test_cardkit_forgeries_change_only_what_they_say(tmp_path):
    kit = make_card(tmp_path, dp=None, watermark_claim=None)
    assert kit.claims["defenses"] == {"dp": None, "watermark": None}
    assert forge(kit, resign=False) == kit.card_bytes

    def bump(claims):
        claims["evaluation"]["accuracy"] = 0.99
    stale = cardlib.open_card(forge(kit, mutate_claims=bump))
    assert stale.claims["evaluation"]["accuracy"] == 0.99
    assert stale.evidence["quote"] == kit.evidence["quote"]
    assert cardlib.release_key_matches(stale, kit.private_key.public_key())

    unsigned = cardlib.open_card(forge(kit, mutate_claims=bump, resign=False))
    assert not cardlib.release_key_matches(unsigned, kit.private_key.public_key())

    def rewrite_event(events):
        events[-1]["data"] = dict(events[-1]["data"], name="other")
    requoted = cardlib.open_card(forge(kit, mutate_events=rewrite_event, requote=True))
    info = cbor2.loads(requoted.evidence["quote"])
    assert info["register_digest"] == replay(requoted.evidence["event_log"])
    assert info["qualifying_data"] == schema.claims_digest(requoted.claims)
    assert requoted.evidence["event_log"][-1]["digest"] != kit.evidence["event_log"][-1]["digest"]

    other = keys.generate_private_key("p256")
    resigned = cardlib.open_card(forge(kit, signing_key=other))
    assert resigned.kid == keys.key_id(other.public_key())


@pytest.mark.parametrize("key_kind", ["ed25519", "p256"])
def test_cardkit_card_passes_the_verifier(tmp_path, key_kind):
    from verifier.appraise import appraise
    from verifier.policy import Policy

    kit = make_card(tmp_path, key_kind=key_kind)
    result = appraise(kit.card_bytes, policy=Policy.load(kit.policy_path), model_path=kit.model_path)
    bad = [c for c in result.checks if c.status == "contraindicated"]
    assert not bad, bad
    assert result.simulated
