"""Re-check a card's adversarial-training claim against the released model, without torch.

Given the card, the exported ONNX model, the test split and the adversarial examples the
training session wrote (attest.defenses.adversarial), this checks that
  the test split is the one the card measured (its Merkle root),
  the examples are the ones the card committed (their Merkle root, same leaf encoding),
  every example lies within the claimed L-infinity epsilon of its test record and in [0, 1],
  the ONNX model's accuracy on them is the claimed adversarial accuracy.
Re-running PGD itself needs the model's input gradients, which onnxruntime does not
give; so the figure is checked as measured on committed, valid perturbations (an upper
bound on robust accuracy), not re-derived from the attack seed.
"""
from __future__ import annotations

import numpy as np

from cards import cbor, merkle
from verifier.result import AFFIRMING, CONTRAINDICATED, Check

NAME = "adversarial_accuracy"
FIELD = "claims.defenses.adversarial"
# float32 rounding of x +/- epsilon: one unit in the last place of values in [0, 1].
_SLACK = 1e-6


def records_root(x: np.ndarray, y: np.ndarray) -> str:
    """Merkle root over dcbor([label, float32 little-endian bytes]) leaves, the dataset
    claim's encoding (FORMAT.md)."""
    x = np.ascontiguousarray(x, dtype="<f4")
    leaves = [merkle.leaf_hash(cbor.dumps([int(label), row.tobytes()])) for row, label in zip(x, y)]
    return merkle.root_of(leaves).hex()


def check(claims: dict, *, predict, test_x: np.ndarray, test_y: np.ndarray,
          examples: np.ndarray) -> Check:
    """The `adversarial_accuracy` check; `predict(x) -> labels` runs the released model."""
    adv = claims["defenses"].get("adversarial")
    if adv is None:
        return Check(NAME, CONTRAINDICATED, FIELD, "the card carries no adversarial-training claim")
    test = claims["dataset"]["test"]
    if len(test_x) != test["records"] or records_root(test_x, test_y) != test["merkle_root"]:
        return Check(NAME, CONTRAINDICATED, "claims.dataset.test.merkle_root",
                     "the test split given is not the one the card measured")
    if examples.shape != test_x.shape:
        return Check(NAME, CONTRAINDICATED, f"{FIELD}.examples_merkle_root",
                     f"examples have shape {list(examples.shape)}, the test split {list(test_x.shape)}")
    if records_root(examples, test_y) != adv["examples_merkle_root"]:
        return Check(NAME, CONTRAINDICATED, f"{FIELD}.examples_merkle_root",
                     "the adversarial examples given are not the ones the card committed")
    distance = float(np.max(np.abs(examples.astype(np.float64) - test_x.astype(np.float64))))
    if distance > adv["epsilon"] + _SLACK or examples.min() < 0.0 or examples.max() > 1.0:
        return Check(NAME, CONTRAINDICATED, f"{FIELD}.epsilon",
                     f"an example lies {distance:.4g} from its test record (L-infinity) or outside "
                     f"[0, 1]; the card claims epsilon {adv['epsilon']:g}")
    measured = float(np.mean(predict(examples) == test_y))
    claimed = adv["adversarial_accuracy"]
    if abs(measured - claimed) > 0.5 / len(test_y):
        return Check(NAME, CONTRAINDICATED, f"{FIELD}.adversarial_accuracy",
                     f"the model labels {measured:.4f} of the committed examples correctly, "
                     f"the card claims {claimed:.4f}")
    return Check(NAME, AFFIRMING, f"{FIELD}.adversarial_accuracy",
                 f"adversarial accuracy {claimed:.3f} re-measured on {len(test_y)} committed PGD "
                 f"examples (L-infinity epsilon {adv['epsilon']:g}, {adv['steps']} steps); "
                 "attack strength is not re-derived")



def check_config(claims: dict) -> Check | None:
    """`adversarial_config`: the measured config's `adversarial` section and the claim
    agree (on or off, epsilon, step size, steps, train fraction); None when neither has
    adversarial training (configs measured before the section existed have none)."""
    section = claims["training"]["config"].get("adversarial")
    enabled = isinstance(section, dict) and section.get("enabled") is True
    adv = claims["defenses"].get("adversarial")
    if not enabled and adv is None:
        return None
    if adv is None:
        return Check("adversarial_config", CONTRAINDICATED, FIELD,
                     "the measured config enables adversarial training "
                     "(training.config.adversarial.enabled) but the card carries no claim")
    if not enabled:
        return Check("adversarial_config", CONTRAINDICATED, FIELD,
                     "the card claims adversarial training the measured config does not enable")
    for key in ("epsilon", "step_size", "steps", "train_fraction"):
        if section.get(key) != adv[key]:
            return Check("adversarial_config", CONTRAINDICATED, f"{FIELD}.{key}",
                         f"claims {adv[key]!r}, the measured config says {section.get(key)!r}")
    return Check("adversarial_config", AFFIRMING, FIELD,
                 f"PGD L-infinity epsilon {adv['epsilon']:g}, step {adv['step_size']:g}, "
                 f"{adv['steps']} steps, as the measured config sets")
