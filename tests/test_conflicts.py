"""The conflicts table and the verifier's `conflicts` check: every row fires on a card
that carries its pair with a damaged figure, names the card's own value, and stays
silent on a card without the pair."""
import copy
import json

import pytest

import cardkit
from cards.errors import LaminateError
from verifier import conflicts
from verifier.appraise import appraise
from verifier.policy import Policy
from verifier.result import AFFIRMING, CONTRAINDICATED, WARNING

TABLE = conflicts.load_table()
DP = cardkit.dp_claim()
WATERMARK = {"scheme": "laminate-trigger-v1", "commitment": "0" * 64, "trigger_count": 100,
             "classes": 10, "schedule": "joint"}


def _claims(defenses: list[str], **fields) -> dict:
    """Minimal claims carrying `defenses`, with dotted `fields` set (e.g. evaluation.x)."""
    claims = {"defenses": {"dp": DP if "dp" in defenses else None,
                           "watermark": dict(WATERMARK) if "watermark" in defenses else None},
              "evaluation": {"watermark_accuracy": 0.2 if "watermark" in defenses else None}}
    if "adversarial" in defenses:
        claims["defenses"]["adversarial"] = dict(cardkit.ADVERSARIAL)
    if "radioactive" in defenses:
        claims["defenses"]["radioactive"] = {"p_value": 0.5, "loss_difference": 0.004}
    for dotted, value in fields.items():
        *path, last = dotted.split("__")
        node = claims
        for step in path:
            node = node[step]
        node[last] = value
    return claims


def _claims_for(row: dict, value: float) -> dict:
    claims = _claims(row["defenses"])
    for dotted, wanted in row["where"].items():
        claims = _set(claims, dotted, wanted)
    return _set(claims, row["figure"], value)


def _set(claims, dotted, value):
    claims = copy.deepcopy(claims)
    *path, last = dotted.split(".")
    node = claims
    for step in path:
        node = node[step]
    node[last] = value
    return claims


def _undermined_value(row) -> float:
    """A figure on the undermined side of the row's threshold (any, without one)."""
    below, above = row["undermined_below"], row.get("undermined_above")
    return above + 0.12 if above is not None else 0.123 if below is None else below - 0.077


def _held_value(row) -> float:
    above = row.get("undermined_above")
    return above / 10 if above is not None else row["undermined_below"] + 0.01


@pytest.mark.parametrize("row", TABLE, ids=[r["id"] for r in TABLE])
def test_each_row_warns_naming_the_cards_value(row):
    value = _undermined_value(row)
    checks = conflicts.check_conflicts(_claims_for(row, value))
    mine = [c for c in checks if row["id"] in c.reason or f"{value:.2f}" in c.reason]
    assert mine, f"row {row['id']} did not fire: {checks}"
    assert mine[0].status == WARNING
    assert mine[0].field == f"claims.{row['figure']}"
    assert f"{value:.2f}" in mine[0].reason, "the warning must name the card's measured value"


@pytest.mark.parametrize("row", [r for r in TABLE if r["undermined_below"] is not None
                                 or r.get("undermined_above") is not None], ids=lambda r: r["id"])
def test_row_with_threshold_affirms_when_the_figure_held(row):
    checks = conflicts.check_conflicts(_claims_for(row, _held_value(row)))
    mine = [c for c in checks if c.field == f"claims.{row['figure']}"]
    assert mine and all(c.status == AFFIRMING for c in mine), checks


@pytest.mark.parametrize("defenses", [[], ["dp"], ["watermark"], ["adversarial"], ["radioactive"],
                                      ["radioactive", "watermark"]])
def test_no_pair_no_conflicts_check(defenses):
    assert conflicts.check_conflicts(_claims(defenses)) == []


def test_every_row_cites_its_source():
    for row in TABLE:
        assert row["published"]["source"] and row["ours"]["source"], row["id"]


def test_dp_joint_watermark_message_is_the_measured_one():
    checks = conflicts.check_conflicts(_claims(["dp", "watermark"]))
    assert [c.status for c in checks] == [WARNING]
    assert checks[0].reason.startswith(
        "DP-SGD with a joint watermark: watermark accuracy 0.20, ownership would not be shown")


def test_split_schedule_is_a_different_row():
    claims = _set(_claims(["dp", "watermark"]), "defenses.watermark.schedule", "split")
    (check,) = conflicts.check_conflicts(claims)
    assert "split watermark" in check.reason and "epsilon does not cover" in check.reason


def test_malformed_table_is_refused_naming_the_row(tmp_path):
    doc = {"conflicts": [dict(TABLE[0], defenses=["dp", "dataset-inference"])]}
    path = tmp_path / "conflicts.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(LaminateError, match=r"conflicts\[0\]\.defenses"):
        conflicts.load_table(path)


# --- through appraise, on real sealed cards ---------------------------------------------

def _conflict_checks(kit):
    result = appraise(kit.card_bytes, policy=Policy.load(kit.policy_path))
    return result, [c for c in result.checks if c.check == "conflicts"]


def test_appraise_warns_on_dp_with_a_failed_joint_watermark(tmp_path):
    kit = cardkit.make_card(tmp_path, evaluation={"watermark_accuracy": 0.2})
    _, checks = _conflict_checks(kit)
    assert [(c.status, c.field) for c in checks] == [
        (WARNING, "claims.evaluation.watermark_accuracy")]
    assert "watermark accuracy 0.20, ownership would not be shown" in checks[0].reason


def test_appraise_affirms_when_the_watermark_survived_dp(tmp_path):
    kit = cardkit.make_card(tmp_path)  # watermark accuracy 0.97 under DP
    _, checks = _conflict_checks(kit)
    assert [c.status for c in checks] == [AFFIRMING]


def test_appraise_gives_no_conflicts_check_without_a_pair(tmp_path):
    kit = cardkit.make_card(tmp_path, dp=None)
    result, checks = _conflict_checks(kit)
    assert checks == [] and result.checks


ADV_CONFIG = {**cardkit.CONFIG, "dp": {"enabled": False},
              "adversarial": {"enabled": True, "epsilon": 0.1, "step_size": 0.025, "steps": 10,
                              "train_fraction": 1.0}}


def test_appraise_warns_on_adversarial_training_with_a_watermark(tmp_path):
    kit = cardkit.make_card(tmp_path, dp=None, adversarial={"adversarial_accuracy": 0.62},
                            config=ADV_CONFIG)
    result, checks = _conflict_checks(kit)
    assert not [c for c in result.checks if c.status == CONTRAINDICATED], result.checks
    assert [(c.status, c.field) for c in checks] == [
        (WARNING, "claims.defenses.adversarial.adversarial_accuracy"),
        (AFFIRMING, "claims.evaluation.watermark_accuracy")]   # the kit's watermark: 0.97
    assert "adversarial accuracy 0.62" in checks[0].reason


def test_raised_figure_without_its_event_is_contraindicated(tmp_path):
    """Tamper: a prover lifts the watermark accuracy the conflicts check reads, so the
    warning would vanish; the claim no longer matches the measured evaluation event."""
    kit = cardkit.make_card(tmp_path, evaluation={"watermark_accuracy": 0.2})

    def lift(claims):
        claims["evaluation"]["watermark_accuracy"] = 0.97
    forged = cardkit.forge(kit, mutate_claims=lift, requote=True)
    result = appraise(forged, policy=Policy.load(kit.policy_path))
    bad = {c.check: c for c in result.checks if c.status == CONTRAINDICATED}
    assert bad["claims_in_log"].field == "claims.evaluation", bad


def test_lowered_adversarial_epsilon_without_its_event_is_contraindicated(tmp_path):
    """Tamper: the adversarial claim is bound by its own event like every defense."""
    kit = cardkit.make_card(tmp_path, dp=None, adversarial={}, config=ADV_CONFIG)

    def edit(claims):
        claims["defenses"]["adversarial"]["adversarial_accuracy"] = 0.99
    forged = cardkit.forge(kit, mutate_claims=edit, requote=True)
    result = appraise(forged, policy=Policy.load(kit.policy_path))
    bad = {c.check: c for c in result.checks if c.status == CONTRAINDICATED}
    assert bad["claims_in_log"].field == "claims.defenses.adversarial", bad


@pytest.mark.parametrize("config, claim, field", [
    ({**ADV_CONFIG, "adversarial": {**ADV_CONFIG["adversarial"], "epsilon": 0.3}}, {},
     "claims.defenses.adversarial.epsilon"),
    ({**ADV_CONFIG, "adversarial": {"enabled": False}}, {}, "claims.defenses.adversarial"),
    (ADV_CONFIG, None, "claims.defenses.adversarial"),
])
def test_adversarial_config_disagreeing_with_the_claim(tmp_path, config, claim, field):
    """Tamper: a claim of a larger epsilon than the config trained with, a claim the
    config never enabled, a config that enabled it with no claim."""
    kit = cardkit.make_card(tmp_path, dp=None, adversarial=claim, config=config)
    result = appraise(kit.card_bytes, policy=Policy.load(kit.policy_path))
    bad = {c.check: c for c in result.checks if c.status == CONTRAINDICATED}
    assert bad["adversarial_config"].field == field, result.checks


def test_appraise_warns_when_adversarial_training_erased_the_watermark(tmp_path):
    kit = cardkit.make_card(tmp_path, dp=None, adversarial={},
                            evaluation={"watermark_accuracy": 0.34}, config=ADV_CONFIG)
    _, checks = _conflict_checks(kit)
    wm = [c for c in checks if c.field == "claims.evaluation.watermark_accuracy"]
    assert [c.status for c in wm] == [WARNING]
    assert wm[0].reason.startswith("adversarial training with a joint watermark: watermark "
                                   "accuracy 0.34, ownership would not be shown")


# --- radioactive data: detection confidence against DP-SGD and adversarial training ------

RADIO_CONFIG = {**cardkit.CONFIG, "radioactive": cardkit.RADIOACTIVE_CONFIG}
# Cosines a model that did not learn the marks gives: the combined p-value is not small.
LOST = (0.05, -0.1, 0.12, 0.0, -0.03, 0.08, 0.02, -0.06, 0.1, 0.01)


# DP beside radioactive data is not tight: the marking network saw the split without DP.
NOT_TIGHT = {"dp": {"privacy_accounting": "not tight", "note": "radioactive marks"}}


@pytest.mark.parametrize("row_id, kit_args", [
    ("radioactive-dp", dict(NOT_TIGHT)),
    ("radioactive-adversarial", {"dp": None, "adversarial": {},
                                 "config": {**ADV_CONFIG, "radioactive": cardkit.RADIOACTIVE_CONFIG}}),
])
def test_appraise_warns_when_a_defense_erased_the_radioactive_mark(tmp_path, row_id, kit_args):
    """The card's own p-value and loss difference are named in the warning."""
    from cards import radioactive

    p = radioactive.combined_p_value(LOST, cardkit.FEATURES)
    kit = cardkit.make_card(tmp_path, watermark_claim=None, config=kit_args.pop("config", RADIO_CONFIG),
                            radioactive={"cosines": list(LOST), "p_value": p, "loss_difference": 0.002},
                            **kit_args)
    result, checks = _conflict_checks(kit)
    assert not [c for c in result.checks if c.status == CONTRAINDICATED], result.checks
    mine = [c for c in checks if c.field == "claims.defenses.radioactive.p_value"]
    assert [c.status for c in mine] == [WARNING], checks
    assert "detection confidence lost" in mine[0].reason
    assert f"p-value {p:.3g}" in mine[0].reason and "loss difference 0.002" in mine[0].reason
    assert "published: 0.284 alone" in mine[0].reason


def test_appraise_affirms_when_the_radioactive_mark_survived_dp(tmp_path):
    kit = cardkit.make_card(tmp_path, watermark_claim=None, config=RADIO_CONFIG, radioactive={},
                            **NOT_TIGHT)
    _, checks = _conflict_checks(kit)
    assert [(c.status, c.field) for c in checks] == [(AFFIRMING, "claims.defenses.radioactive.p_value")]
    assert "the mark survived DP-SGD" in checks[0].reason


def test_radioactive_without_dp_or_adversarial_gives_no_conflicts_check(tmp_path):
    kit = cardkit.make_card(tmp_path, dp=None, watermark_claim=None, radioactive={},
                            config={**RADIO_CONFIG, "dp": {"enabled": False}})
    result, checks = _conflict_checks(kit)
    assert checks == [] and not [c for c in result.checks if c.status == CONTRAINDICATED], result.checks


def test_table_refuses_both_thresholds(tmp_path):
    row = next(r for r in TABLE if r["id"] == "radioactive-dp")
    path = tmp_path / "conflicts.json"
    path.write_text(json.dumps({"conflicts": [dict(row, undermined_below=0.5)]}))
    with pytest.raises(LaminateError, match=r"conflicts\[0\]: undermined_below and undermined_above"):
        conflicts.load_table(path)
