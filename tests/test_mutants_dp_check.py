"""The DP check where opacus is missing or broken, and at zero steps.

A deployer may verify without opacus: the check must then say the epsilon was not
recomputed (a warning), never pass it silently nor crash. Fake opacus layouts on
sys.path stand in for the broken installations.
"""
import importlib

import pytest

import cardkit
from verifier import dp_check
from verifier.appraise import appraise
from verifier.policy import Policy
from verifier.result import WARNING


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
