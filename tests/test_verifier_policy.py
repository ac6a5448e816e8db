"""Policy loading and the predicate language: strict, safe, and explicit about errors."""
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cards.errors import LaminateError
from verifier import predicates
from verifier.policy import Policy
from verifier.result import AFFIRMING, CONTRAINDICATED, SKIPPED, WARNING, Check, Result

CLAIMS = {
    "defenses": {"dp": {"epsilon": 2.5, "privacy_accounting": "tight"}, "watermark": None},
    "evaluation": {"accuracy": 0.93, "per_class_accuracy": [0.9, 0.95, 0.81],
                   "watermark_accuracy": None},
    "model": {"name": "digits", "parameters": 1200},
    "flags": {"on": True},
}


@pytest.mark.parametrize("text, holds", [
    ("defenses.dp.epsilon <= 3", True),
    ("defenses.dp.epsilon <= 2", False),
    ("defenses.dp.epsilon < 2.5", False),
    ("evaluation.accuracy >= 0.9", True),
    ("evaluation.accuracy > 9e-1", True),
    ("min(evaluation.per_class_accuracy) >= 0.85", False),
    ("max(evaluation.per_class_accuracy) >= 0.95", True),
    ("len(evaluation.per_class_accuracy) == 3", True),
    ("evaluation.per_class_accuracy.2 < 0.85", True),
    ("defenses.watermark == null", True),
    ("defenses.watermark != null", False),
    ("defenses.dp.privacy_accounting == 'tight'", True),
    ('defenses.dp.privacy_accounting in ["tight"]', True),
    ('model.name not in ["digits", "mnist"]', False),
    ("flags.on == true", True),
    ("flags.on == 1", False),              # a boolean is not the number 1
    ("model.parameters == 1200.0", True),
])
def test_predicates_evaluate(text, holds):
    ok, reason = predicates.parse(text).evaluate(CLAIMS)
    assert ok is holds, reason
    assert reason


@pytest.mark.parametrize("text, why", [
    ("defenses.dp.epsilon", "comparison"),
    ("defenses.dp.epsilon <=", "missing the value"),
    ("__import__('os').system('true') == 0", "cannot read"),
    ("true == true", "must start with a claim path"),
    ("defenses.dp.epsilon <= 3 or 1 == 1", "unexpected"),
    ("evaluation.accuracy >= abc", "is not a value"),
    ("evaluation.accuracy in 3", "needs a list"),
    ("evaluation.accuracy <= null", "number or a string"),
    ("evaluation.accuracy; rm -rf / <= 3", "cannot read"),
    ("", "non-empty"),
    ("len(1) == 3", "claim path"),
])
def test_predicates_reject_bad_syntax(text, why):
    with pytest.raises(predicates.PredicateError, match=why):
        predicates.parse(text)


def test_predicate_on_missing_or_wrong_type_is_violated_with_reason():
    ok, reason = predicates.parse("defenses.watermark.trigger_count >= 100").evaluate(CLAIMS)
    assert not ok and "not in the card" in reason
    ok, reason = predicates.parse("model.name <= 3").evaluate(CLAIMS)
    assert not ok and "not comparable" in reason
    ok, reason = predicates.parse("min(model.name) >= 0").evaluate(CLAIMS)
    assert not ok and "list of numbers" in reason


def _write_key(path):
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    path.write_bytes(key.public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    return key


def test_policy_default_trusts_nothing():
    p = Policy.default()
    assert p.allow_backends == ("tpm",)
    assert p.trusted_roots == () and p.release_keys == {} and p.reference_values.code == ()
    assert p.ownership.alpha == 1e-6 and p.ownership.min_power == 0.9


def test_policy_load_resolves_paths_relative_to_the_file(tmp_path):
    sub = tmp_path / "conf"
    sub.mkdir()
    key = _write_key(sub / "release.pub.pem")
    (sub / "policy.yaml").write_text(
        "policy_id: lab\nallow_backends: [sim, tpm]\ntrusted_release_keys: [release.pub.pem]\n"
        f"reference_values: {{code: ['{'AB' * 32}']}}\n"
        "require: ['defenses.dp.epsilon   <= 3']\n"
        "ownership: {alpha: 1e-9, min_power: 0.8}\ndp: {epsilon_tolerance: 0.01}\n")
    p = Policy.load(sub / "policy.yaml")
    from cards import keys
    assert p.policy_id == "lab" and p.allow_backends == ("sim", "tpm")
    assert list(p.release_keys) == [keys.key_id(key)]
    assert p.reference_values.code == ("ab" * 32,)
    assert p.require == ("defenses.dp.epsilon <= 3",)
    assert p.ownership.alpha == 1e-9 and p.ownership.min_power == 0.8
    assert p.dp.epsilon_tolerance == 0.01


def test_policy_accepts_inline_pem(tmp_path):
    key = _write_key(tmp_path / "k.pem")
    pem = (tmp_path / "k.pem").read_text()
    p = Policy.from_mapping({"trusted_release_keys": [pem]}, source="inline")
    from cards import keys
    assert keys.key_id(key) in p.release_keys


@pytest.mark.parametrize("body, message", [
    ("allow_backend: [sim]\n", "allow_backend: unknown policy key"),
    ("ownership: {alpa: 0.1}\n", "ownership.alpa: unknown policy key"),
    ("allow_backends: [sgx]\n", "unknown backend 'sgx'"),
    ("trusted_roots: [missing.pem]\n", "trusted_roots[0]: file"),
    ("trusted_release_keys: [bad.pem]\n", "trusted_release_keys[0]: not a PEM public key"),
    ("reference_values: {code: [abc]}\n", "reference_values.code[0]"),
    ("require: ['evaluation.accuracy >= ']\n", "require[0]"),
    ("ownership: {alpha: 0}\n", "ownership.alpha: must be in"),
    ("ownership: {min_power: high}\n", "ownership.min_power: expected a number"),
    ("- just\n- a list\n", "expected a mapping"),
    ("key: [unclosed\n", "not valid YAML"),
])
def test_policy_errors_name_key_and_file(tmp_path, body, message):
    (tmp_path / "bad.pem").write_text("not a key")
    path = tmp_path / "policy.yaml"
    path.write_text(body)
    with pytest.raises(LaminateError) as err:
        Policy.load(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_policy_missing_file_and_directory(tmp_path):
    with pytest.raises(LaminateError, match="not found"):
        Policy.load(tmp_path / "nope.yaml")
    with pytest.raises(LaminateError, match="not a regular file"):
        Policy.load(tmp_path)


def test_result_status_tier_and_table():
    r = Result([Check("card_format", AFFIRMING, "card", "ok"),
                Check("model_digest", WARNING, "claims.model.sha256", "no model given")],
               policy_id="p", backend="sim", simulated=True)
    assert (r.status, r.tier, r.exit_code) == (WARNING, 32, 0)
    table = r.to_table()
    assert "SIMULATED HARDWARE" in table and "backend sim" in table
    assert len(table.splitlines()) == 2 + 1 + 2
    r.checks.append(Check("quote_signature", CONTRAINDICATED, "evidence.signature", "bad"))
    r.checks.append(Check("log_replay", SKIPPED, "evidence.event_log", "not checked"))
    assert (r.status, r.tier, r.exit_code) == (CONTRAINDICATED, 96, 1)
    assert [c.check for c in r.failed()] == ["quote_signature"]
    d = r.to_dict()
    assert d["status"] == "contraindicated" and d["simulated"] is True and len(d["checks"]) == 4
