"""Appraisal checks of an EWE watermark claim: its records' tree and its power.

`watermark_records`: the claim's train root and record count must be the card's own
train split, because the ownership test checks each watermark record's inclusion proof
against them; a claim pointing elsewhere could prove records the model never saw.
`watermark_power`: the exact probability (``ewe_null.power``) that the EWE test shows
ownership of a copy answering the targets at the measured watermark accuracy.
"""
from __future__ import annotations

from verifier import ewe_null
from verifier.appraise import power_check
from verifier.result import AFFIRMING, CONTRAINDICATED, WARNING, Check


def checks(watermark: dict, claims: dict, policy) -> list[Check]:
    """The two checks, in order."""
    train = claims["dataset"]["train"]
    if (watermark["train_root"] != train["merkle_root"]
            or watermark["train_records"] != train["records"]):
        records = Check("watermark_records", CONTRAINDICATED, "claims.defenses.watermark.train_root",
                        "the watermark's train root or record count is not the card's train split "
                        "(claims.dataset.train)")
    else:
        records = Check("watermark_records", AFFIRMING, "claims.defenses.watermark.train_root",
                        "watermark records are proven against the card's own train split")
    return [records, _power(watermark, claims["evaluation"], policy)]


def _power(watermark: dict, evaluation: dict, policy) -> Check:
    field = "claims.evaluation.watermark_accuracy"
    accuracy = evaluation.get("watermark_accuracy")
    if accuracy is None:
        return Check("watermark_power", WARNING, field,
                     "no measured watermark accuracy: ownership could not be shown")
    keys, count, classes = watermark["keys"], watermark["trigger_count"], watermark["classes"]
    alpha = policy.ownership.alpha
    if count % keys:
        return Check("watermark_power", WARNING, "claims.defenses.watermark.trigger_count",
                     f"{count} watermark inputs do not split into {keys} keys")
    need = ewe_null.keys_needed(keys, classes, alpha)
    if need is None:
        return Check("watermark_power", WARNING, "claims.defenses.watermark.keys",
                     f"{keys} keys cannot reach alpha {alpha:g}: the exact null of one key is "
                     f"1/{classes - 1}, so at least {_least(classes, alpha)} are needed")
    power = ewe_null.power(accuracy, keys, count // keys, classes, alpha)
    return power_check(power, f"power {power:.3f} at alpha {alpha:g} with {keys} keys x "
                       f"{count // keys} inputs (EWE null 1/{classes - 1} per key), watermark "
                       f"accuracy {accuracy:.3f}", field, policy)


def _least(classes: int, alpha: float) -> int:
    j = 1
    while (1 / (classes - 1)) ** j > alpha:
        j += 1
    return j
