"""Trigger set, EWE and margin-trained EWE side by side: who is shown, what it costs.

Per dataset (digits; the 5,000 MNIST digits) and per scheme, trains a victim through
the attested wrapper (simulator), a no-watermark baseline, stolen copies (Knockoff
extraction with in-distribution and out-of-distribution queries at 1,000 and 10,000
queries into the same and another architecture, Tramèr et al.'s label-only adaptive
retraining and equation solving from probabilities, extraction then fine-tuning or
pruning, pruning of idle neurons, fine-pruning, Neural Cleanse) and independent models on
disjoint records, and runs each scheme's ownership test at alpha 1e-6. A stolen copy
counts for the TPR when it keeps >= 90% of the victim's accuracy. Writes
bench/results/ewe.json and ewe.png (match rate against the decision threshold);
``--schemes`` and ``--name`` run parts in separate processes, ``--combine`` joins them.
Suspects are queried as torch modules (the labels an ONNX export would give).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from redteam import suspects as sus  # noqa: E402
from redteam import thieves as th  # noqa: E402

ALPHA = 1e-6
RETAIN = 0.9
SCHEMES = ("trigger", "ewe", "margin")


class Suspect:
    batch_size = 100

    def __init__(self, model):
        self.model, self.name = model, "suspect"

    def predict(self, x):
        return th.predict(self.model, x)


def partition(name: str, seed: int = 0):
    from attest import datasets as ds

    data = ds.load_digits() if name == "digits" else ds.load_mnist_5k()
    order = np.random.default_rng(seed).permutation(len(data))
    n_test = len(data) // 5
    test, rest = order[:n_test], order[n_test:]
    victim, pool = rest[: len(rest) // 2], rest[len(rest) // 2:]
    return (data.x[victim], data.y[victim]), (data.x[pool], data.y[pool]), (data.x[test], data.y[test])


def train_victim(victim, test, scheme: str | None, epochs: int, dp: str | None, tmp: Path, seed: int):
    from attest.backend import open_backend
    from attest.train import train
    from cards import keys

    config = {"name": "victim", "dataset": {"name": "bench", "classes": 10},
              "model": {"arch": "mlp", "hidden": [64]},
              "training": {"epochs": epochs, "batch_size": 64, "lr": 1e-2, "optimizer": "adam", "seed": seed},
              "dp": {"enabled": dp is not None, "target_epsilon": 3.0 if dp else None},
              "watermark": {"enabled": scheme is not None, "scheme": scheme or "trigger",
                            "trigger_count": 100, "schedule": dp or "joint", "split_epochs": 5},
              "attestation": {"backend": "sim", "sim_dir": str(tmp / "sim")}}
    torch.manual_seed(seed)
    model = th.fresh("mlp", victim[0].shape[1:], 10, seed)
    out = tmp / f"{scheme}-{dp}-{time.monotonic_ns()}"
    backend = open_backend("sim", sim_dir=tmp / "sim")
    try:
        r = train(model, victim, test, config, out_dir=out, backend=backend,
                  release_key=keys.generate_private_key("ed25519"), progress=lambda _line: None)
    finally:
        backend.close()
    if scheme is None:
        return None, r, None
    from cards.ewe import load_opening

    return r.claims["defenses"]["watermark"], r, load_opening(r.opening_path)


def verdict(opening, claim, model):
    from verifier.ownership import ownership_test

    x, y = opening.triggers()
    rate = float(np.mean(th.predict(model, x) == y))
    res = ownership_test(opening, claim, Suspect(model), alpha=ALPHA)
    return res.shown, rate, res.queries, res.p_value


def suspects(victim_model, own, test, shape, s):
    """(name, model) of every stolen copy."""
    vp = lambda x: th.predict(victim_model, x)  # noqa: E731
    out = [("as-is", victim_model)]
    for budget in s["budgets"]:
        for kind in ("in", "ood"):
            for arch in ("mlp", "cnn"):
                if kind == "ood" and arch == "cnn":
                    continue
                m = th.knockoff(vp, own[0], budget=budget, kind=kind, arch=arch, shape=shape,
                                classes=10, epochs=s["epochs"], seed=budget + len(arch))
                out.append((f"knockoff-{kind}-{budget}-{arch}", m))
    first = s["budgets"][0]
    adaptive = sus.extract_labels(sus.LabelApi(Suspect(victim_model)), own[0], budget=first, arch="mlp", epochs=s["epochs"], seed=21)
    out.append((f"adaptive-{first}-mlp", adaptive.model))
    solved = sus.solve_equations(lambda x: sus.probabilities(victim_model, x), own[0], budget=first,
                                 seed=22, shape=shape)
    out.append((f"equation-solving-{first}", solved.model))
    base = dict(out)[f"knockoff-in-{first}-mlp"]
    out.append(("knockoff+finetune", th.fit(th.copy.deepcopy(base), *own, epochs=3, seed=5, lr=1e-3)))
    out.append(("knockoff+prune-30", th.magnitude_prune(base, 0.3)))
    out.append(("prune-idle-50", th.prune_idle(victim_model, own[0], 0.5)))
    out.append(("fine-prune-50", th.fine_prune(victim_model, *own, fraction=0.5, epochs=3, seed=6)))
    nc, _ = th.neural_cleanse(victim_model, own[0][:300], own[1][:300], 10, steps=s["nc_steps"], seed=7, epochs=3)
    out.append(("neural-cleanse", nc))
    return out


def run_dataset(name, s, tmp, schemes=SCHEMES):
    victim, pool, test = partition(name)
    shape = victim[0].shape[1:]
    half = len(pool[0]) // 2
    own = (pool[0][:half], pool[1][:half])          # the thief's records
    indep_data = (pool[0][half:], pool[1][half:])   # independent developers' records
    if s.get("dp_only"):
        return {"schemes": {}, "ewe_dp": dp_victims(victim, test, own, shape, s, tmp)}
    _, base, _ = train_victim(victim, test, None, s["victim_epochs"], None, tmp, 0)
    result = {"baseline_accuracy": base.claims["evaluation"]["accuracy"], "schemes": {}}
    independents = []
    for i in range(s["independents"]):
        arch = ("mlp", "cnn", "mlp-deep")[i % 3]
        independents.append(th.fit(th.fresh(arch, shape, 10, 100 + i), *indep_data,
                                   epochs=s["epochs"], seed=100 + i))
    for scheme in schemes:
        t0 = time.monotonic()
        claim, r, opening = train_victim(victim, test, scheme, s["victim_epochs"], None, tmp, 0)
        from attest.train import _onnx_predictor

        onnx = _onnx_predictor(r.model_path)
        vmodel = _torch_from_onnx_run(r, shape)
        acc = r.claims["evaluation"]["accuracy"]
        rows = []
        for sname, model in suspects(vmodel, own, test, shape, s):
            sacc = float(np.mean(th.predict(model, test[0]) == test[1]))
            fid = float(np.mean(th.predict(model, test[0]) == onnx(test[0])))
            shown, rate, q, p = verdict(opening, claim, model)
            rows.append({"suspect": sname, "accuracy": sacc, "fidelity": fid, "counts": sacc >= RETAIN * acc,
                         "shown": shown, "match_rate": rate, "queries": q, "p_value": p})
        ind = [dict(zip(("shown", "match_rate", "queries", "p_value"), verdict(opening, claim, m)))
               for m in independents]
        counted = [x for x in rows if x["counts"]]
        result["schemes"][scheme] = {
            "victim_accuracy": acc, "watermark_accuracy": r.claims["evaluation"]["watermark_accuracy"],
            "accuracy_cost_points": 100 * (result["baseline_accuracy"] - acc),
            "suspects": rows, "independents": ind,
            "tpr": sum(x["shown"] for x in counted) / max(1, len(counted)), "counted": len(counted),
            "fpr": sum(x["shown"] for x in ind) / max(1, len(ind)), "independent_count": len(ind),
            "seconds": time.monotonic() - t0}
        if scheme == "ewe" and s["dp"]:
            result["schemes"]["ewe"]["dp"] = dp_victims(victim, test, own, shape, s, tmp)
    return result


def dp_victims(victim, test, own, shape, s, tmp) -> dict:
    """EWE under DP-SGD (epsilon 3), joint and split: the victim, its card's privacy
    accounting, and whether it and a 1,000-query extraction copy are shown."""
    out = {}
    for sched in ("joint", "split"):
        t0 = time.monotonic()
        c2, r2, o2 = train_victim(victim, test, "ewe", s["victim_epochs"], sched, tmp, 0)
        m2 = _torch_from_onnx_run(r2, shape)
        ko = th.knockoff(lambda x, m=m2: th.predict(m, x), own[0], budget=1000, kind="in", arch="mlp",
                         shape=shape, classes=10, epochs=s["epochs"], seed=11)
        out[sched] = {
            "accuracy": r2.claims["evaluation"]["accuracy"],
            "watermark_accuracy": r2.claims["evaluation"]["watermark_accuracy"],
            "epsilon": r2.claims["defenses"]["dp"]["epsilon"],
            "privacy_accounting": r2.claims["defenses"]["dp"]["privacy_accounting"],
            "dp_note": r2.claims["defenses"]["dp"].get("note"),
            "victim_shown": verdict(o2, c2, m2)[0], "knockoff_1000": verdict(o2, c2, ko)[:2],
            "knockoff_1000_accuracy": float(np.mean(th.predict(ko, test[0]) == test[1])),
            "seconds": time.monotonic() - t0}
    return out


def _torch_from_onnx_run(r, shape):
    """The released weights as a torch module (the thieves need gradients)."""
    import onnx
    from onnx import numpy_helper

    model = th.fresh("mlp", shape, 10, 0)
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(r.model_path)).graph.initializer}
    state = model.state_dict()
    for k in state:
        match = [v for n, v in inits.items() if n.endswith(k)]
        if match:
            state[k] = torch.from_numpy(match[0].copy())
    model.load_state_dict(state)
    return model.eval()


def _least_rate(scheme: str) -> float:
    from verifier import binomial, ewe_null

    if scheme != "trigger":
        return (ewe_null.keys_needed(10, 10, ALPHA) or 10) / 100
    return binomial.SequentialTest.create(100, 10, ALPHA).thresholds[100] / 100


def plot(report, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["datasets"])
    fig, axes = plt.subplots(len(names), len(SCHEMES), figsize=(5 * len(SCHEMES), 4 * len(names)),
                             squeeze=False)
    grid = np.linspace(0, 1, 101)
    for i, d in enumerate(names):
        for j, scheme in enumerate(SCHEMES):
            r = report["datasets"][d]["schemes"].get(scheme)
            ax = axes[i][j]
            if r is None:
                ax.set_title(f"{d} / {scheme}: not run")
                continue
            stolen = [x["match_rate"] for x in r["suspects"] if x["counts"]]
            ind = [x["match_rate"] for x in r["independents"]]
            ax.plot(grid, [np.mean([v >= g for v in stolen]) for g in grid], label="stolen (>=90% acc)")
            ax.plot(grid, [np.mean([v >= g for v in ind]) for g in grid], label="independent")
            ax.axvline(_least_rate(scheme), color="k", ls="--", label="least rate that can be shown")
            ax.set_title(f"{d} / {scheme}: TPR {r['tpr']:.2f}, FPR {r['fpr']:.2f}")
            ax.set_xlabel("match-rate threshold")
            ax.set_ylabel("share of models at or above")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def combine(parts: list) -> dict:
    """One report from partial ones: per dataset, the schemes of every part (a later part
    wins a scheme both ran, keeping an earlier part's DP rows when it has none), each
    scheme with the sizes of the run that measured it; the baseline of the first part
    naming the dataset."""
    report = {k: parts[0][k] for k in ("alpha", "retain", "sizes")}
    report["datasets"] = {}
    for part in parts:
        for d, r in part["datasets"].items():
            into = report["datasets"].setdefault(d, {**r, "schemes": {}})
            into.pop("ewe_dp", None)
            for name, row in r["schemes"].items():
                old = into["schemes"].get(name, {})
                into["schemes"][name] = {**({"dp": old["dp"]} if "dp" in old else {}),
                                         "sizes": row.get("sizes", part["sizes"]), **row}
            if "ewe_dp" in r:
                into["schemes"]["ewe"]["dp"] = r["ewe_dp"]
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    ap.add_argument("--datasets", default="digits,mnist-5k")
    ap.add_argument("--no-dp", action="store_true", help="skip the DP-SGD victims")
    ap.add_argument("--dp-only", action="store_true",
                    help="only the EWE victims under DP-SGD (joint, split), for --combine")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--epochs", type=int, default=None, help="victim and thief epochs (default 15)")
    ap.add_argument("--name", default=None, help="result file name (default ewe, ewe-quick)")
    ap.add_argument("--schemes", default=",".join(SCHEMES), help="comma-separated from "
                    f"{', '.join(SCHEMES)} (default: all)")
    ap.add_argument("--combine", default=None, metavar="A.json,B.json",
                    help="join partial result files (per dataset, per scheme) into --name, no training")
    a = ap.parse_args(argv)
    out = Path(a.out)
    name = a.name or ("ewe-quick" if a.quick else "ewe")
    if a.combine:
        report = combine([json.loads(Path(p).read_text()) for p in a.combine.split(",")])
        (out / f"{name}.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
        plot(report, out / f"{name}.png")
        print(f"wrote {out / name}.json and .png")
        return 0
    schemes = [x for x in a.schemes.split(",") if x]
    if not schemes or any(x not in SCHEMES for x in schemes):
        ap.error(f"--schemes: choose from {', '.join(SCHEMES)}")
    s = ({"victim_epochs": 3, "epochs": 3, "independents": 3, "budgets": [200], "nc_steps": 10, "dp": False}
         if a.quick else {"victim_epochs": 15, "epochs": 15, "independents": 24, "budgets": [1000, 10000],
                          "nc_steps": 60, "dp": not a.no_dp})
    if a.epochs:
        s.update(victim_epochs=a.epochs, epochs=a.epochs)
    s["dp_only"] = a.dp_only
    torch.set_num_threads(1)
    report = {"alpha": ALPHA, "retain": RETAIN, "sizes": s, "datasets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for d in a.datasets.split(","):
            report["datasets"][d] = run_dataset(d, s, Path(tmp), schemes)
            print(d, json.dumps({k: {kk: v[kk] for kk in ("tpr", "fpr", "victim_accuracy", "accuracy_cost_points")}
                                 for k, v in report["datasets"][d]["schemes"].items()}), flush=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    plot(report, out / f"{name}.png")
    print(f"wrote {out / name}.json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
