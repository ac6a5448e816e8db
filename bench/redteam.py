"""Ownership red team: writes bench/results/redteam.json and redteam.md.

Runs `laminate redteam` (all three schedules) and prints, per schedule, the measured
rates beside what the statistics predict in the same run: TPR against the verifier's
power for the card's watermark accuracy, FPR against the exact false-positive bound of
the sequential test. `--quick` runs tiny sizes into redteam-quick.json/.md (not figures to quote).
Reproducible: the same `--seed` seeds torch, numpy, the simulator's randomness (so the
victims' watermark seeds, which makes those victims unfit for release) and the accusers.
"""
import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from redteam import run as redteam  # noqa: E402
from verifier.binomial import false_positive_rate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--schedules", default="none,dp,split")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same table")
    parser.add_argument("--results", default=str(RESULTS), help="directory for the report files")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sizes = redteam.QUICK if args.quick else redteam.Sizes()
    with tempfile.TemporaryDirectory(prefix="redteam-") as work:
        report = redteam.run(Path(work), schedules=args.schedules.split(","), sizes=sizes,
                             seed=args.seed, progress=print)
    bound = false_positive_rate(redteam.TRIGGERS, 10, redteam.ALPHA)
    for s in report["schedules"]:
        m, v = s["summary"], s["victim"]
        tpr, fpr = m["tpr"]["rate"], m["fpr_independent"]["rate"]
        print(f"[{s['schedule']}] TPR {tpr:.2f} vs predicted power {v['predicted_power']:.3f} "
              f"(ratio {tpr / v['predicted_power']:.2f})" if v["predicted_power"] else
              f"[{s['schedule']}] TPR {tpr:.2f}, predicted power 0: the card warned")
        print(f"[{s['schedule']}] FPR independent {fpr:.3f} vs exact bound {bound:.2g}; "
              f"accusers {m['fpr_accusers']['shown']}/{m['fpr_accusers']['of']}")
    report["fpr_bound"] = bound
    name = "redteam-quick" if args.quick else "redteam"
    paths = redteam.write_report(report, Path(args.results), name)
    print(redteam.summary_text(report))
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
