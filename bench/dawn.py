"""DAWN against API thieves: which extracted copies does a client's flip replay show, and
what do honest clients pay for the flips?

The victim is the digits model of tests/serving_kit.py behind the real server logic
(`serving.app.Server`: DAWN, receipts, log), called in process to save the shared CPU.
Thieves query through one or several client accounts, label-only or with probabilities,
1,000 or 10,000 queries, in-distribution (digits the victim never trained on, shifted
copies past 1,000) or uniform random inputs, and train a copy of the same or another
architecture (random-feature networks of several widths, or a nearest-neighbour copy).
The owner replays the thief accounts' flipped queries (union of the accounts) against
the copy with the sequential binomial test at chance 1/(C-1), alpha 1e-6. False
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

ALPHA = 1e-6
# name -> (hidden width, first-layer scale, ridge): the victim's own family and another;
# "knn" is a 1-nearest-neighbour copy over the thief's answers (another architecture
# that memorises every answer, at any query count).
ARCHS = {"same": (4096, 0.25, 0.1), "other": (3000, 0.5, 0.03), "narrow": (1024, 0.125, 0.3)}


class NearestNeighbour:
    """A copy that answers with the stored answer of the nearest queried input."""

    def __init__(self, x, targets):
        self.x, self.targets = x.astype(np.float32), targets.astype(np.float32)

    def predict(self, x):
        d = (self.x ** 2).sum(1) - 2 * x @ self.x.T
        return self.targets[d.argmin(axis=1)].argmax(axis=1)

    def export(self, path):
        from onnx import helper, numpy_helper

        import serving_kit as sk

        inits = [numpy_helper.from_array(a, n) for a, n in (
            (np.ascontiguousarray(self.x.T), "PT"), ((self.x ** 2).sum(1), "P2"),
            (np.float32(2.0).reshape(()), "two"), (self.targets, "T"))]
        nodes = [helper.make_node("MatMul", ["input", "PT"], ["s"]),
                 helper.make_node("Mul", ["s", "two"], ["s2"]),
                 helper.make_node("Sub", ["P2", "s2"], ["d"]),
                 helper.make_node("ArgMin", ["d"], ["i"], axis=1, keepdims=0),
                 helper.make_node("Gather", ["T", "i"], ["logits"], axis=0)]
        return sk.cardkit.save_onnx_classifier(path, nodes, inits, input_shape=[64],
                                               classes=10, name="nearest-neighbour")


def queries(kind: str, count: int, seed: int) -> np.ndarray:
    import serving_kit as sk

    _, _, (xq, _) = sk.split()
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.random((count, 64), dtype=np.float32)
    images, out = xq.reshape(-1, 8, 8), [xq]
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    for dy, dx in shifts:       # shifted digits: still in distribution, new inputs
        if sum(len(o) for o in out) >= count:
            break
        out.append(np.roll(images, (dy, dx), axis=(1, 2)).reshape(-1, 64))
    return np.concatenate(out)[:count].astype(np.float32)


def extract(served, x, accounts, answer_kind, arch, seed):
    """Query through the accounts in batches of 100; train the copy on the answers."""

    served.server.d.probabilities = answer_kind == "probabilities"
    targets = []
    for n, start in enumerate(range(0, len(x), 100)):
        out = served.server.answer(accounts[n % len(accounts)], x[start:start + 100])
        targets.append(np.asarray(out["probabilities"]) if answer_kind == "probabilities"
                       else np.eye(10)[out["labels"]])
    served.server.d.probabilities = False
    if arch == "knn":
        return NearestNeighbour(x, np.concatenate(targets))
    hidden, scale, ridge = ARCHS[arch]
    return fit_targets(x, np.concatenate(targets), hidden=hidden, seed=seed, ridge=ridge,
                       scale=scale)


def fit_targets(x, targets, *, hidden, seed, ridge, scale):
    """serving_kit.fit with soft or one-hot targets; primal form past 4,096 records."""
    import serving_kit as sk

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, scale, (64, hidden)).astype(np.float32)
    b1 = rng.normal(0, 0.5, hidden).astype(np.float32)
    h = np.maximum(x @ w1 + b1, 0).astype(np.float64)
    if len(x) <= 4096:
        w2 = h.T @ np.linalg.solve(h @ h.T + ridge * np.eye(len(x)), targets)
    else:
        w2 = np.linalg.solve(h.T @ h + ridge * np.eye(hidden), h.T @ targets)
    return sk.Net(w1, b1, w2.astype(np.float32))


def replay(served, clients, net, tmp, name):
    import serving_kit as sk
    from verifier import dawn_ownership
    from verifier.suspect import OnnxSuspect

    served.server.log.flush()
    rows = [r for c in clients for r in dawn_ownership.client_rows(served.state / "log.sqlite", c)]
    path = Path(tmp) / f"{name}.onnx"
    path = net.export(path) if hasattr(net, "export") else sk.export(net, path)
    return dawn_ownership.dawn_ownership_test(
        served.deployment.card, served.deployment.opening, rows,
        OnnxSuspect(served.kit.model_path), OnnxSuspect(path), alpha=ALPHA)


def run_rate(kit, rate, tmp, quick):
    import serving_kit as sk

    served = sk.serve(Path(tmp) / f"rate-{rate}", rate=rate, kit=kit)
    _, (xt, yt), (xq, yq) = sk.split()
    victim_accuracy = float((sk.victim_model().predict(xt) == yt).mean())
    # An honest client's 1,297 held-out digits (test split and pool): the cost of the
    # flips is the served accuracy against the model's own on the same inputs.
    xh, yh = np.concatenate([xt, xq]), np.concatenate([yt, yq])
    honest = [served.server.answer("carol", xh[i:i + 256])["labels"] for i in range(0, len(xh), 256)]
    served_accuracy = float((np.concatenate(honest) == yh).mean())
    model_accuracy = float((sk.victim_model().predict(xh) == yh).mean())
    thieves = []
    grid = [(1000, "labels", "in-distribution", "same", 1), (1000, "labels", "in-distribution", "other", 1),
            (1000, "probabilities", "in-distribution", "same", 1),
            (1000, "labels", "in-distribution", "same", 4), (1000, "labels", "random", "same", 1)]
    if not quick:
        grid += [(10000, "labels", "in-distribution", "narrow", 1),
                 (10000, "probabilities", "in-distribution", "narrow", 1),
                 (10000, "labels", "in-distribution", "narrow", 8),
                 (10000, "labels", "random", "narrow", 1),
                 (10000, "labels", "in-distribution", "knn", 1),
                 (10000, "probabilities", "in-distribution", "knn", 1),
                 (10000, "labels", "in-distribution", "knn", 8)]
    for i, (count, answer_kind, kind, arch, n_accounts) in enumerate(grid):
        started = time.perf_counter()
        accounts = [f"thief{i}-{a}" for a in range(n_accounts)]
        x = queries(kind, count, seed=i)
        net = extract(served, x, accounts, answer_kind, arch, seed=100 + i)
        accuracy = float((net.predict(xt) == yt).mean())
        result = replay(served, accounts, net, tmp, f"thief{i}-{rate}")
        thieves.append({"queries": count, "answers": answer_kind, "inputs": kind, "arch": arch,
                        "accounts": n_accounts, "accuracy": round(accuracy, 4),
                        "keeps_90pct": accuracy >= 0.9 * victim_accuracy,
                        "shown": result.shown, "flips_replayed": result.trigger_count,
                        "queries_to_decide": result.queries, "matches": result.matches,
                        "p_value": result.p_value, "seconds": round(time.perf_counter() - started, 1)})
        print(json.dumps({"rate": rate, **thieves[-1]}), flush=True)
    independents = []
    thief_accounts = ["thief0-0"]
    for a, arch in enumerate(("same", "other", "narrow")):
        for seed in range(8):
            hidden, scale, ridge = ARCHS[arch]
            net = fit_targets(xq, np.eye(10)[yq], hidden=hidden, seed=1000 + 8 * a + seed,
                              ridge=ridge, scale=scale)
            for clients in (thief_accounts, ["carol"]):
                r = replay(served, clients, net, tmp, f"ind-{arch}-{seed}")
                independents.append({"arch": arch, "seed": seed, "client": clients[0],
                                     "shown": r.shown, "matches": r.matches, "queries": r.queries})
    served.server.log.close()
    copies = [t for t in thieves if t["keeps_90pct"]]
    return {"rate": rate, "victim_accuracy": round(victim_accuracy, 4),
            "honest_inputs": len(yh), "honest_model_accuracy": round(model_accuracy, 4),
            "honest_served_accuracy": round(served_accuracy, 4),
            "honest_accuracy_cost": round(model_accuracy - served_accuracy, 4),
            "thieves": thieves,
            "tpr_on_copies_keeping_90pct": (sum(t["shown"] for t in copies) / len(copies)
                                            if copies else None),
            "independent_tests": len(independents),
            "false_positives": sum(r["shown"] for r in independents),
            "independent_max_match_rate": max(r["matches"] / r["queries"] for r in independents
                                              if r["queries"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "dawn.json")
    args = parser.parse_args()
    import serving_kit as sk

    rates = [0.05] if args.quick else [0.01, 0.02, 0.05]
    with tempfile.TemporaryDirectory() as tmp:
        kit = sk.make_kit(Path(tmp) / "kit")
        results = [run_rate(kit, rate, tmp, args.quick) for rate in rates]
    doc = {"what": __doc__.split("\n\n")[1].replace("\n", " "), "alpha": ALPHA,
           "architectures": {k: {"hidden": h, "scale": s, "ridge": r} for k, (h, s, r) in ARCHS.items()},
           "rates": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps([{k: r[k] for k in ("rate", "honest_accuracy_cost", "tpr_on_copies_keeping_90pct",
                                         "false_positives", "independent_tests")} for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
