"""`laminate radioactive`: check a card's radioactive-data claim against the owner's opening."""
import argparse
from pathlib import Path

import numpy as np

from cards.errors import LaminateError

DESCRIPTION = """\
Re-check a card's radioactive-data claim (claims.defenses.radioactive) without torch.

Training with `radioactive.enabled` writes radioactive.opening (the seed the attestation
module drew, its salt and parameters; keep it secret) and radioactive.npy (the marked
records) beside the model. Given the opening, this checks that it opens the card's
commitment, that the carriers it derives are the ones the card digested, and that the
card's p-value is what the exact formula gives for its cosines (per class
P(cos >= c) = 0.5 I_{1-c^2}((d-1)/2, 1/2), combined by Fisher's method). Given also the
marked records and the train split (an .npz with arrays x and y, the split the card
measured), it checks they are the committed records, at the indices the seed derives,
each within the claimed L-infinity epsilon of its original.

It does not re-derive the cosines or the loss difference: they need the networks'
features and logits. Verify the card first (`laminate verify CARD --policy POLICY`).

  laminate radioactive out/card.cbor --opening out/radioactive.opening \\
      --marked out/radioactive.npy --train train.npz

Exit status: 0 every check affirms; 1 one does not (the mark not detected is a warning,
exit 1 too); 2 usage or input error."""


def register(sub) -> None:
    """Add the `radioactive` subcommand to an argparse subparsers object."""
    parser = sub.add_parser("radioactive", help="check a card's radioactive-data claim",
                            description=DESCRIPTION,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("card", type=Path, help="the card (card.cbor)")
    parser.add_argument("--opening", type=Path, required=True, help="radioactive.opening")
    parser.add_argument("--marked", type=Path, help="radioactive.npy (needs --train)")
    parser.add_argument("--train", type=Path,
                        help="the train split as .npz with arrays x (float32) and y (labels)")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Exit 0 when every check affirms, 1 otherwise; input errors raise."""
    from cards import radioactive as scheme
    from cards.card import open_card
    from verifier import radioactive
    from verifier.cli_adversarial import _load

    if (args.marked is None) != (args.train is None):
        raise LaminateError("--marked and --train: give both, or neither")
    if not args.card.is_file():
        raise LaminateError(f"{args.card}: card not found")
    card = open_card(args.card.read_bytes())
    if card.claims["defenses"].get("radioactive") is None:
        raise LaminateError(f"{args.card}: claims.defenses.radioactive: the card carries no "
                            "radioactive-data claim")
    opening = scheme.Opening.load(args.opening)
    checks = [*radioactive.checks(card.claims), radioactive.check_opening(card.claims, opening)]
    if args.marked is not None:
        marked = np.asarray(_load(args.marked, "marked records file"), dtype=np.float32)
        x, y = _load(args.train, "train split", ("x", "y"))
        x, y = np.asarray(x, dtype=np.float32), np.asarray(y).astype(np.int64)
        if len(x) != len(y):
            raise LaminateError(f"{args.train}: x has {len(x)} rows, y has {len(y)}")
        checks.append(radioactive.check_marked(card.claims, opening, x, y, marked))
    for check in checks:
        print(f"{check.check}: {check.status} ({check.field}): {check.reason}")
    return 0 if all(c.status == "affirming" for c in checks) else 1
