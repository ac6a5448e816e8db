"""DAWN against API thieves: which extracted copies does a client's flip replay show, and
what do honest clients pay for the flips?

The victim is the digits model of tests/serving_kit.py behind the real server logic
(`serving.app.Server`: DAWN, receipts, log), called in process to save the shared CPU;
the grid and the judging are `redteam.api` (also `laminate redteam --api`). Thieves query through one or several client accounts, label-only or with probabilities,
1,000 or 10,000 queries, in-distribution (digits the victim never trained on, shifted
copies past 1,000) or uniform random inputs, and train a copy of the same or another
architecture (random-feature networks of several widths, or a nearest-neighbour copy).
Every copy is judged by the dispute rule (`verifier.disputes.judge_dawn_claim`): the
serving card appraised, the log head anchored before the copy is first seen, the thief
accounts' complete evidence checked against it, the DAWN opening, then the replay of their
flipped queries with the sequential binomial test at chance 1/(C-1), alpha 1e-6. False
positives: 24 independent models (3 architectures x 8 seeds, trained on true labels)
replayed against the thief's and an honest client's flips.

    python bench/dawn.py            # flip rates 0.01, 0.02, 0.05
    python bench/dawn.py --quick    # rate 0.05, 1,000-query thieves only
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from redteam import api  # noqa: E402

ALPHA = api.ALPHA
ARCHS = api.ARCHS


def queries(kind: str, count: int, seed: int) -> np.ndarray:
    import serving_kit as sk

    return api.queries(sk.split()[2][0], kind, count, seed)


def fit_targets(x, targets, *, hidden, seed, ridge, scale):
    return api.fit_targets(x, targets, hidden=hidden, seed=seed, ridge=ridge, scale=scale)


def run_rate(kit, rate, tmp, quick):
    import serving_kit as sk
    from serving.anchor import signed_head
    from verifier.policy import Policy

    served = sk.serve(Path(tmp) / f"rate-{rate}", rate=rate, kit=kit)
    _, (xt, yt), (xq, yq) = sk.split()
    # An honest client's 1,297 held-out digits (test split and pool): the cost of the
    # flips is the served accuracy against the model's own on the same inputs.
    data = api.Data(test=(xt, yt), thief_pool=xq, independent=(xq, yq),
                    honest=(np.concatenate([xt, xq]), np.concatenate([yt, yq])))
    arbiter = api.Arbiter(served.server, Policy.load(served.kit.policy_path),
                          served.state / "log.sqlite", served.kit.model_path,
                          lambda: signed_head(served.server))
    work = Path(tmp) / f"models-{rate}"
    work.mkdir()
    result = api.evaluate(served.server, arbiter, data, work,
                          grid=api.QUICK_GRID if quick else api.FULL_GRID,
                          progress=lambda line: print(line, flush=True))
    served.server.log.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "dawn.json")
    args = parser.parse_args()
    import serving_kit as sk

    rates = [0.05] if args.quick else list(api.RATES)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        kit = sk.make_kit(Path(tmp) / "kit")
        results = [run_rate(kit, rate, tmp, args.quick) for rate in rates]
    doc = {"what": __doc__.split("\n\n")[1].replace("\n", " "), "alpha": ALPHA,
           "architectures": {k: {"hidden": h, "scale": s, "ridge": r} for k, (h, s, r) in ARCHS.items()},
           "seconds": round(time.perf_counter() - started), "rates": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps([{k: r[k] for k in ("rate", "honest_accuracy_cost", "tpr_on_copies_keeping_90pct",
                                         "copies_not_shown", "false_positives", "independent_tests")}
                      for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
