"""DAWN against API thieves: which extracted copies does a client's flip replay show, and
what do honest clients pay for the flips?

The victim is the digits model of tests/serving_kit.py behind the real server logic
(`serving.app.Server`: DAWN, receipts, log), called in process to save the shared CPU.
Thieves query through one or several client accounts, label-only or with probabilities,
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


class Arbiter:
    """Judges DAWN claims by the dispute rule (`verifier.disputes.judge_dawn_claim`), as
    the service does: the serving card appraised under the kit's policy, the deployment's
    log head anchored in a dispute log, each copy first seen after it, the evidence of the
    thief's accounts checked against the anchored head, then the replay."""

    def __init__(self, served):
        from redteam.accusers import DisputeLog
        from verifier.policy import Policy
        from verifier.serving_card import appraise_serving_card

        self.served, self.log = served, DisputeLog()
        result, _ = appraise_serving_card(served.deployment.card_bytes,
                                          policy=Policy.load(served.kit.policy_path),
                                          model_sha256=served.deployment.model_sha256)
        self.card_problem = None if result.status != "contraindicated" else "; ".join(
            f"{c.check}: {c.reason}" for c in result.failed())
        self.evidence: dict = {}
        self.head = None

    def anchor(self):
        """Sign and log the deployment's head once every query was answered."""
        import hashlib

        from serving.anchor import signed_head

        self.head = signed_head(self.served.server)
        self.head_index = self.log.append("serving-head", hashlib.sha256(self.head).hexdigest())

    def judge(self, clients, net, tmp, name):
        import hashlib

        import serving_kit as sk
        from verifier import disputes
        from verifier.dawn_evidence import build_evidence
        from verifier.suspect import OnnxSuspect

        served = self.served
        key = tuple(clients)
        if key not in self.evidence:
            self.evidence[key] = build_evidence(served.state / "log.sqlite", self.head,
                                                served.deployment.card, list(clients))
        path = Path(tmp) / f"{name}.onnx"
        path = net.export(path) if hasattr(net, "export") else sk.export(net, path)
        seen = self.log.observe(hashlib.sha256(path.read_bytes()).hexdigest())
        return disputes.judge_dawn_claim(
            card_problem=self.card_problem, card=served.deployment.card,
            anchor_index=self.head_index, anchor=self.head, suspect_index=seen,
            evidence=self.evidence[key], opening=served.deployment.opening,
            victim=OnnxSuspect(served.kit.model_path), suspect=OnnxSuspect(path),
            alpha=ALPHA, run_all=True)


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
    thieves, nets = [], []
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
        net = extract(served, queries(kind, count, seed=i), accounts, answer_kind, arch,
                      seed=100 + i)
        nets.append((accounts, net, time.perf_counter() - started))
    arbiter = Arbiter(served)
    arbiter.anchor()          # every answer is in the log before any copy is first seen
    for i, ((count, answer_kind, kind, arch, n_accounts), (accounts, net, spent)) in \
            enumerate(zip(grid, nets)):
        started = time.perf_counter()
        accuracy = float((net.predict(xt) == yt).mean())
        judged = arbiter.judge(accounts, net, tmp, f"thief{i}-{rate}")
        result = judged.ownership
        thieves.append({"queries": count, "answers": answer_kind, "inputs": kind, "arch": arch,
                        "accounts": n_accounts, "accuracy": round(accuracy, 4),
                        "keeps_90pct": accuracy >= 0.9 * victim_accuracy,
                        "shown": judged.won, "reason": judged.reason,
                        "flips_replayed": result.trigger_count if result else 0,
                        "queries_to_decide": result.queries if result else 0,
                        "matches": result.matches if result else 0,
                        "p_value": result.p_value if result else 1.0,
                        "seconds": round(spent + time.perf_counter() - started, 1)})
        print(json.dumps({"rate": rate, **thieves[-1]}), flush=True)
    independents = []
    thief_accounts = ["thief0-0"]
    for a, arch in enumerate(("same", "other", "narrow")):
        for seed in range(8):
            hidden, scale, ridge = ARCHS[arch]
            net = fit_targets(xq, np.eye(10)[yq], hidden=hidden, seed=1000 + 8 * a + seed,
                              ridge=ridge, scale=scale)
            for clients in (thief_accounts, ["carol"]):
                j = arbiter.judge(clients, net, tmp, f"ind-{arch}-{seed}")
                r = j.ownership
                independents.append({"arch": arch, "seed": seed, "client": clients[0],
                                     "shown": j.won, "matches": r.matches if r else 0,
                                     "queries": r.queries if r else 0})
    # Honest clients' own models: carol trains on her own 1,297 labelled digits (the very
    # inputs she queried) and the owner replays her flips against them.
    honest_models = []
    for seed in range(8):
        arch = ("same", "other", "narrow")[seed % 3]
        hidden, scale, ridge = ARCHS[arch]
        net = fit_targets(xh, np.eye(10)[yh], hidden=hidden, seed=2000 + seed, ridge=ridge,
                          scale=scale)
        j = arbiter.judge(["carol"], net, tmp, f"honest-{seed}")
        honest_models.append({"arch": arch, "seed": seed, "shown": j.won,
                              "matches": j.ownership.matches if j.ownership else 0,
                              "queries": j.ownership.queries if j.ownership else 0})
    served.server.log.close()
    copies = [t for t in thieves if t["keeps_90pct"]]
    return {"rate": rate, "victim_accuracy": round(victim_accuracy, 4),
            "honest_inputs": len(yh), "honest_model_accuracy": round(model_accuracy, 4),
            "honest_served_accuracy": round(served_accuracy, 4),
            "honest_accuracy_cost": round(model_accuracy - served_accuracy, 4),
            "thieves": thieves,
            "tpr_on_copies_keeping_90pct": (sum(t["shown"] for t in copies) / len(copies)
                                            if copies else None),
            "honest_client_models": honest_models,
            "honest_client_false_positives": sum(r["shown"] for r in honest_models),
            "independents": independents,
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
