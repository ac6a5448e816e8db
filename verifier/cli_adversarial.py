"""`laminate adversarial`: re-measure a card's adversarial accuracy on the released model."""
import argparse
from pathlib import Path

import numpy as np

from cards.errors import LaminateError, printable

DESCRIPTION = """\
Re-check a card's adversarial-training claim (claims.defenses.adversarial) without torch.

Training with `adversarial.enabled` writes adversarial.npy beside the model: the PGD
examples of the test split, seeded by the attested session and committed in the card by
Merkle root. Given the model, those examples and the test split (an .npz with arrays x
and y, the split the card measured), this checks that the split and the examples are
the committed ones, that each example lies within the claimed L-infinity epsilon of its
test record, and that the model's accuracy on them is the claimed figure. It does not
re-run PGD (onnxruntime gives no gradients), so the figure is an upper bound on the
model's robust accuracy, measured on valid perturbations.

Verify the card first (`laminate verify CARD --policy POLICY`); this only parses it.

Exit status: 0 the claim re-measures; 1 it does not; 2 usage or input error."""
MAX_NPY_BYTES = 512 << 20


def register(sub) -> None:
    """Add the `adversarial` subcommand to an argparse subparsers object."""
    parser = sub.add_parser("adversarial", help="re-measure a card's adversarial accuracy",
                            description=DESCRIPTION,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("card", type=Path, help="the card (card.cbor)")
    parser.add_argument("--model", type=Path, required=True, help="the released model.onnx")
    parser.add_argument("--examples", type=Path, required=True, help="adversarial.npy")
    parser.add_argument("--test", type=Path, required=True,
                        help="the test split as .npz with arrays x (float32) and y (labels)")
    parser.set_defaults(func=run)


def _load(path: Path, what: str, keys=None):
    if not path.is_file():
        raise LaminateError(f"{path}: {what} not found")
    if path.stat().st_size > MAX_NPY_BYTES:
        raise LaminateError(f"{path}: {what} is over {MAX_NPY_BYTES >> 20} MiB")
    try:
        if keys is None:
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise LaminateError(f"{path}: missing array {missing[0]!r} (expected x and y)")
            return [z[k] for k in keys]
    except (OSError, ValueError) as exc:
        raise LaminateError(f"{path}: not a readable {what}: {exc}") from None


def run(args) -> int:
    """Exit 0 when the claim re-measures, 1 when it does not; input errors raise."""
    from cards.card import open_card
    from verifier import adversarial
    from verifier.suspect import OnnxSuspect

    if not args.card.is_file():
        raise LaminateError(f"{args.card}: card not found")
    card = open_card(args.card.read_bytes())
    if card.claims["defenses"].get("adversarial") is None:
        raise LaminateError(f"{args.card}: claims.defenses.adversarial: the card carries no "
                            "adversarial-training claim")
    examples = np.asarray(_load(args.examples, "examples file"), dtype=np.float32)
    x, y = _load(args.test, "test split", ("x", "y"))
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y).astype(np.int64)
    if len(x) != len(y):
        raise LaminateError(f"{args.test}: x has {len(x)} rows, y has {len(y)}")
    model = OnnxSuspect(args.model)
    try:
        check = adversarial.check(card.claims, predict=model.predict, test_x=x, test_y=y,
                                  examples=examples)
    finally:
        model.close()
    print(printable(f"{check.check}: {check.status} ({check.field}): {check.reason}"))
    return 0 if check.status == "affirming" else 1
