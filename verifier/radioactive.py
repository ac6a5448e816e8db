"""Re-check a card's radioactive-data claim (attest.defenses.radioactive), without torch.

From the card alone: the measured config and the claim agree (`radioactive_config`); the
claim is internally consistent, its marked-record count the one its fraction of the
measured train split gives (`radioactive_claim`); and its p-value is what the exact
formula gives for its cosines (`radioactive_p_value`), which warns when the mark is not
detected on the released model. With the owner's opening (`radioactive_opening`): the
commitment opens, and the carriers derived from the seed are the ones the card digested;
with the train split and the marked records too (`radioactive_marked`): the split is the
measured one, the marked records are the committed ones, at the indices the seed derives,
each within epsilon of its original. What needs the networks' features or logits (the
cosines, the loss difference) is not re-derived here.
"""
from __future__ import annotations

import math

import numpy as np

from cards import radioactive as scheme
from verifier.adversarial import records_root
from verifier.result import AFFIRMING, CONTRAINDICATED, WARNING, Check

FIELD = "claims.defenses.radioactive"
DETECTED_BELOW = 1e-3          # p-value under which the mark counts as detected
_SETTINGS = {"fraction": "fraction", "epsilon": "epsilon", "steps": "marking_steps",
             "marking_epochs": "marking_epochs"}


def check_config(claims: dict) -> Check | None:
    """`radioactive_config`: the measured config's `radioactive` section and the claim agree;
    None when neither has radioactive data (older configs have no such section)."""
    section = claims["training"]["config"].get("radioactive")
    enabled = isinstance(section, dict) and section.get("enabled") is True
    claim = claims["defenses"].get("radioactive")
    if not enabled and claim is None:
        return None
    if claim is None:
        return Check("radioactive_config", CONTRAINDICATED, FIELD, "the measured config enables "
                     "radioactive data (training.config.radioactive.enabled) but the card carries no claim")
    if not enabled:
        return Check("radioactive_config", CONTRAINDICATED, FIELD,
                     "the card claims radioactive data the measured config does not enable")
    for key, field in _SETTINGS.items():
        if section.get(key) != claim[field]:
            return Check("radioactive_config", CONTRAINDICATED, f"{FIELD}.{field}",
                         f"claims {claim[field]!r}, the measured config says {section.get(key)!r}")
    return Check("radioactive_config", AFFIRMING, FIELD,
                 f"{claim['fraction']:g} of the train records marked within L-infinity "
                 f"{claim['epsilon']:g}, as the measured config sets")


def check_claim(claims: dict) -> Check:
    """`radioactive_claim`: one carrier and one cosine per class of the card, and
    marked_records = max(1, round(fraction x train records))."""
    claim = claims["defenses"]["radioactive"]
    train = claims["dataset"]["train"]
    classes = train["schema"]["classes"]
    if claim["classes"] != classes:
        return Check("radioactive_claim", CONTRAINDICATED, f"{FIELD}.classes",
                     f"{claim['classes']} carriers, the train split has {classes} classes")
    if len(claim["cosines"]) != claim["classes"]:
        return Check("radioactive_claim", CONTRAINDICATED, f"{FIELD}.cosines",
                     f"{len(claim['cosines'])} cosines for {claim['classes']} classes")
    expected = scheme.marked_count(claim["fraction"], train["records"])
    if claim["marked_records"] != expected:
        return Check("radioactive_claim", CONTRAINDICATED, f"{FIELD}.marked_records",
                     f"claims {claim['marked_records']} marked records; fraction "
                     f"{claim['fraction']:g} of {train['records']} train records is {expected}")
    return Check("radioactive_claim", AFFIRMING, FIELD,
                 f"{expected} of {train['records']} train records marked, {classes} carriers "
                 f"in {claim['feature_dim']} dimensions")


def check_p_value(claim: dict) -> Check:
    """`radioactive_p_value`: the claimed p-value recomputed from the cosines (exact null,
    Fisher); a warning when the mark is not detected at DETECTED_BELOW."""
    ours = scheme.combined_p_value(claim["cosines"], claim["feature_dim"])
    theirs = claim["p_value"]
    if not math.isclose(ours, theirs, rel_tol=1e-6, abs_tol=1e-300):
        return Check("radioactive_p_value", CONTRAINDICATED, f"{FIELD}.p_value",
                     f"claims {theirs:.6g}; its {len(claim['cosines'])} cosines in "
                     f"{claim['feature_dim']} dimensions give {ours:.6g}")
    status = AFFIRMING if ours < DETECTED_BELOW else WARNING
    verdict = "detected" if ours < DETECTED_BELOW else "not detected"
    return Check("radioactive_p_value", status, f"{FIELD}.p_value",
                 f"mark {verdict} on the released model at {DETECTED_BELOW:g}: p = {ours:.3g} "
                 f"(recomputed; loss difference {claim['loss_difference']:.3f})")


def checks(claims: dict) -> list[Check]:
    """The card-only checks `appraise` runs; none for a card without radioactive data."""
    out = [c for c in [check_config(claims)] if c is not None]
    if claims["defenses"].get("radioactive") is not None:
        out.append(check_claim(claims))
        out.append(check_p_value(claims["defenses"]["radioactive"]))
    return out


def check_opening(claims: dict, opening: scheme.Opening) -> Check:
    """`radioactive_opening`: the opening opens the card's commitment, its parameters are
    the claim's and the train split's, and the carriers it derives are the digested ones."""
    claim = claims["defenses"].get("radioactive")
    if claim is None:
        return Check("radioactive_opening", CONTRAINDICATED, FIELD, "the card carries no radioactive claim")
    if not opening.matches(claim["commitment"]):
        return Check("radioactive_opening", CONTRAINDICATED, f"{FIELD}.commitment",
                     "the opening's seed, salt and parameters do not open the card's commitment")
    params = opening.parameters
    wanted = {"classes": claim["classes"], "feature_dim": claim["feature_dim"],
              "marked_records": claim["marked_records"],
              "train_records": claims["dataset"]["train"]["records"]}
    for key, value in wanted.items():
        if params[key] != value:
            return Check("radioactive_opening", CONTRAINDICATED, f"{FIELD}.{key}",
                         f"the opening says {params[key]!r}, the card {value!r}")
    if scheme.carriers_digest(opening.carriers()) != claim["carriers_sha256"]:
        return Check("radioactive_opening", CONTRAINDICATED, f"{FIELD}.carriers_sha256",
                     "the carriers derived from the opening's seed are not the ones the card digested")
    return Check("radioactive_opening", AFFIRMING, FIELD,
                 "the opening opens the commitment and derives the digested carriers")


def check_marked(claims: dict, opening: scheme.Opening, train_x: np.ndarray, train_y: np.ndarray,
                 marked: np.ndarray) -> Check:
    """`radioactive_marked`: the train split is the measured one, `marked` (radioactive.npy)
    holds the committed records, each within the claimed epsilon of the train record at the
    index the opening's seed derives, and in [0, 1]."""
    claim, train = claims["defenses"]["radioactive"], claims["dataset"]["train"]
    if len(train_x) != train["records"] or records_root(train_x, train_y) != train["merkle_root"]:
        return Check("radioactive_marked", CONTRAINDICATED, "claims.dataset.train.merkle_root",
                     "the train split given is not the one the card measured")
    idx = opening.marked_indices()
    if marked.shape != (len(idx), *train_x.shape[1:]):
        return Check("radioactive_marked", CONTRAINDICATED, f"{FIELD}.marked_records",
                     f"marked records shaped {list(marked.shape)}, expected {len(idx)} records "
                     f"shaped like the train split's")
    if records_root(marked, train_y[idx]) != claim["marked_merkle_root"]:
        return Check("radioactive_marked", CONTRAINDICATED, f"{FIELD}.marked_merkle_root",
                     "the marked records given are not the ones the card committed")
    distance = float(np.max(np.abs(marked.astype(np.float64) - train_x[idx].astype(np.float64))))
    if distance > claim["epsilon"] + 1e-6 or marked.min() < 0.0 or marked.max() > 1.0:
        return Check("radioactive_marked", CONTRAINDICATED, f"{FIELD}.epsilon",
                     f"a marked record lies {distance:.4g} from its original (L-infinity) or outside "
                     f"[0, 1]; the card claims epsilon {claim['epsilon']:g}")
    return Check("radioactive_marked", AFFIRMING, FIELD,
                 f"{len(idx)} committed marked records, at the seed's indices, within L-infinity "
                 f"{distance:.3g} of the measured train split's records")
