"""Ownership red team: writes bench/results/redteam.json and redteam.md.

Runs `laminate redteam` (all three schedules) and prints, per schedule, the measured
rates beside what the statistics predict in the same run: TPR against the verifier's
power for the card's watermark accuracy, FPR against the exact false-positive bound of
the sequential test. `--quick` runs tiny sizes into redteam-quick.json/.md (not figures to quote).
`--api` runs the API thieves instead: DAWN at flip rates 0.01, 0.02, 0.05 against
label-only and probability thieves, 1,000 and 10,000 queries, in-distribution and random
inputs, same and other architectures, colluding accounts, every copy judged by the
dispute rule (`redteam.api`, run by `bench/dawn.py`; `laminate redteam --api` runs the same
grid against a quickstart model); writes redteam-api.json/.md/.png.
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
    parser.add_argument("--api", action="store_true", help="the API thieves against DAWN")
    parser.add_argument("--from", dest="source", type=Path, metavar="DAWN_JSON",
                        help="with --api: tabulate a finished bench/dawn.py run instead of running it")
    args = parser.parse_args(argv)
    if args.api:
        return api_thieves(Path(args.results), quick=args.quick, source=args.source)
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


def api_thieves(results: Path, *, quick: bool, source: Path | None = None) -> int:
    """bench/dawn.py's grid (run now, or a finished run's JSON), its table as markdown and
    its match rates as a PNG."""
    import json
    import subprocess

    name = "redteam-api-quick" if quick else "redteam-api"
    out = source or results / f"{name}.json"
    if source is None:
        bench = Path(__file__).resolve().parent / "dawn.py"
        subprocess.run([sys.executable, str(bench), "--out", str(out)]
                       + (["--quick"] if quick else []), check=True)
    doc = json.loads(out.read_text())
    rows = ["| rate | queries | answers | inputs | copy | accounts | accuracy | keeps 90% | "
            "flips matched | p | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rates"]:
        for t in r["thieves"]:
            rows.append(f"| {r['rate']} | {t['queries']} | {t['answers']} | {t['inputs']} | "
                        f"{t['arch']} | {t['accounts']} | {t['accuracy']:.3f} | "
                        f"{'yes' if t['keeps_90pct'] else 'no'} | {t['matches']}/"
                        f"{t['queries_to_decide']} | {t['p_value']:.2g} | "
                        f"{'shown' if t['shown'] else 'not shown: ' + t['reason'][:60]} |")
    summary = [f"- rate {r['rate']}: TPR on copies keeping 90% {r['tpr_on_copies_keeping_90pct']}, "
               f"false positives {r['false_positives']}/{r['independent_tests']} independent, "
               f"{r['honest_client_false_positives']}/{len(r['honest_client_models'])} honest "
               f"clients' models; honest clients' accuracy cost {r['honest_accuracy_cost']}"
               for r in doc["rates"]]
    (results / f"{name}.md").write_text("# API thieves against DAWN (dispute rule, alpha "
                                        f"{doc['alpha']})\n\n" + "\n".join(summary) + "\n\n"
                                        + "\n".join(rows) + "\n")
    from redteam import api

    api.plot(doc, results / f"{name}.png", classes=10)
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
