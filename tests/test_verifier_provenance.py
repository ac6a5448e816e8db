"""What ran and what it started from, and the DP claim tied to the rest of the card.

Each check is attacked by changing exactly the thing it guards in an otherwise honest,
genuinely sealed card (tests/cardkit.py), and the failure must name the check and the
field. Cards are sealed, not forged, unless the test says otherwise: a dishonest provider
holds its own release key and runs the wrapper, so what it can change is what it feeds in.
"""
import copy
import hashlib

import pytest
import yaml

import cardkit
from cards.errors import LaminateError
from verifier.appraise import appraise
from verifier.policy import Policy
from verifier.result import AFFIRMING, CONTRAINDICATED, WARNING

EXTERNAL = {"kind": "external", "model_sha256": hashlib.sha256(b"victim.onnx").hexdigest(),
            "sha256": hashlib.sha256(b"victim weights").hexdigest()}
PARENT = {"kind": "parent", "card_sha256": hashlib.sha256(b"parent card").hexdigest(),
          "model_sha256": EXTERNAL["model_sha256"], "sha256": EXTERNAL["sha256"]}


def config(**dp):
    """The kit's config with DP section changes (the config the card measures)."""
    c = copy.deepcopy(cardkit.CONFIG)
    for key, value in dp.items():
        section, _, name = key.rpartition("__")
        c[section or "dp"][name] = value
    return c


def check(kit, name, **policy_changes):
    doc = yaml.safe_load(kit.policy_path.read_text())
    for key, value in policy_changes.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    policy = Policy.from_mapping(doc, base_dir=kit.policy_path.parent, source="test-policy")
    result = appraise(kit.card_bytes, policy=policy, model_path=kit.model_path)
    return result.get(name), result


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    return cardkit.make_card(tmp_path_factory.mktemp("honest"))


def test_honest_card_affirms_every_new_check(honest):
    for name in ("start", "entry_point", "libraries", "dp_config", "dp_delta",
                 "dp_non_dp_records", "privacy_accounting"):
        got, result = check(honest, name)
        assert got.status == AFFIRMING, got
    assert result.exit_code == 0


# --- start --------------------------------------------------------------------------------

def test_external_start_is_said_plainly_and_refused_when_an_attested_start_is_required(tmp_path):
    kit = cardkit.make_card(tmp_path, start=EXTERNAL,
                            dp={"privacy_accounting": "not tight"})
    got, result = check(kit, "start")
    assert got.status == WARNING and "handed in from outside" in got.reason
    assert result.exit_code == 0
    got, result = check(kit, "start", require_start=["random", "parent"])
    assert got.status == CONTRAINDICATED and got.field == "claims.start.kind"
    assert "start external is not accepted" in got.reason and result.exit_code == 1


def test_parent_start_is_accepted_as_lineage_but_not_when_only_random_is(tmp_path):
    kit = cardkit.make_card(tmp_path, start=PARENT, dp={"privacy_accounting": "not tight"})
    got, _ = check(kit, "start")
    assert got.status == AFFIRMING and PARENT["card_sha256"][:16] in got.reason
    got, _ = check(kit, "start", require_start=["random"])
    assert got.status == CONTRAINDICATED and got.field == "claims.start.kind"


# --- privacy accounting -----------------------------------------------------------------

def test_tight_accounting_from_an_external_start_is_contraindicated(tmp_path):
    """The DP claim must cover the initialisation: pre-trained weights saw records."""
    kit = cardkit.make_card(tmp_path, start=EXTERNAL)   # the DP claim still says "tight"
    got, _ = check(kit, "privacy_accounting")
    assert got.status == CONTRAINDICATED and got.field == "claims.defenses.dp.privacy_accounting"
    assert "started from external weights" in got.reason


def test_not_tight_accounting_warns_and_fails_under_require_tight(tmp_path):
    kit = cardkit.make_card(tmp_path, start=EXTERNAL, dp={"privacy_accounting": "not tight"})
    got, result = check(kit, "privacy_accounting")
    assert got.status == WARNING and "external weights" in got.reason and result.exit_code == 0
    got, result = check(kit, "privacy_accounting", dp={"require_tight": True})
    assert got.status == CONTRAINDICATED and "requires tight accounting" in got.reason
    assert result.exit_code == 1


# --- delta and the non-DP phase ------------------------------------------------------------

def test_delta_at_or_above_one_over_records_is_contraindicated_unless_the_policy_allows(tmp_path):
    """A large delta buys a small epsilon (an (eps, delta) mechanism may leak a record
    with probability delta); the kit trains on 60 records, so the bound is 1/60."""
    kit = cardkit.make_card(tmp_path, dp={"delta": 0.05}, config=config(delta=0.05))
    got, result = check(kit, "dp_delta")
    assert got.status == CONTRAINDICATED and got.field == "claims.defenses.dp.delta"
    assert "not below 1/records (1/60)" in got.reason
    assert result.get("dp_epsilon").status == AFFIRMING   # the epsilon itself is honest
    got, _ = check(kit, "dp_delta", dp={"max_delta": 0.05})
    assert got.status == AFFIRMING
    got, _ = check(kit, "dp_delta", dp={"max_delta": 0.01})
    assert got.status == CONTRAINDICATED and "exceeds the policy's dp.max_delta" in got.reason


def test_delta_just_below_the_bound_passes(tmp_path):
    kit = cardkit.make_card(tmp_path, dp={"delta": 1 / 61}, config=config(delta=1 / 61))
    assert check(kit, "dp_delta")[0].status == AFFIRMING


def _split(tmp_path, triggers):
    c = config()
    c["watermark"] = {"enabled": True, "trigger_count": triggers, "schedule": "split"}
    return cardkit.make_card(tmp_path, config=c, watermark_claim={"schedule": "split"},
                             dp={"privacy_accounting": "not tight",
                                 "non_dp_records": min(triggers, cardkit.TRAIN_RECORDS)})


def test_non_dp_phase_touching_every_record_is_bounded_by_policy(tmp_path):
    kit = _split(tmp_path, 1000)          # 1,000 triggers: the non-DP phase takes all 60 records
    assert check(kit, "dp_config")[0].status == AFFIRMING
    assert check(kit, "dp_non_dp_records")[0].status == AFFIRMING      # default bound 100
    got, result = check(kit, "dp_non_dp_records", dp={"max_non_dp_records": 10})
    assert got.status == CONTRAINDICATED and got.field == "claims.defenses.dp.non_dp_records"
    assert "touched 60 training records" in got.reason and result.exit_code == 1
    got, _ = check(kit, "privacy_accounting")
    assert got.status == WARNING and "non-DP phase touched 60" in got.reason


def test_tight_claim_with_a_non_dp_phase_is_contraindicated(tmp_path):
    c = config()
    c["watermark"] = {"enabled": True, "trigger_count": 5, "schedule": "split"}
    kit = cardkit.make_card(tmp_path, config=c, dp={"non_dp_records": 5})
    got, _ = check(kit, "privacy_accounting")
    assert got.status == CONTRAINDICATED and "non-DP phase touched 5" in got.reason


# --- the DP claim against the measured config and dataset --------------------------------

@pytest.mark.parametrize("dp,cfg,field,reason", [
    ({"sample_rate": 0.01}, {}, "sample_rate", "60 records in batches of 1 give 0.0166667"),
    ({"steps": 480}, {}, "steps", "16 epochs of 60 records in batches of 1 give 960"),
    ({"max_grad_norm": 5.0}, {}, "max_grad_norm", "the measured config says 1.0"),
    ({"noise_multiplier": 2.0}, {}, "noise_multiplier", "config fixes 1.1"),
    ({"delta": 1e-6}, {}, "delta", "the measured config says 1e-05"),
    ({}, {"target_epsilon": 1.0, "noise_multiplier": None}, "epsilon", "above the measured config's target_epsilon 1.0"),
    ({"non_dp_records": 3}, {}, "non_dp_records", "schedule touches 0"),
])
def test_dp_claim_that_disagrees_with_config_or_dataset_is_named(tmp_path, dp, cfg, field, reason):
    kit = cardkit.make_card(tmp_path, dp=dp, config=config(**cfg))
    got, result = check(kit, "dp_config")
    assert got.status == CONTRAINDICATED, got
    assert got.field == f"claims.defenses.dp.{field}" and reason in got.reason, got
    assert result.exit_code == 1


def test_target_epsilon_met_is_affirmed(tmp_path):
    kit = cardkit.make_card(tmp_path, config=config(target_epsilon=3.0, noise_multiplier=None))
    assert check(kit, "dp_config")[0].status == AFFIRMING


def test_dp_enabled_in_config_without_a_dp_claim_is_contraindicated(tmp_path):
    kit = cardkit.make_card(tmp_path, dp=None)
    got, _ = check(kit, "dp_config")
    assert got.status == CONTRAINDICATED and "carries no DP claim" in got.reason
    kit = cardkit.make_card(tmp_path / "off", dp=None, config=config(enabled=False))
    assert check(kit, "dp_config")[0] is None


def test_dp_claim_without_dp_in_config_is_contraindicated(tmp_path):
    kit = cardkit.make_card(tmp_path, config=config(enabled=False))
    got, _ = check(kit, "dp_config")
    assert got.status == CONTRAINDICATED and "does not enable DP" in got.reason


# --- entry point and libraries ------------------------------------------------------------

def test_no_entry_point_says_none_and_fails_when_required(tmp_path):
    kit = cardkit.make_card(tmp_path, entry_point=None)
    got, result = check(kit, "entry_point")
    assert got.status == WARNING and got.reason.startswith("entry point: none")
    got, result = check(kit, "entry_point", require_entry_point=True)
    assert got.status == CONTRAINDICATED and got.field == "claims.training.code.entry_point"
    assert result.exit_code == 1


def test_entry_point_pinned_by_digest(tmp_path):
    script = tmp_path / "train_honest.py"
    script.write_text("print('honest')\n")
    kit = cardkit.make_card(tmp_path / "kit", entry_point=script)
    digest = hashlib.sha256(script.read_bytes()).hexdigest()
    got, _ = check(kit, "entry_point", reference_values={"entry_point": [digest]})
    assert got.status == AFFIRMING and "is a reference value" in got.reason
    got, _ = check(kit, "entry_point", reference_values={"entry_point": ["0" * 64]})
    assert got.status == CONTRAINDICATED and got.field == "claims.training.code.entry_point.sha256"


def _with_libraries(kit, edit):
    def mutate(claims):
        edit(claims["training"]["code"]["libraries"])

    def follow(log):
        for event in log:
            if event["type"] == "code":
                edit(event["data"]["libraries"])
    return cardkit.forge(kit, mutate_claims=mutate, mutate_events=follow, requote=True)


def test_library_file_modified_on_disk_is_contraindicated(honest):
    forged = _with_libraries(honest, lambda libs: libs["opacus"]["modified"].append(
        "opacus/optimizers/optimizer.py"))
    policy = Policy.load(honest.policy_path)
    got = appraise(forged, policy=policy).get("libraries")
    assert got.status == CONTRAINDICATED
    assert got.field == "claims.training.code.libraries['opacus'].modified"
    assert "opacus/optimizers/optimizer.py" in got.reason


def test_libraries_pinned_by_record_digest(honest):
    libs = honest.claims["training"]["code"]["libraries"]
    pins = {name: [lib["record_sha256"]] for name, lib in libs.items()}
    assert check(honest, "libraries", reference_values={"libraries": pins})[0].status == AFFIRMING
    other = {**pins, "opacus": ["1" * 64]}
    got, _ = check(honest, "libraries", reference_values={"libraries": other})
    assert got.status == CONTRAINDICATED
    assert got.field == "claims.training.code.libraries['opacus'].record_sha256"
    got, _ = check(honest, "libraries", reference_values={"libraries": {"jax": ["1" * 64]}})
    assert got.status == CONTRAINDICATED and "pins jax but the card measured none" in got.reason


# --- policy keys ----------------------------------------------------------------------------

@pytest.mark.parametrize("doc,message", [
    ({"require_start": ["random", "magic"]}, "require_start: unknown start kind 'magic'"),
    ({"require_entry_point": "yes"}, "require_entry_point: expected true or false"),
    ({"dp": {"max_delta": 0}}, "dp.max_delta: must be in (0, 1]"),
    ({"dp": {"max_non_dp_records": -1}}, "dp.max_non_dp_records: expected a non-negative integer"),
    ({"dp": {"require_tight": 1}}, "dp.require_tight: expected true or false"),
    ({"reference_values": {"entry_point": ["xyz"]}}, "reference_values.entry_point[0]: expected a SHA-256"),
    ({"reference_values": {"libraries": ["opacus"]}}, "reference_values.libraries: expected a mapping"),
    ({"reference_values": {"libraries": {"opacus": ["no"]}}}, "reference_values.libraries.opacus[0]"),
])
def test_bad_policy_keys_are_named(doc, message):
    with pytest.raises(LaminateError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        Policy.from_mapping({"policy_id": "p", **doc})


def test_policy_defaults_accept_every_start_and_bound_the_non_dp_phase():
    p = Policy.from_mapping({"policy_id": "p"})
    assert p.require_start == ("random", "parent", "external") and not p.require_entry_point
    assert p.dp.max_delta is None and p.dp.max_non_dp_records == 100 and not p.dp.require_tight


def test_views_say_an_external_start_and_a_missing_entry_point_plainly(tmp_path):
    cardkit.make_card(tmp_path, start=EXTERNAL, entry_point=None,
                     dp={"privacy_accounting": "not tight"})
    text_md = (tmp_path / "card" / "card.md").read_text()
    text_yaml = (tmp_path / "card" / "card.yaml").read_text()
    assert "EXTERNAL weights handed in: the card does not say how they were made" in text_md
    assert "none (no script measured)" in text_md
    assert "# initial weights: external: EXTERNAL weights handed in" in text_yaml
    assert "# entry point: none (no script measured)" in text_yaml
    cardkit.make_card(tmp_path / "honest")
    text_yaml = (tmp_path / "honest" / "card" / "card.yaml").read_text()
    assert "# initial weights: random: drawn by the wrapper" in text_yaml
    assert "# entry point: none" not in text_yaml
