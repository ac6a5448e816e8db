"""`laminate dataset-inference`: dataset inference of a card's training data against a suspect."""
import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from cards.errors import LaminateError

DESCRIPTION = """\
Ask whether a suspect model was trained on a card's training data (dataset inference,
Maini et al.), black-box, as supplementary ownership evidence.

The owner hands in the card's training split (checked record by record against
claims.dataset.train.merkle_root, so only the data the attested session trained on can
serve as private records), public records of the same distribution (e.g. the test
split), and the card's own model (checked against claims.model.sha256). The arbiter
computes everything else: blind-walk distances to the decision boundary (k random
directions per noise kind, as in the authors' code), a confidence regressor fitted on
the card's model (private -> -1, public -> +1), and the one-sided Welch t-test on the
suspect's held-out records (public scored above private), reported as a p-value with
the authors' p at m = 10 records beside it.

This evidence never decides a dispute: models trained independently on the same
distribution can be flagged too, and the output says how often bench/di_study.py
measured that, and how often it flagged stolen copies.
Verify the card first (`laminate verify`); this only parses it.

Example:
  laminate dataset-inference card.cbor --model model.onnx --train train.npz \\
      --public test.npz --suspect suspect.onnx --records 200 --directions 5

Exit status: 0 flagged at --alpha; 1 not flagged; 2 usage or input error."""
TABLE = Path(__file__).with_name("conflicts.json")


def register(sub) -> None:
    """Add the `dataset-inference` subcommand to an argparse subparsers object."""
    parser = sub.add_parser("dataset-inference", help="dataset inference against a suspect "
                            "(evidence only, never decisive)", description=DESCRIPTION,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("card", type=Path, help="the card (card.cbor)")
    parser.add_argument("--model", type=Path, required=True, help="the card's model.onnx")
    parser.add_argument("--train", type=Path, required=True,
                        help="the card's training split, .npz with x and y, in measured order")
    parser.add_argument("--public", type=Path, required=True,
                        help="public records of the same distribution, .npz with x and y")
    parser.add_argument("--suspect", type=Path, required=True, help="the suspect's model.onnx")
    parser.add_argument("--records", type=int, default=200,
                        help="records per half (fit / test) from each side (default 200, "
                        "as measured by bench/di_study.py)")
    parser.add_argument("--directions", type=int, default=5,
                        help="blind-walk directions k per noise kind (default 5, as measured; "
                        "the authors used 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of records and directions")
    parser.add_argument("--alpha", type=float, default=1e-3, help="flag below this p-value")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def _npz(path: Path):
    from verifier.cli_adversarial import _load

    x, y = _load(path, "records file", ("x", "y"))
    if len(x) != len(y):
        raise LaminateError(f"{path}: x has {len(x)} rows, y has {len(y)}")
    return np.asarray(x, dtype=np.float32), np.asarray(y).astype(np.int64)


def measured_fpr() -> dict:
    """Dataset inference's measured false- and true-positive rates, from the conflicts table."""
    return json.loads(TABLE.read_text(encoding="utf-8"))["dataset_inference"]


def run(args) -> int:
    """Exit 0 when flagged at alpha, 1 when not; input errors raise LaminateError."""
    from cards import merkle
    from cards.card import open_card
    from verifier import dataset_inference as di
    from verifier.suspect import OnnxSuspect

    if not 0.0 < args.alpha < 1.0:
        raise LaminateError(f"--alpha: must be between 0 and 1, got {args.alpha}")
    if not 2 <= args.records <= 5000 or not 1 <= args.directions <= 20:
        raise LaminateError("--records must be 2..5000 and --directions 1..20")
    if not args.card.is_file():
        raise LaminateError(f"{args.card}: card not found")
    claims = open_card(args.card.read_bytes()).claims
    if not args.model.is_file():
        raise LaminateError(f"{args.model}: model file not found")
    if hashlib.sha256(args.model.read_bytes()).hexdigest() != claims["model"]["sha256"]:
        raise LaminateError(f"{args.model}: not the card's model (claims.model.sha256)")
    tx, ty = _npz(args.train)
    leaves = [di.record_leaf(row, label) for row, label in zip(tx, ty)]
    if merkle.root_of(leaves).hex() != claims["dataset"]["train"]["merkle_root"]:
        raise LaminateError(f"{args.train}: not the card's training split "
                            "(claims.dataset.train.merkle_root)")
    px, py = _npz(args.public)
    n = args.records
    if len(tx) < 2 * n or len(px) < 2 * n:
        raise LaminateError(f"--records {n}: needs {2 * n} training and public records, "
                            f"got {len(tx)} and {len(px)}")
    rng = np.random.default_rng(args.seed)
    priv, pub = rng.choice(len(tx), 2 * n, replace=False), rng.choice(len(px), 2 * n, replace=False)
    models = [OnnxSuspect(args.model), OnnxSuspect(args.suspect)]
    try:
        features = [(di.blind_walk(m.predict, tx[priv], ty[priv], k=args.directions, seed=args.seed),
                     di.blind_walk(m.predict, px[pub], py[pub], k=args.directions,
                                   seed=args.seed + 1)) for m in models]
    finally:
        for m in models:
            m.close()
    (own_priv, own_pub), (sus_priv, sus_pub) = features
    regressor = di.fit(own_priv[:n], own_pub[:n], seed=args.seed)
    result = di.test(regressor, sus_priv[n:], sus_pub[n:])
    p10 = di.p_at_m(regressor, sus_priv[n:], sus_pub[n:], min(10, n), seed=args.seed)
    fpr = measured_fpr()
    flagged = result.p_value < args.alpha
    note = (f"not decisive: at p < 1e-3 it flagged {fpr['fpr_at_1e-3']:.0%} of "
            f"{fpr['independent_models']} independent same-distribution models and "
            f"{fpr['tpr_at_1e-3']:.0%} of {fpr['stolen_models']} stolen copies ({fpr['source']})")
    if args.json:
        print(json.dumps({"p_value": result.p_value, "p_at_m10": p10, "t": result.t,
                          "flagged": flagged, "alpha": args.alpha, "note": note}))
    else:
        print(f"dataset inference: p = {result.p_value:.3g} on {n} + {n} held-out records "
              f"(p at m = 10: {p10:.3g}; {'flagged' if flagged else 'not flagged'} at alpha "
              f"{args.alpha:g}); {note}")
    return 0 if flagged else 1
