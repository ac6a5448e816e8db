"""Appraisal checks the tamper matrix did not reach, each broken by exactly one change.

The forgeries that matter here are consistent ones: claims and the events that measure
them edited together and re-quoted on the device the attacker runs software on, so only
the check under test stands between the forgery and an affirming result.
"""
import pytest
import yaml

import cardkit
from cards import schema
from cards.errors import LaminateError
from verifier import dp_check
from verifier.appraise import appraise
from verifier.policy import Policy
from verifier.result import AFFIRMING, CONTRAINDICATED, SKIPPED, WARNING, Check


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return cardkit.make_card(tmp_path_factory.mktemp("kit"))


@pytest.fixture(scope="module")
def policy(kit):
    return Policy.load(kit.policy_path)


def _policy(kit, **changes):
    doc = yaml.safe_load(kit.policy_path.read_text())
    doc.update(changes)
    return Policy.from_mapping(doc, base_dir=kit.policy_path.parent, source="test-policy")


def _consistent(kit, edit):
    """Claims edited, every event re-measured from them, the log re-quoted: a card only
    the checks that compare claims with something outside the card can refuse."""
    def events(log):
        for event in log:
            event["data"] = schema.claim_for_event(claims_box[0], event["type"])
    claims_box = []

    def claims(c):
        edit(c)
        claims_box.append(c)
    return cardkit.forge(kit, mutate_claims=claims, mutate_events=events, requote=True)


def _only_failure(result, name, field, reason):
    failed = {c.check: c for c in result.failed()}
    assert set(failed) == {name}, result.to_table()
    assert (failed[name].field, failed[name].reason) == (field, reason)
    return failed[name]


def test_event_in_a_register_the_quote_does_not_cover(kit, policy):
    """The model event moved to register 17, which the quote leaves out: replaying only
    the quoted registers would reproduce the quote exactly."""
    def move(log):
        log[-1]["register"] = 17
    result = appraise(cardkit.forge(kit, mutate_events=move, requote=True), policy=policy,
                      model_path=kit.model_path)
    check = result.get("log_replay")
    assert check.status == CONTRAINDICATED
    last = len(kit.evidence["event_log"]) - 1
    assert check.field == f"evidence.event_log[{last}].register"
    assert check.reason == "event 'model' extends register 17, which the quote does not cover"
    assert result.get("claims_in_log").reason == "not checked: log replay failed"


def test_config_digest_that_is_not_the_config_digest(kit, policy):
    def edit(claims):
        claims["training"]["config_sha256"] = "ab" * 32
    result = appraise(_consistent(kit, edit), policy=policy, model_path=kit.model_path)
    assert result.get("log_replay").status == AFFIRMING
    _only_failure(result, "claims_in_log", "claims.training.config_sha256",
                  "is not H(dcbor(config))")


def test_model_size_that_differs_from_the_file(kit, policy):
    """The right digest with the wrong size: only the size comparison notices."""
    size = kit.model_path.stat().st_size

    def edit(claims):
        claims["model"]["size"] = size + 1
    result = appraise(_consistent(kit, edit), policy=policy, model_path=kit.model_path)
    _only_failure(result, "model_digest", "claims.model.size",
                  f"model file model.onnx has {size} bytes, the card says {size + 1}")
    # a bare digest carries no size, so the same card matches it
    digest = kit.claims["model"]["sha256"]
    by_digest = appraise(_consistent(kit, edit), policy=policy, model_sha256=digest.upper())
    assert by_digest.get("model_digest").status == AFFIRMING


def test_model_file_and_digest_both_checked(kit, policy):
    other = "0" * 64
    result = appraise(kit.card_bytes, policy=policy, model_path=kit.model_path,
                      model_sha256=other)
    _only_failure(result, "model_digest", "claims.model.sha256",
                  f"given model digest has sha256 {other[:16]}..., the card says "
                  f"{kit.claims['model']['sha256'][:16]}...")
    both = appraise(kit.card_bytes, policy=policy, model_path=kit.model_path,
                    model_sha256=f"  {kit.claims['model']['sha256']}\n")
    assert both.get("model_digest").reason == \
        "model file model.onnx and given model digest match the measured model"


def test_caller_mistakes_about_the_model_raise(kit, policy, tmp_path):
    with pytest.raises(LaminateError, match=r"absent\.onnx: model file not found$"):
        appraise(kit.card_bytes, policy=policy, model_path=tmp_path / "absent.onnx")
    with pytest.raises(LaminateError, match=r": model is not a regular file$"):
        appraise(kit.card_bytes, policy=policy, model_path=tmp_path)
    with pytest.raises(LaminateError, match=r"^--model-sha256: expected 64 hex digits, got 'abc'$"):
        appraise(kit.card_bytes, policy=policy, model_sha256="abc")


def test_policy_that_pins_no_code(kit):
    result = appraise(kit.card_bytes, policy=_policy(kit, reference_values={"code": []}),
                      model_path=kit.model_path)
    check = result.get("code_identity")
    assert (check.status, check.field) == (CONTRAINDICATED, "claims.training.code.wrapper_sha256")
    assert check.reason == (f"policy cardkit pins no code reference values; wrapper code "
                            f"{kit.code_sha256[:16]}... is unknown")


@pytest.mark.parametrize("change, reason", [
    ({"delta": 1.0}, "delta 1.0 must be in (0, 1)"),
    ({"noise_multiplier": 0.0}, "noise_multiplier 0.0 must be a positive number"),
    ({"sample_rate": 0.0}, "sample_rate 0.0 must be in (0, 1]"),
])
def test_dp_parameters_no_dp_sgd_run_has(kit, policy, change, reason):
    """Values the card's schema admits at its closed ends, refused by the DP check."""
    def edit(claims):
        claims["defenses"]["dp"].update(change)
    result = appraise(_consistent(kit, edit), policy=policy, model_path=kit.model_path)
    check = result.get("dp_epsilon")     # dp_config and dp_delta may refuse the value too
    assert (check.status, check.field, check.reason) == (CONTRAINDICATED, "claims.defenses.dp",
                                                         reason)


@pytest.mark.parametrize("change, reason", [
    ({"sample_rate": 1.5}, "sample_rate 1.5 must be in (0, 1]"),
    ({"sample_rate": "0.5"}, "sample_rate '0.5' must be in (0, 1]"),
    ({"noise_multiplier": float("inf")}, "noise_multiplier inf must be a positive number"),
    ({"noise_multiplier": -1.0}, "noise_multiplier -1.0 must be a positive number"),
    ({"steps": -1}, "steps -1 must be a non-negative integer"),
    ({"steps": 1.0}, "steps 1.0 must be a non-negative integer"),
    ({"delta": 0.0}, "delta 0.0 must be in (0, 1)"),
    ({"delta": None}, "delta None must be in (0, 1)"),
    ({"accountant": "prv"}, "accountant 'prv' is not supported (only 'rdp')"),
    ({"sample_rate": 1.0, "steps": 0, "delta": 0.5}, None),
])
def test_dp_parameter_check_on_its_own(change, reason):
    """The card schema already bounds most of these: the check must hold without it."""
    assert dp_check.check_parameters({**cardkit.dp_claim(), **change}) == reason


def test_watermark_without_a_measured_accuracy(kit, policy):
    def edit(claims):
        claims["evaluation"]["watermark_accuracy"] = None
    result = appraise(_consistent(kit, edit), policy=policy, model_path=kit.model_path)
    check = result.get("watermark_power")
    assert (check.status, check.field) == (WARNING, "claims.evaluation.watermark_accuracy")
    assert check.reason == "no measured watermark accuracy: ownership could not be shown"
    assert result.failed() == []


@pytest.mark.parametrize("predicate, field, reason", [
    ("min(evaluation.per_class_accuracy) >= 0.5", "claims.evaluation.per_class_accuracy",
     "min() of an empty list: claims.evaluation.per_class_accuracy has no values"),
    ("evaluation.per_class_accuracy.0 >= 0.5", "claims.evaluation.per_class_accuracy.0",
     "claims.evaluation.per_class_accuracy.0 is not in the card"),
])
def test_predicate_over_an_empty_list_is_a_policy_check(kit, predicate, field, reason):
    def edit(claims):
        claims["evaluation"]["per_class_accuracy"] = []
    policy = _policy(kit, require=[predicate])
    result = appraise(_consistent(kit, edit), policy=policy, model_path=kit.model_path)
    _only_failure(result, f"policy:{predicate}", field, reason)


def test_predicate_past_the_end_of_a_list_is_a_policy_check(kit):
    predicate = "evaluation.per_class_accuracy.10 >= 0.5"     # the kit has 10 classes
    result = appraise(kit.card_bytes, policy=_policy(kit, require=[predicate]),
                      model_path=kit.model_path)
    _only_failure(result, f"policy:{predicate}", "claims.evaluation.per_class_accuracy.10",
                  "claims.evaluation.per_class_accuracy.10 is not in the card")


def test_accountant_version_is_named_in_the_dp_check(kit, policy):
    check = appraise(kit.card_bytes, policy=policy).get("dp_epsilon")
    assert check.status == AFFIRMING
    assert f"matches Opacus {dp_check.opacus_version()} RDP analysis" in check.reason


@pytest.mark.parametrize("edit, index, reason", [
    (lambda log: log[:-1], 8, "expected event 'model', got the end of the log"),
    (lambda log: log.append(dict(log[-1])), 9, "expected event no further event, got 'model'"),
    (lambda log: log.insert(3, log.pop(4)), 3, "expected event 'dataset.test', got 'start'"),
    (lambda log: log.insert(0, log.pop(1)), 0, "the first event must measure the code, got 'config'"),
])
def test_event_sequence_that_differs_from_the_claims(kit, policy, edit, index, reason):
    """Events dropped, repeated or reordered, the log re-quoted so that it replays."""
    assert [e["type"] for e in kit.evidence["event_log"]][:6] == \
        ["code", "config", "dataset.train", "dataset.test", "start", "defense.dp"]
    result = appraise(cardkit.forge(kit, mutate_events=edit, requote=True), policy=policy,
                      model_path=kit.model_path)
    assert result.get("log_replay").status == AFFIRMING
    _only_failure(result, "claims_in_log", f"evidence.event_log[{index}].type", reason)


@pytest.mark.parametrize("edit, reason", [
    (lambda ev: ev.__setitem__("signature", bytes(64)), "not checked: quote signature failed"),
])
def test_checks_that_depend_on_the_quote_say_why_they_did_not_run(kit, policy, edit, reason):
    result = appraise(cardkit.forge(kit, mutate_evidence=edit), policy=policy)
    for name in ("qualifying_data", "log_replay", "claims_in_log"):
        assert (result.get(name).status, result.get(name).reason) == (SKIPPED, reason)


def test_a_broken_chain_stops_the_quote_dependent_checks(kit, policy):
    """A chain that fails (X.509 version 7) ends appraisal: nothing after it runs."""
    def edit(ev):
        ev["cert_chain"][0] = ev["cert_chain"][0].replace(
            b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x06", 1)
    result = appraise(cardkit.forge(kit, mutate_evidence=edit), policy=policy)
    assert result.get("cert_chain").status == CONTRAINDICATED
    assert result.get("remaining_checks").status == SKIPPED
    assert all(result.get(name) is None for name in ("qualifying_data", "log_replay", "claims_in_log"))


def test_reasons_name_the_key_and_code_by_their_digest_prefix(kit, policy):
    """The reasons quote 16 hex digits of the kid and of the wrapper digest: enough to
    tell keys and builds apart in a log, short enough to read."""
    from cards import keys
    kid = keys.key_id(kit.private_key.public_key()).hex()
    result = appraise(kit.card_bytes, policy=policy)
    assert result.get("release_signature").reason == f"signed by trusted release key {kid[:16]}..."
    assert result.get("code_identity").reason == \
        f"wrapper code {kit.code_sha256[:16]}... is a reference value of policy cardkit"
    untrusted = appraise(kit.card_bytes, policy=_policy(kit, trusted_release_keys=[]))
    assert untrusted.get("release_signature").reason == \
        f"release key {kid[:16]}... is not trusted by policy cardkit"
    refused = appraise(kit.card_bytes, policy=_policy(kit, reference_values={"code": ["ab" * 32]}))
    assert refused.get("code_identity").reason == \
        f"wrapper code {kit.code_sha256[:16]}... is not a reference value of policy cardkit"


def test_card_format_failure_keeps_the_readers_field(kit, policy):
    from cards import cose
    from cards.card import open_card
    from cards.errors import CardFormatError
    short_kid = cose.sign1(cose.parse_sign1(kit.card_bytes).payload, kit.private_key,
                           kid=b"short")
    with pytest.raises(CardFormatError) as err:
        open_card(short_kid)
    assert err.value.field not in (None, "card")
    check = appraise(short_kid, policy=policy).get("card_format")
    assert (check.status, check.field, check.reason) == \
        (CONTRAINDICATED, err.value.field, err.value.reason)


def test_sim_card_under_a_policy_without_sim_gets_no_simulator_warning(kit):
    """The release key is trusted and appraisal runs to the end, but the policy does not
    allow the simulator: the backend check refuses it, and the warning meant for an
    allowed simulator card is not added on top."""
    result = appraise(kit.card_bytes, policy=_policy(kit, allow_backends=["tpm"]),
                      model_path=kit.model_path)
    assert result.get("release_signature").status == AFFIRMING
    assert result.get("backend").status == CONTRAINDICATED, result.to_table()
    assert result.get("simulated_hardware") is None, result.to_table()
    # A refused backend does not stop appraisal: only the release signature does.
    assert result.get("remaining_checks") is None, result.to_table()
    assert result.get("code_identity").status == AFFIRMING


def test_dp_claim_the_measured_config_does_not_imply_is_reported(kit, policy):
    """A sample rate the config's batch size does not give: the dp_config check must
    appear in the result and name the field (check_config's refusal reaches appraise)."""
    def edit(claims):
        claims["defenses"]["dp"]["sample_rate"] = 0.5
    result = appraise(_consistent(kit, edit), policy=policy, model_path=kit.model_path)
    check = result.get("dp_config")
    assert check is not None, result.to_table()
    assert (check.status, check.field) == (CONTRAINDICATED, "claims.defenses.dp.sample_rate")
    assert check.reason.startswith("claims sample rate 0.5; "), check.reason
    assert all(c is not None for c in result.checks)


def test_untrusted_release_key_stops_appraisal_even_for_an_allowed_backend(kit):
    result = appraise(kit.card_bytes, policy=_policy(kit, trusted_release_keys=[]))
    assert result.get("backend").status == AFFIRMING
    check = result.get("remaining_checks")
    assert check is not None, result.to_table()
    assert (check.status, check.reason) == (
        SKIPPED, "not checked: release signature failed, so the card's claims are not evaluated")
    assert result.get("code_identity") is None and result.get("quote_signature") is None


@pytest.mark.parametrize("signature", [
    Check("quote_signature", SKIPPED, "evidence.signature", "not checked: collateral refused"),
    None,
])
def test_quote_dependent_checks_when_the_signature_was_not_checked(kit, policy, monkeypatch,
                                                                   signature):
    """A backend that returns no quote without refusing its signature (TDX skips it when
    the collateral is refused; another may report no signature check at all): the
    dependent checks say it was not checked, not that it failed."""
    from verifier import appraise as appraise_module
    chain = Check("cert_chain", AFFIRMING, "evidence.cert_chain", "trusted")
    returned = [chain] + ([signature] if signature else [])
    monkeypatch.setattr(appraise_module, "check_evidence", lambda evidence, pol: (returned, None))
    result = appraise(kit.card_bytes, policy=policy)
    for name in ("qualifying_data", "log_replay", "claims_in_log"):
        assert (result.get(name).status, result.get(name).reason) == \
            (SKIPPED, "not checked: quote signature not checked"), name


def test_card_without_a_watermark_gets_no_watermark_check(kit, policy):
    """No watermark claimed, its event dropped from the log: no watermark check runs."""
    def edit(claims):
        claims["defenses"]["watermark"] = None

    def drop(log):
        return [e for e in log if e["type"] != "defense.watermark"]
    card = cardkit.forge(kit, mutate_claims=edit, mutate_events=drop, requote=True)
    result = appraise(card, policy=policy, model_path=kit.model_path)
    assert result.get("card_format").status == AFFIRMING, result.to_table()
    assert result.get("claims_in_log").status == AFFIRMING, result.to_table()
    assert result.get("watermark_power") is None, result.to_table()
