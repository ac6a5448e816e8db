"""Tamper matrix: change exactly one thing and the verifier names the check that caught it.

Every card here is a real one (tests/cardkit.py runs the prover path over a simulated
device); forgeries are made the way an attacker could make them, including re-quoting
with a device the attacker runs software on.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import cardkit
from cards import cbor, keys
from verifier.appraise import appraise
from verifier.policy import Policy
from verifier.result import AFFIRMING, CONTRAINDICATED, SKIPPED, WARNING

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return cardkit.make_card(tmp_path_factory.mktemp("kit"))


@pytest.fixture(scope="module")
def policy(kit):
    return Policy.load(kit.policy_path)


def _policy(kit, **changes):
    import yaml
    doc = yaml.safe_load(kit.policy_path.read_text())
    doc.update(changes)
    return Policy.from_mapping(doc, base_dir=kit.policy_path.parent, source="test-policy")


def _rejected_by(result, name, reason_part):
    failed = {c.check: c for c in result.failed()}
    assert result.exit_code == 1
    assert name in failed, f"{name} not among failed checks: {result.to_table()}"
    assert reason_part in failed[name].reason, failed[name]
    assert failed[name].field
    return failed


def test_untouched_card_passes(kit, policy):
    result = appraise(kit.card_bytes, policy=policy, model_path=kit.model_path)
    assert result.exit_code == 0, result.to_table()
    assert result.status == WARNING and result.simulated and result.backend == "sim"
    statuses = {c.check: c.status for c in result.checks}
    assert statuses.pop("simulated_hardware") == WARNING
    assert set(statuses.values()) == {AFFIRMING}, result.to_table()
    for name in ("card_format", "release_signature", "backend", "cert_chain", "quote_signature",
                 "qualifying_data", "log_replay", "claims_in_log", "code_identity",
                 "model_digest", "policy:evaluation.accuracy >= 0.5", "dp_epsilon",
                 "privacy_accounting", "watermark_power"):
        assert name in statuses, name


def test_default_policy_refuses_sim(kit):
    result = appraise(kit.card_bytes, policy=Policy.default(), model_path=kit.model_path)
    failed = _rejected_by(result, "backend", "backend sim is not allowed by policy default; "
                          "simulated hardware gives no guarantee")
    # The release key is not trusted either, so the claims are not evaluated at all.
    assert "release_signature" in failed and result.get("code_identity") is None
    assert "release signature failed" in result.get("remaining_checks").reason
    assert result.get("simulated_hardware") is None
    assert "SIMULATED HARDWARE" in result.to_table()


def test_claim_byte_changed_and_resigned(kit, policy):
    def edit(claims):
        claims["model"]["name"] = "kit-modeL"
    forged = cardkit.forge(kit, mutate_claims=edit)
    result = appraise(forged, policy=policy, model_path=kit.model_path)
    failed = _rejected_by(result, "qualifying_data", "claims were changed after attestation")
    assert result.get("release_signature").status == AFFIRMING
    assert failed["claims_in_log"].field == "claims.model"


def test_quote_bytes_changed(kit, policy):
    def flip(evidence):
        quote = bytearray(evidence["quote"])
        quote[-1] ^= 1
        evidence["quote"] = bytes(quote)
    result = appraise(cardkit.forge(kit, mutate_evidence=flip), policy=policy,
                      model_path=kit.model_path)
    _rejected_by(result, "quote_signature", "does not verify")
    for name in ("qualifying_data", "log_replay", "claims_in_log"):
        check = result.get(name)
        assert check.status == SKIPPED and check.reason == "not checked: quote signature failed"
    assert result.get("cert_chain").status == AFFIRMING


def test_log_event_data_changed(kit, policy):
    def edit(log):
        log[2]["data"]["records"] += 1
    # digest left as it was: the event no longer hashes to its digest
    stale = appraise(cardkit.forge(kit, mutate_events=edit, redigest=False), policy=policy)
    failed = _rejected_by(stale, "log_replay", "digest does not match")
    assert failed["log_replay"].field == "evidence.event_log[2].digest"
    # digest recomputed: the register no longer replays to the quoted value
    fresh = appraise(cardkit.forge(kit, mutate_events=edit), policy=policy)
    _rejected_by(fresh, "log_replay", "does not reproduce the quoted register digest")
    assert fresh.get("claims_in_log").reason == "not checked: log replay failed"


def test_event_forged_consistently_but_claims_differ(kit, policy):
    def edit(log):
        log[2]["data"]["records"] += 1
    forged = cardkit.forge(kit, mutate_events=edit, requote=True)
    result = appraise(forged, policy=policy, model_path=kit.model_path)
    failed = _rejected_by(result, "claims_in_log", "differs from the measured 'dataset.train' event")
    assert failed["claims_in_log"].field == "claims.dataset.train"
    assert set(failed) == {"claims_in_log"}
    assert result.get("log_replay").status == AFFIRMING


def test_event_order_code_first(kit, policy):
    def swap(log):
        log[0], log[1] = log[1], log[0]
    result = appraise(cardkit.forge(kit, mutate_events=swap, requote=True), policy=policy)
    failed = _rejected_by(result, "claims_in_log", "first event must measure the code")
    assert set(failed) == {"claims_in_log"}


def test_chain_from_other_device_root(kit, policy, tmp_path):
    from enclave_sim.device import SimDevice
    other = SimDevice(tmp_path / "other")

    def other_root(evidence):
        evidence["cert_chain"][1] = other.certificate_chain()[1]
    result = appraise(cardkit.forge(kit, mutate_evidence=other_root), policy=policy)
    failed = _rejected_by(result, "cert_chain", "root certificate is not trusted by policy cardkit")
    assert set(failed) == {"cert_chain"}


def test_chain_with_swapped_ak_certificate(kit, policy, tmp_path):
    from enclave_sim.device import SimDevice
    other = SimDevice(tmp_path / "other")

    def swap_ak(evidence):
        evidence["cert_chain"][0] = other.certificate_chain()[0]
    result = appraise(cardkit.forge(kit, mutate_evidence=swap_ak), policy=policy)
    failed = _rejected_by(result, "cert_chain", "not issued by the trusted root")
    assert "quote_signature" in failed


def test_card_quoted_by_untrusted_device(tmp_path, policy, kit):
    """A complete, consistent card from another simulated device: only the chain fails."""
    other_kit = cardkit.make_card(tmp_path)
    doc_policy = _policy(kit, trusted_release_keys=[str(other_kit.release_public_pem_path)],
                         reference_values={"code": [other_kit.code_sha256]})
    result = appraise(other_kit.card_bytes, policy=doc_policy, model_path=other_kit.model_path)
    failed = _rejected_by(result, "cert_chain", "root certificate is not trusted")
    assert set(failed) == {"cert_chain"}


def test_model_file_one_byte(kit, policy, tmp_path):
    model = bytearray(kit.model_path.read_bytes())
    model[len(model) // 2] ^= 0x01
    tampered = tmp_path / "model.onnx"
    tampered.write_bytes(bytes(model))
    result = appraise(kit.card_bytes, policy=policy, model_path=tampered)
    failed = _rejected_by(result, "model_digest", "the card says")
    assert set(failed) == {"model_digest"}
    wrong = appraise(kit.card_bytes, policy=policy, model_sha256="00" * 32)
    _rejected_by(wrong, "model_digest", "given model digest")


def test_different_release_key(kit, policy):
    other = keys.generate_private_key("ed25519")
    result = appraise(cardkit.forge(kit, signing_key=other), policy=policy,
                      model_path=kit.model_path)
    failed = _rejected_by(result, "release_signature", "is not trusted by policy cardkit")
    assert set(failed) == {"release_signature"}


def test_release_signature_bytes_changed(kit, policy):
    import cbor2
    parts = list(cbor2.loads(kit.card_bytes).value)
    sig = bytearray(parts[3])
    sig[0] ^= 1
    parts[3] = bytes(sig)
    tampered = cbor2.dumps(cbor2.CBORTag(18, parts), canonical=True)
    result = appraise(tampered, policy=policy, model_path=kit.model_path)
    failed = _rejected_by(result, "release_signature", "does not verify")
    assert set(failed) == {"release_signature"}


def test_policy_code_reference_changed(kit):
    result = appraise(kit.card_bytes, policy=_policy(kit, reference_values={"code": ["ab" * 32]}),
                      model_path=kit.model_path)
    failed = _rejected_by(result, "code_identity", "is not a reference value of policy cardkit")
    assert set(failed) == {"code_identity"}


def test_policy_predicate_violated(kit):
    p = _policy(kit, require=["evaluation.accuracy >= 0.99", "defenses.dp.epsilon <= 100"])
    result = appraise(kit.card_bytes, policy=p, model_path=kit.model_path)
    failed = _rejected_by(result, "policy:evaluation.accuracy >= 0.99", "violated")
    assert set(failed) == {"policy:evaluation.accuracy >= 0.99"}
    assert failed["policy:evaluation.accuracy >= 0.99"].field == "claims.evaluation.accuracy"
    assert result.get("policy:defenses.dp.epsilon <= 100").status == AFFIRMING


def test_policy_backend_not_allowed(kit):
    result = appraise(kit.card_bytes, policy=_policy(kit, allow_backends=["tpm"]),
                      model_path=kit.model_path)
    failed = _rejected_by(result, "backend", "backend sim is not allowed by policy cardkit")
    assert set(failed) == {"backend"}


def test_epsilon_changed_consistently(kit, policy):
    def edit(claims):
        claims["defenses"]["dp"]["epsilon"] = 1.0

    def follow(log):
        for event in log:
            if event["type"] == "defense.dp":
                event["data"]["epsilon"] = 1.0
    forged = cardkit.forge(kit, mutate_claims=edit, mutate_events=follow, requote=True)
    result = appraise(forged, policy=policy, model_path=kit.model_path)
    failed = _rejected_by(result, "dp_epsilon", "RDP accountant gives")
    assert set(failed) == {"dp_epsilon"}


def test_honest_epsilon_with_wrong_steps_is_caught(tmp_path):
    """The claimed epsilon must match the claimed parameters, not just any epsilon."""
    true_eps = cardkit.rdp_epsilon(1.1, 1 / 60, 960, 1e-5)
    forged = cardkit.make_card(tmp_path, dp={"steps": 3000, "epsilon": true_eps})
    result = appraise(forged.card_bytes, policy=Policy.load(forged.policy_path))
    _rejected_by(result, "dp_epsilon", "3000 steps")


def test_split_schedule_warns_not_tight(tmp_path):
    k = cardkit.make_card(tmp_path, dp={"privacy_accounting": "not tight",
                                        "note": "a non-DP watermark phase followed"},
                          watermark_claim={"schedule": "split"})
    result = appraise(k.card_bytes, policy=Policy.load(k.policy_path), model_path=k.model_path)
    assert result.exit_code == 0
    check = result.get("privacy_accounting")
    assert check.status == WARNING and check.reason.startswith("not tight")
    assert "watermark phase" in check.reason


def test_weak_watermark_warns_power(tmp_path):
    k = cardkit.make_card(tmp_path, evaluation={"watermark_accuracy": 0.3})
    result = appraise(k.card_bytes, policy=Policy.load(k.policy_path), model_path=k.model_path)
    assert result.exit_code == 0
    check = result.get("watermark_power")
    assert check.status == WARNING and "below 0.9" in check.reason
    strong = appraise(k.card_bytes, policy=_policy(k, ownership={"min_power": 0.1}))
    assert strong.get("watermark_power").status == AFFIRMING


def test_no_model_given_is_a_warning(kit, policy):
    result = appraise(kit.card_bytes, policy=policy)
    assert result.exit_code == 0
    assert result.get("model_digest").status == WARNING


def test_appraisal_never_imports_torch(kit, tmp_path):
    """Verifying a DP card (epsilon recomputed) must not load torch or opacus."""
    script = (
        "import sys, json\n"
        "import verifier.appraise as a\n"
        "from verifier.policy import Policy\n"
        "from pathlib import Path\n"
        f"r = a.appraise(Path({str(kit.card_path)!r}).read_bytes(),\n"
        f"               policy=Policy.load({str(kit.policy_path)!r}),\n"
        f"               model_path={str(kit.model_path)!r})\n"
        "print(json.dumps({'status': r.status, 'dp': r.get('dp_epsilon').status,\n"
        "                  'heavy': sorted(m for m in sys.modules\n"
        "                                  if m.split('.')[0] in ('torch', 'opacus'))}))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"status": "warning", "dp": "affirming", "heavy": []}


def test_card_format_failure_is_a_single_check(kit, policy):
    result = appraise(cbor.dumps({"not": "a card"}), policy=policy)
    assert [c.check for c in result.checks] == ["card_format"]
    assert result.exit_code == 1 and result.checks[0].status == CONTRAINDICATED


def test_encodings_kept_by_open_card_equal_fresh_encodings(kit):
    """The appraisal hashes the encodings open_card kept instead of re-encoding; they
    must be exactly the deterministic encodings FORMAT.md defines."""
    from cards import schema
    from cards.card import open_card
    from verifier.appraise import _event_digest
    card = open_card(kit.card_bytes)
    log = card.evidence["event_log"]
    assert card.encoded.claims == cbor.dumps(card.claims)
    assert card.encoded.config == cbor.dumps(card.claims["training"]["config"])
    assert list(card.encoded.event_data) == [cbor.dumps(e["data"]) for e in log]
    assert card.encoded.claim_events == {t: cbor.dumps(schema.claim_for_event(card.claims, t))
                                         for t in schema.EVENT_CLAIMS}
    digests = [_event_digest(e, data) for e, data in zip(log, card.encoded.event_data)]
    assert digests == [schema.event_digest(e["type"], e["data"]) for e in log]
    assert digests == [e["digest"] for e in log]


def test_event_in_a_register_format_does_not_assign(kit, policy):
    """A log that replays (re-quoted) but extends the code event into the data register."""
    def move(log):
        log[0]["register"] = 23
    result = appraise(cardkit.forge(kit, mutate_events=move, requote=True), policy=policy)
    assert result.get("log_replay").status == AFFIRMING
    failed = _rejected_by(result, "claims_in_log", "FORMAT.md assigns register 16")
    assert failed["claims_in_log"].field == "evidence.event_log[0].register"
    assert set(failed) == {"claims_in_log"}


@pytest.mark.parametrize("dp", [{"noise_multiplier": 1e-300},
                                {"noise_multiplier": 1e300, "sample_rate": 5e-324}])
def test_dp_parameters_the_accountant_cannot_handle_are_contraindicated(kit, policy, dp):
    def edit(claims):
        claims["defenses"]["dp"].update(dp)
    result = appraise(cardkit.forge(kit, mutate_claims=edit), policy=policy)
    failed = _rejected_by(result, "dp_epsilon", "cannot compute an epsilon")
    assert failed["dp_epsilon"].field == "claims.defenses.dp"


def test_huge_trigger_count_does_not_stall_the_power_check(kit, policy):
    """The power DP costs seconds at 2,000 triggers and hours at a million: it is capped."""
    def edit(claims):
        claims["defenses"]["watermark"]["trigger_count"] = 2000
    result = appraise(cardkit.forge(kit, mutate_claims=edit), policy=policy)
    check = result.get("watermark_power")
    assert check.status == WARNING and check.reason.startswith("not computed")
    assert check.field == "claims.defenses.watermark.trigger_count"


@pytest.mark.parametrize("old, new, why", [
    (b"\x2a\x86\x48\xce\x3d\x02\x01", b"\x2a\x86\x48\xce\x3d\x0a\x01", "not an ECDSA P-256 key"),
    (b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x06", "not valid DER X.509"),
])
def test_unreadable_ak_certificate_is_a_check_not_an_exception(kit, policy, old, new, why):
    """Key-algorithm OID changed / X.509 version 7: `cryptography` raises neither as ValueError."""
    def edit(evidence):
        assert old in evidence["cert_chain"][0]
        evidence["cert_chain"][0] = evidence["cert_chain"][0].replace(old, new, 1)
    result = appraise(cardkit.forge(kit, mutate_evidence=edit), policy=policy)
    failed = _rejected_by(result, "cert_chain", why)
    assert failed["cert_chain"].field == "evidence.cert_chain[0]"


def _quote_edit(**changes):
    def edit(info):
        for key, value in changes.items():
            if value is None:
                del info[key]
            else:
                info[key] = value
        return cbor.dumps(info)
    return edit


@pytest.mark.parametrize("edit,field,reason", [
    (_quote_edit(counter=True), "evidence.quote.counter", "expected int, got bool"),
    (_quote_edit(version=None), "evidence.quote.version", "expected int, got NoneType"),
    (_quote_edit(zone="x"), "evidence.quote", "unknown field zone"),
    (_quote_edit(version=2), "evidence.quote", "not a version 1 sim quote"),
    (_quote_edit(registers=[23, 16]), "evidence.quote.registers", "distinct register indices"),
    (_quote_edit(registers=[16, 16]), "evidence.quote.registers", "distinct register indices"),
    (_quote_edit(registers=[16, 24]), "evidence.quote.registers", "distinct register indices"),
    (_quote_edit(registers=[-1, 16]), "evidence.quote.registers", "distinct register indices"),
    (_quote_edit(registers=[True, 16]), "evidence.quote.registers", "distinct register indices"),
    (_quote_edit(registers=[]), "evidence.quote.registers", "distinct register indices"),
    (_quote_edit(register_digest=bytes(31)), "evidence.quote.register_digest", "32 bytes"),
    (lambda info: b"\xb9\x00\x09" + cbor.dumps(info)[1:], "evidence.quote",
     "not deterministically encoded"),
])
def test_quote_signed_by_the_device_but_malformed(kit, policy, edit, field, reason):
    """A device that signs what it is given (the attacker runs software on it) cannot
    pass a quote that is not a well-formed version 1 QuoteInfo."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    quote = edit(cardkit.quote_info(kit.card_bytes))
    r, s = decode_dss_signature(kit.device._ak_key.sign(quote, ec.ECDSA(hashes.SHA256())))

    def requote(evidence):
        evidence["quote"], evidence["signature"] = quote, r.to_bytes(32, "big") + s.to_bytes(32, "big")
    result = appraise(cardkit.forge(kit, mutate_evidence=requote), policy=policy)
    failed = _rejected_by(result, "quote_signature", reason)
    assert failed["quote_signature"].field == field
    assert result.get("log_replay").status == SKIPPED


# --- transparency_receipt: the log receipt embedded in the card ---------------------------

def _log_receipt(card_bytes, log_key, *, bend=False):
    """A receipt of ``card_bytes`` as leaf 1 of a 3-leaf log signed by ``log_key``; with
    ``bend``, the first path hash altered (what a forger without the log key can do)."""
    from cards import merkle
    from verifier.receipts import make_receipt
    leaves = [merkle.leaf_hash(b"before"), merkle.leaf_hash(card_bytes), merkle.leaf_hash(b"after")]
    path = merkle.inclusion_proof(leaves, 1)
    if bend:
        path[0] = bytes(32)
    return make_receipt(log_key, 3, 1, path, merkle.root_of(leaves))


def test_embedded_receipt_verifies_with_the_log_key(kit, policy):
    from cards.card import with_receipts
    log_key = keys.generate_private_key("ed25519")
    statement = with_receipts(kit.card_bytes, [_log_receipt(kit.card_bytes, log_key)])
    result = appraise(statement, policy=policy, log_key=log_key.public_key())
    assert result.exit_code == 0, result.to_table()
    assert any(c.check == "transparency_receipt" and c.status == AFFIRMING
               for c in result.checks)


def test_altered_embedded_receipt_is_contraindicated(kit, policy):
    from cards.card import with_receipts
    log_key = keys.generate_private_key("ed25519")
    statement = with_receipts(kit.card_bytes, [_log_receipt(kit.card_bytes, log_key, bend=True)])
    failed = _rejected_by(appraise(statement, policy=policy, log_key=log_key.public_key()),
                          "transparency_receipt", "does not cover the root")
    assert failed["transparency_receipt"].field == "card.unprotected.394[0]"
