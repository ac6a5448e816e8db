"""The dispute rule's start and order checks (verifier.disputes), without a suspect.

The laundering thief loads a victim's weights and "trains" them at a learning rate of
1e-300: its export is byte-identical to the victim's, so its genuine card names the
victim's exact model, and registered first it made the owner's commitment look late.
The opening here is malformed on purpose, so the rule stops before querying a suspect and
the checks before it can be read.
"""
import hashlib

from verifier import disputes as rule

VICTIM = hashlib.sha256(b"victim.onnx").hexdigest()
OTHER = hashlib.sha256(b"other.onnx").hexdigest()
RANDOM = {"kind": "random", "seed": "11" * 32, "init": "reset_parameters", "sha256": "22" * 32}
LAUNDERED = {"kind": "external", "model_sha256": VICTIM, "sha256": "33" * 32}


def judge(*, start, card_model, commitment_index, suspect_index, suspect_sha256=VICTIM):
    return rule.judge_claim(card_problem=None, commitment="ab" * 32,
                            commitment_index=commitment_index, suspect_index=suspect_index,
                            opening="stop here", watermark=None, suspect=None, alpha=1e-6,
                            start=start, card_model=card_model, suspect_sha256=suspect_sha256)


def test_a_card_that_started_from_the_suspect_cannot_own_it():
    # The thief registered first: its commitment (0) precedes the suspect (1).
    j = judge(start=LAUNDERED, card_model=VICTIM, commitment_index=0, suspect_index=1)
    ok, why = j.checks["start"]
    assert not ok and "is the suspect model itself" in why and "external" in why
    assert "order" not in j.checks and not j.passed          # stopped at start
    assert j.reason.startswith("start: ")


def test_a_parent_start_is_refused_the_same_way():
    parent = {"kind": "parent", "card_sha256": "44" * 32, "model_sha256": VICTIM, "sha256": "33" * 32}
    j = judge(start=parent, card_model=VICTIM, commitment_index=0, suspect_index=1)
    assert not j.checks["start"][0] and "parent" in j.checks["start"][1]


def test_an_external_start_may_claim_other_models():
    """A fine-tune of someone's weights owns its own watermark in other models."""
    j = judge(start=LAUNDERED, card_model=OTHER, commitment_index=0, suspect_index=1,
              suspect_sha256=OTHER)
    assert j.checks["start"][0] and j.checks["order"][0]


def test_the_owner_who_produced_the_suspect_passes_order_though_registered_late():
    # The thief's registration put the victim's digest at index 1; the owner's commitment
    # came at 2. The owner's card drew its start from the attestation module and produced
    # exactly these bytes, so the suspect did not exist before its commitment.
    j = judge(start=RANDOM, card_model=VICTIM, commitment_index=2, suspect_index=1)
    ok, why = j.checks["order"]
    assert ok and "trained exactly the suspect's bytes" in why
    assert not j.checks["opening"][0]                        # the malformed opening stops it


def test_late_commitment_still_fails_order_without_having_produced_the_suspect():
    for start, model in ((RANDOM, OTHER), (LAUNDERED | {"model_sha256": OTHER}, VICTIM), (None, VICTIM)):
        j = judge(start=start, card_model=model, commitment_index=2, suspect_index=1)
        assert not j.checks["order"][0], (start, model)
        assert "not before the suspect model first appeared" in j.checks["order"][1]


def test_unknown_suspect_digest_never_counts_as_produced():
    j = judge(start=RANDOM, card_model=VICTIM, commitment_index=2, suspect_index=1,
              suspect_sha256=None)
    assert not j.checks["order"][0]
