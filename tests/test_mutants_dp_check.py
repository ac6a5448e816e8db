"""The DP check where opacus is missing or broken, and at zero steps.

A deployer may verify without opacus: the check must then say the epsilon was not
recomputed (a warning), never pass it silently nor crash. Fake opacus layouts on
sys.path stand in for the broken installations.
"""
import copy
import importlib
from types import SimpleNamespace

import pytest

import cardkit
from verifier import dp_check
from verifier.appraise import appraise
from verifier.policy import Policy
from verifier.result import AFFIRMING, CONTRAINDICATED, WARNING


@pytest.fixture
def fresh_accountant():
    dp_check._rdp_module.cache_clear()
    dp_check.rdp_epsilon.cache_clear()
    yield
    dp_check._rdp_module.cache_clear()
    dp_check.rdp_epsilon.cache_clear()
    importlib.invalidate_caches()


def _fake_opacus(root, layout):
    if layout == "module":          # a plain module: no package to hold the analysis
        (root / "opacus.py").write_text("")
    else:
        analysis = root / "opacus" / "accountants" / "analysis"
        analysis.mkdir(parents=True)
        (root / "opacus" / "__init__.py").write_text("")
        if layout == "broken":
            (analysis / "rdp.py").write_text("import laminate_no_such_module\n")
    importlib.invalidate_caches()


@pytest.mark.parametrize("layout, reason", [
    ("module", "opacus is not installed"),
    ("empty", "this opacus has no accountants/analysis/rdp.py"),
    ("broken", "opacus's RDP analysis needs laminate_no_such_module"),
])
def test_unusable_opacus_is_named(tmp_path, monkeypatch, fresh_accountant, layout, reason):
    _fake_opacus(tmp_path, layout)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(dp_check.AccountantUnavailable) as err:
        dp_check.rdp_epsilon(1.1, 0.01, 1000, 1e-5)
    assert str(err.value) == reason


def test_card_appraised_without_opacus_warns(tmp_path, monkeypatch, fresh_accountant):
    kit = cardkit.make_card(tmp_path / "kit")
    _fake_opacus(tmp_path, "module")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = appraise(kit.card_bytes, policy=Policy.load(kit.policy_path),
                      model_path=kit.model_path)
    check = result.get("dp_epsilon")
    assert (check.status, check.field) == (WARNING, "claims.defenses.dp.epsilon")
    epsilon = kit.claims["defenses"]["dp"]["epsilon"]
    assert check.reason == (f"epsilon {epsilon:g} not recomputed: opacus is not installed "
                            "(install opacus to check it)")


def test_zero_steps_spend_nothing_and_one_step_does(fresh_accountant):
    assert dp_check.rdp_epsilon(1.1, 0.01, 0, 1e-5) == 0.0
    one = dp_check.rdp_epsilon(1.1, 0.01, 1, 1e-5)
    assert one == pytest.approx(cardkit.rdp_epsilon(1.1, 0.01, 1, 1e-5)) and one > 0


def test_tolerance_is_relative_above_one_and_absolute_below():
    assert dp_check.within(10.0, 10.5, 0.05) and not dp_check.within(10.0, 10.6, 0.05)
    assert dp_check.within(0.10, 0.14, 0.05) and not dp_check.within(0.10, 0.16, 0.05)


# --- the DP claim against the measured config, on its own (no card) -----------------------

def _claims(records=60, **sections):
    """Claims as check_config reads them: the kit's measured config, changed per section
    (`dp={"enabled": False}`; a section given as None is removed), and the train split."""
    config = copy.deepcopy(cardkit.CONFIG)
    for name, change in sections.items():
        if change is None:
            config.pop(name)
        else:
            config[name] = {**config[name], **change}
    return {"training": {"config": config}, "dataset": {"train": {"records": records}}}


def _config_check(dp_changes=None, tolerance=0.01, **claims):
    dp = None if dp_changes is None else cardkit.dp_claim(**dp_changes)
    return dp_check.check_config(dp, _claims(**claims), tolerance)


def test_kit_claim_matches_its_config():
    check = _config_check({})
    assert (check.status, check.field, check.reason) == (
        AFFIRMING, "claims.defenses.dp", "sample rate, 960 steps, delta, clipping and noise "
        "match the measured config and 60 training records")


def test_no_dp_claim_is_checked_only_when_the_config_enables_dp():
    check = _config_check(None)
    assert (check.status, check.field, check.reason) == (
        CONTRAINDICATED, "claims.defenses.dp", "the measured config enables DP "
        "(training.config.dp.enabled) but the card carries no DP claim")
    assert _config_check(None, dp={"enabled": False}) is None
    assert _config_check(None, dp={"enabled": "yes"}) is None  # only true enables it


@pytest.mark.parametrize("dp, claims, field, reason", [
    ({}, {"dp": {"enabled": False}}, "mechanism",
     "the measured config does not enable DP (training.config.dp.enabled)"),
    ({}, {"dp": {"enabled": 1}}, "mechanism",
     "the measured config does not enable DP (training.config.dp.enabled)"),
    ({}, {"training": None}, "mechanism",
     "the measured config does not enable DP (training.config.dp.enabled)"),
    ({}, {"training": {"batch_size": 0}}, "steps", "the measured config has no positive "
     "training.batch_size and training.epochs to derive the DP schedule from"),
    ({}, {"training": {"epochs": 0}}, "steps", "the measured config has no positive "
     "training.batch_size and training.epochs to derive the DP schedule from"),
    ({}, {"training": {"epochs": True}}, "steps", "the measured config has no positive "
     "training.batch_size and training.epochs to derive the DP schedule from"),
    ({}, {"training": {"batch_size": 1.0}}, "steps", "the measured config has no positive "
     "training.batch_size and training.epochs to derive the DP schedule from"),
    ({}, {"records": 0}, "steps", "the measured config has no positive "
     "training.batch_size and training.epochs to derive the DP schedule from"),
    ({"sample_rate": 0.5}, {}, "sample_rate",
     "claims sample rate 0.5; 60 records in batches of 1 give 0.0166667"),
    ({"steps": 959}, {}, "steps", "claims 959 steps; 16 epochs of 60 records in batches of 1 "
     "give 960"),
    ({"delta": 1e-6}, {}, "delta", "claims delta 1e-06, the measured config says 1e-05"),
    ({"max_grad_norm": 2.0}, {}, "max_grad_norm",
     "claims max_grad_norm 2.0, the measured config says 1.0"),
    ({"noise_multiplier": 1.2}, {}, "noise_multiplier",
     "claims noise 1.2, the measured config fixes 1.1"),
    ({"epsilon": 3.04}, {"dp": {"target_epsilon": 3.0, "noise_multiplier": None}}, "epsilon",
     "claims epsilon 3.04 above the measured config's target_epsilon 3.0"),
    ({"epsilon": 1.0}, {"dp": {"target_epsilon": "3", "noise_multiplier": None}}, "epsilon",
     "claims epsilon 1 above the measured config's target_epsilon '3'"),
    ({"non_dp_records": 1}, {}, "non_dp_records", "claims 1 records touched without DP; "
     "the measured config's schedule touches 0"),
    ({}, {"watermark": {"schedule": "split"}}, "non_dp_records", "claims 0 records touched "
     "without DP; the measured config's schedule touches 60"),
    ({"non_dp_records": 100}, {"watermark": {"schedule": "split"}}, "non_dp_records",
     "claims 100 records touched without DP; the measured config's schedule touches 60"),
    ({"non_dp_records": 0}, {"watermark": {"schedule": "split", "trigger_count": "9"}},
     "non_dp_records", "claims 0 records touched without DP; the measured config's "
     "schedule touches None"),
])
def test_dp_claim_against_the_config_names_the_first_disagreement(dp, claims, field, reason):
    check = _config_check(dp, **claims)
    assert (check.status, check.field, check.reason) == \
        (CONTRAINDICATED, f"claims.defenses.dp.{field}", reason)


@pytest.mark.parametrize("dp, claims, says", [
    ({"epsilon": 3.03}, {"dp": {"target_epsilon": 3.0, "noise_multiplier": None}},
     "target epsilon"),       # within the 1% tolerance of the target
    ({"noise_multiplier": 1.5}, {"dp": {"noise_multiplier": None}}, "noise"),
    ({"non_dp_records": 60}, {"watermark": {"schedule": "split"}}, "noise"),
    ({"non_dp_records": 30}, {"watermark": {"schedule": "split", "trigger_count": 30}}, "noise"),
    ({}, {"watermark": {"enabled": False, "schedule": "split"}}, "noise"),
    ({}, {"watermark": None}, "noise"),
])
def test_dp_claim_the_config_allows_is_affirmed(dp, claims, says):
    check = _config_check(dp, **claims)
    assert check.status == AFFIRMING, check.reason
    assert check.reason.startswith(f"sample rate, 960 steps, delta, clipping and {says} match")


def test_sample_rate_and_steps_follow_the_loader_batches():
    """ceil(records / batch) batches per epoch: 61 records in batches of 2 are 31."""
    assert dp_check.expected_schedule(61, 2, 3) == (1 / 31, 93)
    assert dp_check.expected_schedule(60, 1, 16) == (1 / 60, 960)
    check = _config_check({"sample_rate": 1 / 31, "steps": 93}, records=61,
                          training={"batch_size": 2, "epochs": 3})
    assert check.status == AFFIRMING, check.reason
    check = _config_check({"sample_rate": 1.0, "steps": 16}, records=1)  # one record
    assert check.status == AFFIRMING, check.reason


def test_noise_below_one_is_a_dp_sgd_run():
    """Any positive noise multiplier describes DP-SGD (a weak one, but a run)."""
    assert dp_check.check_parameters(cardkit.dp_claim(noise_multiplier=0.5)) is None


def _dp_policy(**dp):
    limits = {"max_delta": None, "max_non_dp_records": 100, "require_tight": False, **dp}
    return SimpleNamespace(policy_id="p", dp=SimpleNamespace(**limits))


@pytest.mark.parametrize("delta, records, limits, status, reason", [
    (1e-5, 60, {}, AFFIRMING, "delta 1e-05 < 1/60 training records"),
    (0.01, 100, {}, CONTRAINDICATED, "delta 0.01 is not below 1/records (1/100): such a "
     "mechanism may publish a record outright with that probability (set dp.max_delta in "
     "the policy to accept it)"),
    (0.0099, 100, {}, AFFIRMING, "delta 0.0099 < 1/100 training records"),
    (0.05, 100, {"max_delta": 0.05}, AFFIRMING, "delta 0.05 <= dp.max_delta 0.05"),
    (0.06, 100, {"max_delta": 0.05}, CONTRAINDICATED,
     "delta 0.06 exceeds the policy's dp.max_delta 0.05"),
])
def test_delta_bound(delta, records, limits, status, reason):
    check = dp_check.check_delta({"delta": delta}, records, _dp_policy(**limits))
    assert (check.status, check.field, check.reason) == \
        (status, "claims.defenses.dp.delta", reason)


@pytest.mark.parametrize("touched, status, reason", [
    (100, AFFIRMING, "100 training records touched without DP (bound 100)"),
    (101, CONTRAINDICATED, "a non-DP phase touched 101 training records, above the policy's "
     "dp.max_non_dp_records 100: the epsilon does not protect them"),
])
def test_non_dp_records_bound(touched, status, reason):
    check = dp_check.check_non_dp_records({"non_dp_records": touched}, _dp_policy())
    assert (check.status, check.field, check.reason) == \
        (status, "claims.defenses.dp.non_dp_records", reason)


@pytest.mark.parametrize("claim, start, tight, status, reason", [
    ({}, "random", False, AFFIRMING,
     "tight: epsilon covers the whole training, from a random start"),
    ({}, "parent", False, CONTRAINDICATED, "claims tight accounting, but training started "
     "from parent weights (claims.start), which may have seen any record without DP"),
    ({"non_dp_records": 4}, "random", False, CONTRAINDICATED,
     "claims tight accounting, but a non-DP phase touched 4 training records"),
    ({"privacy_accounting": "not tight", "note": "fine-tuned"}, "random", False, WARNING,
     "not tight: epsilon 2.88 covers only the DP phase; fine-tuned"),
    ({"privacy_accounting": "not tight"}, "random", False, WARNING,
     "not tight: epsilon 2.88 covers only the DP phase; a non-DP phase followed the DP phase"),
    ({"privacy_accounting": "not tight", "non_dp_records": 4}, "external", True,
     CONTRAINDICATED, "not tight: epsilon 2.88 covers only the DP phase; training started "
     "from external weights (claims.start), which may have seen any record without DP; "
     "a non-DP phase touched 4 training records; policy p requires tight accounting"),
])
def test_privacy_accounting(claim, start, tight, status, reason):
    dp = {**cardkit.dp_claim(), "epsilon": 2.883, **claim}
    check = dp_check.check_accounting(dp, {"kind": start}, _dp_policy(require_tight=tight))
    assert (check.status, check.field, check.reason) == \
        (status, "claims.defenses.dp.privacy_accounting", reason)
