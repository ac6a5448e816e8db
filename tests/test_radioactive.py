"""Radioactive data: the exact null of the white-box test (and its measured rate), the
carriers and marked records derived from the committed seed, the marking, the verifier's
checks with one tamper per check, and one attested training run."""
import copy
import math

import numpy as np
import pytest

import cardkit
from cards import radioactive as scheme
from cards.errors import LaminateError
from verifier import radioactive as checks
from verifier.appraise import appraise
from verifier.policy import Policy
from verifier.result import AFFIRMING, CONTRAINDICATED, WARNING

SEED, SALT = bytes(range(32)), bytes(range(32, 64))


# --- the statistic: exact formula, and its measured null -----------------------------------

@pytest.mark.parametrize("dim", [2, 3, 10, 64, 512])
@pytest.mark.parametrize("cosine", [-0.9, -0.2, 0.0, 0.05, 0.3, 0.7, 0.99])
def test_cosine_p_value_is_the_incomplete_beta_formula(dim, cosine):
    special = pytest.importorskip("scipy.special")
    tail = 0.5 * special.betainc((dim - 1) / 2, 0.5, 1 - cosine ** 2)
    expected = tail if cosine >= 0 else 1 - tail
    assert math.isclose(scheme.cosine_p_value(cosine, dim), expected, rel_tol=1e-10, abs_tol=1e-300)


def test_fisher_is_scipys_combination():
    stats = pytest.importorskip("scipy.stats")
    p_values = [0.3, 0.01, 0.5, 1e-5, 0.9]
    assert math.isclose(scheme.fisher(p_values), stats.combine_pvalues(p_values).pvalue, rel_tol=1e-10)


def test_null_rate_measured_on_random_directions_matches_alpha():
    """Under the null (a direction independent of uniform carriers) the combined p-value is
    uniform: measured over 4,000 draws, the share below alpha is within 4 binomial standard
    deviations of alpha (fails if the formula or the combination is off by a few percent)."""
    rng = np.random.default_rng(0)
    dim, classes, draws = 64, 10, 4000
    carriers = scheme.carriers(SEED, classes, dim)
    p_values = []
    for _ in range(draws):
        w = rng.standard_normal((classes, dim)) * rng.uniform(0.1, 5, (classes, 1))
        cos = np.sum(w * carriers, 1) / np.linalg.norm(w, axis=1)
        p_values.append(scheme.combined_p_value(cos, dim))
    for alpha in (0.01, 0.05, 0.2):
        rate = np.mean(np.array(p_values) < alpha)
        assert abs(rate - alpha) < 4 * math.sqrt(alpha * (1 - alpha) / draws), (alpha, rate)


def test_aligned_weights_are_detected():
    cos = [0.3] * 10
    assert scheme.combined_p_value(cos, 64) < 1e-10 < scheme.combined_p_value([0.0] * 10, 64)


# --- derivation from the committed seed ----------------------------------------------------

def test_carriers_are_unit_deterministic_and_seed_bound():
    a = scheme.carriers(SEED, 10, 64)
    assert a.shape == (10, 64) and np.allclose(np.linalg.norm(a, axis=1), 1.0)
    assert scheme.carriers_digest(a) == scheme.carriers_digest(scheme.carriers(SEED, 10, 64))
    assert scheme.carriers_digest(a) != scheme.carriers_digest(scheme.carriers(SALT, 10, 64))


def test_marked_indices_are_distinct_in_range_and_seed_bound():
    idx = scheme.marked_indices(SEED, 1000, 100)
    assert len(set(idx.tolist())) == 100 and idx.min() >= 0 and idx.max() < 1000
    assert np.array_equal(idx, scheme.marked_indices(SEED, 1000, 100))
    assert not np.array_equal(idx, scheme.marked_indices(SALT, 1000, 100))


def test_opening_round_trip_and_malformed_file(tmp_path):
    opening = scheme.Opening(SEED, SALT, scheme.make_parameters(10, 64, 60, 6))
    path = opening.save(tmp_path / "radioactive.opening")
    again = scheme.Opening.load(path)
    assert again.matches(opening.commitment) and again.parameters == opening.parameters
    path.write_text(path.read_text().replace('"classes": 10', '"classes": "10"'))
    with pytest.raises(LaminateError, match="radioactive.opening: seed, salt or parameters"):
        scheme.Opening.load(path)


# --- the marking (torch) ---------------------------------------------------------------------

def test_marking_moves_features_toward_the_carrier_within_epsilon():
    torch = pytest.importorskip("torch")
    from attest.defenses import radioactive

    torch.manual_seed(0)
    features = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU())
    x = np.random.default_rng(1).uniform(0, 1, (40, 8, 8)).astype(np.float32)
    u = scheme.carriers(SEED, 1, 32).repeat(40, axis=0)
    marked = radioactive.mark(features, x, u, epsilon=0.1, steps=30)
    assert np.max(np.abs(marked - x)) <= 0.1 + 1e-6 and marked.min() >= 0 and marked.max() <= 1
    with torch.no_grad():
        shift = (features(torch.from_numpy(marked)) - features(torch.from_numpy(x))).numpy()
    assert np.mean(np.sum(shift * u, 1)) > 0.5 * np.mean(np.linalg.norm(shift, axis=1))


def test_config_refuses_a_bad_fraction(tmp_path):
    from attest.config import from_dict

    with pytest.raises(LaminateError, match=r"radioactive\.fraction: must be in \(0, 1\]"):
        from_dict({"dataset": {"name": "digits"}, "radioactive": {"enabled": True, "fraction": 0}},
                  data_given=True)


# --- the verifier's checks, one tamper each --------------------------------------------------

RADIO_CONFIG = {**cardkit.CONFIG, "dp": {"enabled": False}, "radioactive": cardkit.RADIOACTIVE_CONFIG}


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return cardkit.make_card(tmp_path_factory.mktemp("radio"), dp=None, watermark_claim=None,
                             radioactive={}, config=RADIO_CONFIG)


def _claims(kit):
    return copy.deepcopy(kit.claims)


def _radio_checks(result):
    return {c.check: c for c in result.checks if c.check.startswith("radioactive")}


def test_honest_card_affirms_every_radioactive_check(kit):
    result = appraise(kit.card_bytes, policy=Policy.load(kit.policy_path))
    found = _radio_checks(result)
    assert set(found) == {"radioactive_config", "radioactive_claim", "radioactive_p_value"}
    assert all(c.status == AFFIRMING for c in found.values()), found
    assert "mark detected" in found["radioactive_p_value"].reason


def test_tampered_p_value_is_contraindicated(kit):
    claim = _claims(kit)["defenses"]["radioactive"]
    claim["p_value"] = claim["p_value"] * 1e-3        # a prover claiming more confidence
    check = checks.check_p_value(claim)
    assert (check.check, check.status, check.field) == (
        "radioactive_p_value", CONTRAINDICATED, "claims.defenses.radioactive.p_value")


def test_tampered_cosine_changes_the_recomputed_p_value(kit):
    claim = _claims(kit)["defenses"]["radioactive"]
    claim["cosines"][0] = 0.99
    assert checks.check_p_value(claim).status == CONTRAINDICATED


def test_undetected_mark_warns_naming_the_p_value():
    cos = [0.01] * 10
    claim = {"cosines": cos, "feature_dim": 64, "loss_difference": 0.0,
             "p_value": scheme.combined_p_value(cos, 64)}
    check = checks.check_p_value(claim)
    assert check.status == WARNING and "not detected" in check.reason


@pytest.mark.parametrize("field, value, named", [
    ("marked_records", 7, "claims.defenses.radioactive.marked_records"),
    ("classes", 9, "claims.defenses.radioactive.classes"),
    ("cosines", [0.1] * 9, "claims.defenses.radioactive.cosines"),
])
def test_tampered_claim_fields_are_contraindicated(kit, field, value, named):
    claims = _claims(kit)
    claims["defenses"]["radioactive"][field] = value
    check = checks.check_claim(claims)
    assert (check.check, check.status, check.field) == ("radioactive_claim", CONTRAINDICATED, named)


@pytest.mark.parametrize("config_key, value, named", [
    ("fraction", 0.5, "claims.defenses.radioactive.fraction"),
    ("epsilon", 0.3, "claims.defenses.radioactive.epsilon"),
    ("enabled", False, "claims.defenses.radioactive"),
])
def test_config_disagreeing_with_the_claim_is_contraindicated(kit, config_key, value, named):
    claims = _claims(kit)
    claims["training"]["config"]["radioactive"][config_key] = value
    check = checks.check_config(claims)
    assert (check.check, check.status, check.field) == ("radioactive_config", CONTRAINDICATED, named)


def test_forged_claim_without_its_event_is_contraindicated(kit):
    """Tamper: the radioactive claim is bound by its own event like every defense."""
    def edit(claims):
        claims["defenses"]["radioactive"]["loss_difference"] = 0.9
    forged = cardkit.forge(kit, mutate_claims=edit, requote=True)
    result = appraise(forged, policy=Policy.load(kit.policy_path))
    bad = {c.check: c for c in result.checks if c.status == CONTRAINDICATED}
    assert bad["claims_in_log"].field == "claims.defenses.radioactive", bad


def _opening(kit):
    return scheme.Opening.load(kit.tmp_path / "radioactive.opening")


def test_opening_affirms_and_each_tamper_is_named(kit):
    claims, opening = _claims(kit), _opening(kit)
    assert checks.check_opening(claims, opening).status == AFFIRMING
    wrong_seed = scheme.Opening(SEED, opening.salt, opening.parameters)
    assert checks.check_opening(claims, wrong_seed).field == "claims.defenses.radioactive.commitment"
    claims["defenses"]["radioactive"]["carriers_sha256"] = "0" * 64
    assert checks.check_opening(claims, opening).field == "claims.defenses.radioactive.carriers_sha256"
    claims = _claims(kit)
    claims["dataset"]["train"]["records"] += 1
    check = checks.check_opening(claims, opening)
    assert (check.status, check.field) == (CONTRAINDICATED, "claims.defenses.radioactive.train_records")


# --- one attested run ---------------------------------------------------------------------

@pytest.mark.slow
def test_attested_run_commits_marks_and_measures_on_the_released_model(tmp_path):
    """digits, MLP: the claim is sealed and affirmed, the opening derives its carriers and
    records, the train split is the clean one, and the marked root is the marked records'."""
    pytest.importorskip("torch")
    import yaml

    from attest import datasets as ds
    from attest.measure import dataset_claim
    from attest.train import train_from_config
    from cards import keys

    keys.save_private_key(keys.generate_private_key("ed25519"), tmp_path / "k.pem")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "dataset": {"name": "digits"}, "model": {"arch": "mlp", "hidden": [128]},
        "training": {"epochs": 3, "lr": 0.3},
        "radioactive": {"enabled": True, "fraction": 0.2, "epsilon": 0.3, "steps": 20},
        "attestation": {"backend": "sim", "sim_dir": str(tmp_path / "sim")},
        "release_key": str(tmp_path / "k.pem")}))
    result = train_from_config(tmp_path / "c.yaml", tmp_path / "out", progress=lambda _: None)
    claim = result.claims["defenses"]["radioactive"]
    train, _ = ds.split(ds.load_digits(), 0.2, 0)
    assert claim["feature_dim"] == 128 and claim["marked_records"] == round(0.2 * len(train))
    assert result.claims["dataset"]["train"]["merkle_root"] == dataset_claim(
        "t", train.records(), 10)["merkle_root"], "dataset.train must measure the clean split"
    opening = scheme.Opening.load(tmp_path / "out" / "radioactive.opening")
    assert checks.check_opening(result.claims, opening).status == AFFIRMING
    idx = opening.marked_indices()
    assert dataset_claim("t", zip(train.x[idx], train.y[idx]), 10)["merkle_root"] != claim["marked_merkle_root"]
    marked = np.load(tmp_path / "out" / "radioactive.npy")
    assert checks.check_marked(result.claims, opening, train.x, train.y, marked).status == AFFIRMING
    found = {c.check: c for c in checks.checks(result.claims)}
    assert found["radioactive_config"].status == AFFIRMING
    assert found["radioactive_claim"].status == AFFIRMING
    assert found["radioactive_p_value"].status in (AFFIRMING, WARNING)   # recomputed, either way


def test_a_model_without_a_final_linear_layer_is_refused():
    torch = pytest.importorskip("torch")
    from attest.defenses import radioactive

    with pytest.raises(LaminateError, match="radioactive: needs a Sequential model ending in a Linear"):
        radioactive.create(None, {}, torch.nn.Sequential(torch.nn.ReLU()), None)


# --- the marked records and the CLI ----------------------------------------------------------

def _marked_case():
    from verifier.adversarial import records_root

    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (60, 64)).astype(np.float32)
    y = rng.integers(0, 10, 60)
    opening = scheme.Opening(SEED, SALT, scheme.make_parameters(10, 64, 60, 6))
    idx = opening.marked_indices()
    marked = np.clip(x[idx] + rng.uniform(-0.1, 0.1, (6, 64)), 0, 1).astype(np.float32)
    claims = {"dataset": {"train": {"records": 60, "merkle_root": records_root(x, y)}},
              "defenses": {"radioactive": {"marked_merkle_root": records_root(marked, y[idx]),
                                           "epsilon": 0.1}}}
    return claims, opening, x, y, marked, idx


def test_marked_records_affirm_and_each_tamper_is_named():
    from verifier.adversarial import records_root

    claims, opening, x, y, marked, idx = _marked_case()
    assert checks.check_marked(claims, opening, x, y, marked).status == AFFIRMING
    other = x.copy()
    other[0, 0] = 1 - other[0, 0]
    assert checks.check_marked(claims, opening, other, y, marked).field == "claims.dataset.train.merkle_root"
    assert checks.check_marked(claims, opening, x, y, marked[:5]).field == \
        "claims.defenses.radioactive.marked_records"
    swapped = marked[::-1].copy()
    assert checks.check_marked(claims, opening, x, y, swapped).field == \
        "claims.defenses.radioactive.marked_merkle_root"
    wide = marked.copy()        # a prover who committed marks beyond the claimed epsilon
    wide[0] = np.clip(x[idx[0]] + 0.3, 0, 1)
    claims["defenses"]["radioactive"]["marked_merkle_root"] = records_root(wide, y[idx])
    check = checks.check_marked(claims, opening, x, y, wide)
    assert (check.status, check.field) == (CONTRAINDICATED, "claims.defenses.radioactive.epsilon")


def _cli(*args):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-m", "laminate", "radioactive", *map(str, args)],
                          cwd=root, capture_output=True, text=True, timeout=120)


def test_cli_affirms_the_kit_card_and_refuses_bad_input_with_exit_2(kit, tmp_path):
    opening = kit.tmp_path / "radioactive.opening"
    ok = _cli(kit.card_path, "--opening", opening)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "radioactive_opening: affirming" in ok.stdout and "radioactive_p_value: affirming" in ok.stdout
    half = _cli(kit.card_path, "--opening", opening, "--marked", tmp_path / "m.npy")
    assert half.returncode == 2 and "--marked and --train" in half.stderr
    assert "Traceback" not in half.stderr
    bad = tmp_path / "bad.opening"
    bad.write_text("{}")
    refused = _cli(kit.card_path, "--opening", bad)
    assert refused.returncode == 2 and "bad.opening: format" in refused.stderr


def test_card_view_shows_the_radioactive_claim(kit):
    from cards import views
    from cards.card import open_card

    markdown = views.to_markdown(open_card(kit.card_bytes).payload)
    assert "## Radioactive data" in markdown and "| loss difference | 0.21 |" in markdown


def test_tight_dp_beside_radioactive_data_is_contraindicated(tmp_path):
    """Tamper: a card claiming tight DP accounting while its marks came from a network
    trained on the split without DP."""
    kit = cardkit.make_card(tmp_path, watermark_claim=None, radioactive={},
                            config={**cardkit.CONFIG, "radioactive": cardkit.RADIOACTIVE_CONFIG})
    result = appraise(kit.card_bytes, policy=Policy.load(kit.policy_path))
    bad = {c.check: c for c in result.checks if c.status == CONTRAINDICATED}
    assert bad["privacy_accounting"].field == "claims.defenses.dp.privacy_accounting", result.checks
    assert "radioactive marks" in bad["privacy_accounting"].reason


class _FixedSession:
    """Stands in for the attested session's randomness: fixed bytes, so the run repeats."""

    def __init__(self):
        self.n = 0

    def random(self, n):
        import hashlib

        self.n += 1
        return hashlib.shake_256(b"test-session" + bytes([self.n])).digest(n)


def test_positive_control_a_classifier_on_the_marking_features_is_detected():
    """Paper's linear-classification setting on digits: a linear head trained on the marking
    network's features of the marked split is detected by the white-box test; the same head
    trained on the clean split is not. This is the end-to-end check that carriers, marking,
    alignment and p-value fit together (the from-scratch setting of the bench is weaker)."""
    torch = pytest.importorskip("torch")
    from attest import datasets as ds
    from attest.defenses import radioactive
    from attest.models import build

    train, test = ds.split(ds.load_digits(), 0.2, 0)
    torch.manual_seed(0)
    model = build("mlp", train.input_shape, 10, [256])
    radio = radioactive.create(_FixedSession(), {"fraction": 0.3, "epsilon": 0.3, "steps": 50,
                                                 "marking_epochs": 5}, model, train)
    features = radioactive._features(radio.marker)[0]
    p = {}
    for name, data in (("marked", radio.train), ("clean", train)):
        torch.manual_seed(1)
        head = torch.nn.Linear(256, 10)
        opt = torch.optim.Adam(head.parameters(), lr=0.01)
        x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
        with torch.no_grad():
            phi = features(x)
        for _ in range(300):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(head(phi), y).backward()
            opt.step()
        cos = radioactive.cosines(torch.nn.Sequential(*features, head), features, radio.carriers, test.x)
        p[name] = scheme.combined_p_value(cos, 256)
    assert p["marked"] < 1e-4 and p["clean"] > 1e-3, p
