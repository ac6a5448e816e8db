"""The EWE watermark: its opening, its exact null, its appraisal checks, and a thief.

The null tests count matches of models that never saw the opening, over every target
tuple the seed could have drawn, so the bound is checked exactly, not sampled."""
from __future__ import annotations

import itertools
import json
from fractions import Fraction

import numpy as np
import pytest

import cardkit
from attest import measure
from cards import ewe, merkle
from cards.errors import LaminateError
from verifier import ewe_null
from verifier.appraise import appraise
from verifier.ownership import OPENING_MISMATCH, ownership_test
from verifier.policy import Policy
from verifier.result import AFFIRMING, CONTRAINDICATED, WARNING


def _train_split(n=60, classes=4, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 1, 6, 6)).astype(np.float32)
    y = np.arange(n) % classes
    return x, y


def _opening(keys=3, per_key=2, classes=4, seed=b"\x07" * 32, positions=None, scheme=ewe.SCHEME):
    """An opening over a synthetic train split, with real inclusion proofs."""
    x, y = _train_split(classes=classes)
    params = ewe.make_parameters(keys, per_key, classes, [1, 6, 6], [0.0, 1.0], 3, scheme)
    sources, _, _ = ewe.derive(seed, params)
    leaves = [ewe.record_leaf(f, int(label)) for f, label in zip(x, y)]
    indices = [list(np.flatnonzero(y == s)[:per_key]) for s in sources]
    flat = [i for row in indices for i in row]
    proofs = [merkle.inclusion_proof(leaves, i) for i in flat]
    positions = positions or [[k % 4, (2 * k) % 4] for k in range(keys)]
    opening = ewe.create_opening(seed, params, positions, indices, x[flat], proofs, salt=b"\x01" * 32)
    claim = {"scheme": scheme, "commitment": opening.commitment, "trigger_count": keys * per_key,
             "keys": keys, "classes": classes, "schedule": "joint",
             "train_root": merkle.root_of(leaves).hex(), "train_records": len(y)}
    return opening, claim


class Answers:
    """A suspect that answers from a fixed function of the input (never the opening)."""
    batch_size = 4

    def __init__(self, fn):
        self.fn, self.name = fn, "fixed"

    def predict(self, x):
        return np.array([self.fn(v) for v in x])


def test_our_leaf_is_the_measured_train_leaf():
    x, y = _train_split()
    claim = measure.dataset_claim("t", zip(x, y), 4)
    leaves = [ewe.record_leaf(f, int(label)) for f, label in zip(x, y)]
    assert merkle.root_of(leaves).hex() == claim["merkle_root"]


def test_opening_round_trips_and_copy_is_shown():
    opening, claim = _opening()
    again = ewe.Opening.from_json(opening.to_json())
    assert again.matches(claim["commitment"])
    x, y = opening.triggers()
    lookup = {v.tobytes(): t for v, t in zip(x, y)}
    copy = Answers(lambda v: lookup[v.tobytes()])
    result = ownership_test(opening, claim, copy, alpha=0.02)
    # Every key hit: p = (1/3)^3 = 1/27 < 0.05 but the copy is shown only if <= alpha.
    assert result.p_value == pytest.approx(1 / 27)
    assert not result.shown and result.queries == 6
    assert ownership_test(opening, claim, copy, alpha=0.05).shown


@pytest.mark.parametrize("scheme", ewe.SCHEMES)
@pytest.mark.parametrize("fn_name", ["constant", "source-ish", "pixel-rule"])
def test_null_bound_is_exact_over_every_target_draw(fn_name, scheme):
    """For a model that never saw the opening, count over all (C-1)^K target tuples how
    often the test shows ownership: never more than alpha of them (either variant: the
    margin variant changes training only, never the keys or the test)."""
    opening, _ = _opening(keys=4, per_key=3, classes=4, scheme=scheme)
    sources, _, _ = opening.keys()
    x, _ = opening.triggers()
    fns = {"constant": lambda v: 2,
           "source-ish": lambda v: int(v.sum() * 10) % 4,
           "pixel-rule": lambda v: int(v[0, 0, 0] > 0.5) + 2 * int(v[0, 5, 5] > 0.5)}
    labels = Answers(fns[fn_name]).predict(x)
    answers = [list(labels[k * 3:(k + 1) * 3]) for k in range(4)]
    choices = [[c for c in range(4) if c != s] for s in sources]
    tuples = list(itertools.product(*choices))
    for alpha in (1 / 81, 1 / 27, 0.05, 0.2, 0.5):
        shown = sum(ewe_null.test(answers, sources, t, 4, alpha)[0] for t in tuples)
        assert Fraction(shown, len(tuples)) <= Fraction(alpha), (fn_name, alpha, shown)


def test_null_counts_of_trained_independent_models():
    """Independent digit classifiers (never saw any opening), 40 seed-drawn watermarks:
    how many are shown at alpha 0.05 stays within the exact bound; at 1e-6 none is."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8), d.target
    model = LogisticRegression(max_iter=300).fit(x[::2].reshape(-1, 64), y[::2])
    leaves = [ewe.record_leaf(f, int(label)) for f, label in zip(x, y)]
    root = merkle.root_of(leaves).hex()
    params = ewe.make_parameters(10, 3, 10, [1, 8, 8], [0.0, 1.0], 3)
    suspect = Answers(lambda v: int(model.predict(v.reshape(1, 64))[0]))
    shown_loose = 0
    for n in range(40):
        seed = bytes([n]) * 32
        sources, _, _ = ewe.derive(seed, params)
        indices = [list(np.flatnonzero(y == s)[n:n + 3]) for s in sources]
        flat = [i for row in indices for i in row]
        opening = ewe.create_opening(seed, params, [[n % 6, (n * 3) % 6]] * 10, indices, x[flat],
                                     [merkle.inclusion_proof(leaves, i) for i in flat])
        claim = {"scheme": ewe.SCHEME, "commitment": opening.commitment, "trigger_count": 30,
                 "keys": 10, "classes": 10, "schedule": "joint", "train_root": root,
                 "train_records": len(y)}
        assert not ownership_test(opening, claim, suspect, alpha=1e-6).shown
        shown_loose += ownership_test(opening, claim, suspect, alpha=0.05).shown
    # Binomial(40, 0.05) exceeds 8 with probability < 1e-3.
    assert shown_loose <= 8


def test_power_matches_enumeration():
    """ewe_null.power against a brute-force sum over hit patterns (K=3, m=2, C=4)."""
    a, keys, m, classes, alpha = 0.4, 3, 2, 4, 1 / 27
    total = 0.0
    for hits in itertools.product(range(m + 1), repeat=keys):
        prob = 1.0
        for h in hits:
            prob *= [(1 - a) ** 2, 2 * a * (1 - a), a * a][h]
        answers = [[1] * h + [0] * (m - h) for h in hits]         # target 1, source 0
        shown, _, _ = ewe_null.test(answers, [0] * keys, [1] * keys, classes, alpha)
        total += prob * shown
    assert ewe_null.power(a, keys, m, classes, alpha) == pytest.approx(total)


def test_forged_opening_or_pattern_is_rejected():
    opening, claim = _opening()
    doc = json.loads(opening.to_json())
    doc["positions"][0] = [1, 1] if doc["positions"][0] != [1, 1] else [0, 0]
    with pytest.raises(LaminateError, match="commitment does not match"):
        ewe.Opening.from_json(json.dumps(doc), source="forged")
    # A freshly committed opening with another pattern position is not the card's.
    moved, _ = _opening(positions=[[3, 3], [0, 3], [3, 0]])
    x, y = moved.triggers()
    lookup = {v.tobytes(): t for v, t in zip(x, y)}
    result = ownership_test(moved, claim, Answers(lambda v: lookup[v.tobytes()]), alpha=0.05)
    assert not result.shown and result.reason == OPENING_MISMATCH
    # Another seed (other targets, other pixels) is not the card's either.
    other, _ = _opening(seed=b"\x08" * 32)
    assert ownership_test(other, claim, Answers(lambda v: 0), alpha=0.05).reason == OPENING_MISMATCH


def test_forged_margin_opening_is_rejected():
    """The variant's name is inside the committed parameters: an opening edited to say
    the other variant, or the plain-EWE opening of the same seed, positions and records
    presented for a margin card, does not open that card's commitment."""
    opening, claim = _opening(scheme=ewe.MARGIN_SCHEME)
    x, y = opening.triggers()
    lookup = {v.tobytes(): t for v, t in zip(x, y)}
    copy = Answers(lambda v: lookup[v.tobytes()])
    assert ownership_test(opening, claim, copy, alpha=0.05).shown
    doc = json.loads(opening.to_json())
    doc["parameters"]["scheme"] = ewe.SCHEME
    with pytest.raises(LaminateError, match="commitment does not match"):
        ewe.Opening.from_json(json.dumps(doc), source="forged")
    plain, _ = _opening(scheme=ewe.SCHEME)
    assert plain.commitment != opening.commitment
    result = ownership_test(plain, claim, copy, alpha=0.05)
    assert not result.shown and result.reason == OPENING_MISMATCH
    doc = json.loads(opening.to_json())
    doc["parameters"]["scheme"] = "laminate-ewe-v9"
    with pytest.raises(LaminateError, match="parameters.scheme"):
        ewe.Opening.from_json(json.dumps(doc), source="forged")


def test_record_outside_the_train_split_is_rejected():
    opening, claim = _opening()
    features = opening.features.copy()
    features[0, 0, 0, 0] += 0.5                       # not the train record any more
    forged = ewe.create_opening(opening.seed, opening.parameters, opening.positions,
                                opening.indices, features, opening.proofs, salt=opening.salt)
    claim = dict(claim, commitment=forged.commitment)
    result = ownership_test(forged, claim, Answers(lambda v: 0), alpha=0.05)
    assert not result.shown and "not in the card's train split" in result.reason


def _ewe_kit(tmp_path, root=None, scheme=ewe.SCHEME):
    train = measure.dataset_claim("kit-train", cardkit.fake_records(cardkit.TRAIN_RECORDS, seed=1),
                                  cardkit.CLASSES)
    return cardkit.make_card(tmp_path, watermark_claim={
        "scheme": scheme, "keys": 10, "trigger_count": 100,
        "train_root": root or train["merkle_root"], "train_records": train["records"]})


@pytest.mark.parametrize("scheme", ewe.SCHEMES)
def test_ewe_card_affirms_records_and_power(tmp_path, scheme):
    k = _ewe_kit(tmp_path, scheme=scheme)
    result = appraise(k.card_bytes, policy=Policy.load(k.policy_path), model_path=k.model_path)
    assert result.get("watermark_records").status == AFFIRMING
    power = result.get("watermark_power")
    assert power.status == AFFIRMING and "10 keys x 10 inputs" in power.reason


@pytest.mark.parametrize("scheme", ewe.SCHEMES)
def test_tamper_watermark_records_root(tmp_path, scheme):
    """A sealed EWE claim whose train root is not the card's train split."""
    k = _ewe_kit(tmp_path, root="ab" * 32, scheme=scheme)
    result = appraise(k.card_bytes, policy=Policy.load(k.policy_path), model_path=k.model_path)
    check = result.get("watermark_records")
    assert check.status == CONTRAINDICATED and check.field == "claims.defenses.watermark.train_root"
    assert "not the card's train split" in check.reason


def test_weak_ewe_watermark_warns(tmp_path):
    """A measured watermark accuracy too low for 7 keys out of 10 to be hit: warning."""
    assert ewe_null.keys_needed(10, 10, 1e-6) == 7
    assert ewe_null.power(0.3, 10, 10, 10, 1e-6) > 0.95
    train = measure.dataset_claim("kit-train", cardkit.fake_records(cardkit.TRAIN_RECORDS, seed=1),
                                  cardkit.CLASSES)
    k = cardkit.make_card(tmp_path, evaluation={"watermark_accuracy": 0.02}, watermark_claim={
        "scheme": ewe.SCHEME, "keys": 10, "trigger_count": 100,
        "train_root": train["merkle_root"], "train_records": train["records"]})
    result = appraise(k.card_bytes, policy=Policy.load(k.policy_path), model_path=k.model_path)
    check = result.get("watermark_power")
    assert check.status == WARNING and check.field == "claims.evaluation.watermark_accuracy"
    assert "below 0.9" in check.reason


def test_too_few_keys_for_alpha_warns(tmp_path):
    train = measure.dataset_claim("kit-train", cardkit.fake_records(cardkit.TRAIN_RECORDS, seed=1),
                                  cardkit.CLASSES)
    k = cardkit.make_card(tmp_path, watermark_claim={
        "scheme": ewe.SCHEME, "keys": 5, "trigger_count": 100,
        "train_root": train["merkle_root"], "train_records": train["records"]})
    check = appraise(k.card_bytes, policy=Policy.load(k.policy_path)).get("watermark_power")
    assert check.status == WARNING and check.field == "claims.defenses.watermark.keys"
    assert "at least 7 are needed" in check.reason
