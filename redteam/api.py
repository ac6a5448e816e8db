"""API thieves against DAWN: which extracted copies does a client's flip replay show,
and what do honest clients pay for the flips?

Thieves query a DAWN deployment through one or several client accounts, label-only or
with probabilities, 1,000 or 10,000 queries, in-distribution (digits and one-pixel
shifted copies of them) or uniform random inputs, and train a copy: a random-feature
network of the victim's family ("same"), of another width and scale ("other", and the
smooth low-capacity "narrow"), or a nearest-neighbour copy that memorises every answer.
Every copy is judged by the dispute rule (`verifier.disputes.judge_dawn_claim`): the
serving card appraised, the log head anchored before the copy is first seen, the thief
accounts' complete evidence checked against it, the DAWN opening, then the sequential
binomial test on their flipped queries at chance 1/(C-1). False positives: independent
models trained on true labels, and honest clients' own models, replayed the same way.

The deployment is passed in (anything with ``answer(client, x)`` and the deployment
``d`` of `serving.app.Server`), so the bench and `laminate redteam --api` run the same
grid against the real server logic, in process.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ALPHA = 1e-6
RATES = (0.01, 0.02, 0.05)
# name -> (hidden width, first-layer scale, ridge)
ARCHS = {"same": (4096, 0.25, 0.1), "other": (3000, 0.5, 0.03), "narrow": (1024, 0.125, 0.3)}
# (queries, answers, inputs, copy, accounts)
QUICK_GRID = [(1000, "labels", "in-distribution", "same", 1),
              (1000, "labels", "in-distribution", "other", 1),
              (1000, "probabilities", "in-distribution", "same", 1),
              (1000, "labels", "in-distribution", "same", 4),
              (1000, "labels", "random", "same", 1)]
FULL_GRID = QUICK_GRID + [(10000, "labels", "in-distribution", "narrow", 1),
                          (10000, "probabilities", "in-distribution", "narrow", 1),
                          (10000, "labels", "in-distribution", "narrow", 8),
                          (10000, "labels", "random", "narrow", 1),
                          (10000, "labels", "in-distribution", "knn", 1),
                          (10000, "probabilities", "in-distribution", "knn", 1),
                          (10000, "labels", "in-distribution", "knn", 8)]


def save_onnx(path, nodes, inits, *, input_shape, classes, name) -> Path:
    """A checked ONNX model (opset 17) from float "input" [batch, *input_shape] to
    "logits" [batch, classes]; a non-flat input is reshaped to rows first."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if len(input_shape) != 1:
        inits = [*inits, numpy_helper.from_array(
            np.array([-1, math.prod(input_shape)], np.int64), "flat_shape")]
        nodes = [helper.make_node("Reshape", ["input", "flat_shape"], ["flat"])] + [
            helper.make_node(n.op_type, ["flat" if i == "input" else i for i in n.input],
                             list(n.output), **{a.name: helper.get_attribute_value(a)
                                                for a in n.attribute}) for n in nodes]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *input_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


@dataclass
class RandomFeatures:
    """One hidden ReLU layer of random features, output layer fit by ridge regression in
    closed form: seconds to train on a shared CPU, and as wide as asked."""
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray

    def predict(self, x):
        x = np.asarray(x, np.float32).reshape(len(x), -1)
        return (np.maximum(x @ self.w1 + self.b1, 0) @ self.w2).argmax(axis=1)

    def export(self, path, input_shape) -> Path:
        from onnx import helper, numpy_helper

        inits = [numpy_helper.from_array(np.asarray(a, np.float32), n) for a, n in (
            (self.w1, "W1"), (self.b1, "b1"), (self.w2, "W2"),
            (np.zeros(self.w2.shape[1]), "b2"))]
        nodes = [helper.make_node("Gemm", ["input", "W1", "b1"], ["h"]),
                 helper.make_node("Relu", ["h"], ["r"]),
                 helper.make_node("Gemm", ["r", "W2", "b2"], ["logits"])]
        return save_onnx(path, nodes, inits, input_shape=input_shape,
                         classes=self.w2.shape[1], name="random-features")


class NearestNeighbour:
    """A copy that answers with the stored answer of the nearest queried input."""

    def __init__(self, x, targets):
        self.x, self.targets = x.astype(np.float32), targets.astype(np.float32)

    def predict(self, x):
        x = np.asarray(x, np.float32).reshape(len(x), -1)
        d = (self.x ** 2).sum(1) - 2 * x @ self.x.T
        return self.targets[d.argmin(axis=1)].argmax(axis=1)

    def export(self, path, input_shape) -> Path:
        from onnx import helper, numpy_helper

        inits = [numpy_helper.from_array(a, n) for a, n in (
            (np.ascontiguousarray(self.x.T), "PT"), ((self.x ** 2).sum(1), "P2"),
            (np.float32(2.0).reshape(()), "two"), (self.targets, "T"))]
        nodes = [helper.make_node("MatMul", ["input", "PT"], ["s"]),
                 helper.make_node("Mul", ["s", "two"], ["s2"]),
                 helper.make_node("Sub", ["P2", "s2"], ["d"]),
                 helper.make_node("ArgMin", ["d"], ["i"], axis=1, keepdims=0),
                 helper.make_node("Gather", ["T", "i"], ["logits"], axis=0)]
        return save_onnx(path, nodes, inits, input_shape=input_shape,
                         classes=self.targets.shape[1], name="nearest-neighbour")


def fit_targets(x, targets, *, hidden, seed, ridge, scale) -> RandomFeatures:
    """Random features fit to soft or one-hot targets; primal form past 4,096 records."""
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, scale, (x.shape[1], hidden)).astype(np.float32)
    b1 = rng.normal(0, 0.5, hidden).astype(np.float32)
    h = np.maximum(x @ w1 + b1, 0).astype(np.float64)
    if len(x) <= 4096:
        w2 = h.T @ np.linalg.solve(h @ h.T + ridge * np.eye(len(x)), targets)
    else:
        w2 = np.linalg.solve(h.T @ h + ridge * np.eye(hidden), h.T @ targets)
    return RandomFeatures(w1, b1, w2.astype(np.float32))


def fit_arch(arch: str, x, targets, seed: int):
    if arch == "knn":
        return NearestNeighbour(np.asarray(x).reshape(len(x), -1), targets)
    hidden, scale, ridge = ARCHS[arch]
    return fit_targets(x, targets, hidden=hidden, seed=seed, ridge=ridge, scale=scale)


def queries(pool: np.ndarray, kind: str, count: int, seed: int) -> np.ndarray:
    """``count`` thief inputs, rows of 64: uniform random in [0, 1), or ``pool`` (8x8
    images as rows) followed by its one-pixel shifted copies (new inputs, still digits)."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.random((count, pool.shape[1]), dtype=np.float32)
    images, out = pool.reshape(-1, 8, 8), [pool]
    for dy, dx in [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]:
        if sum(len(o) for o in out) >= count:
            break
        out.append(np.roll(images, (dy, dx), axis=(1, 2)).reshape(-1, 64))
    return np.concatenate(out)[:count].astype(np.float32)


def shaped(server, rows):
    """Rows of 64 values as the served model takes them (the serving card's input shape)."""
    return np.asarray(rows, np.float32).reshape(len(rows), *server.d.card.statement["input_shape"])


def extract(server, x, accounts, answer_kind: str, arch: str, seed: int):
    """Query through the accounts in batches of 100; train the copy on the answers."""
    classes = server.d.classes
    server.d.probabilities = answer_kind == "probabilities"
    targets = []
    try:
        for n, start in enumerate(range(0, len(x), 100)):
            out = server.answer(accounts[n % len(accounts)], shaped(server, x[start:start + 100]))
            targets.append(np.asarray(out["probabilities"]) if answer_kind == "probabilities"
                           else np.eye(classes)[out["labels"]])
    finally:
        server.d.probabilities = False
    return fit_arch(arch, x, np.concatenate(targets), seed)


class Arbiter:
    """Judges DAWN claims by the dispute rule, as the card service does: the serving card
    appraised under ``policy``, the deployment's log head (``signed_head()``) anchored in a
    dispute log, each copy first seen after it, the evidence of the thief's accounts
    checked against the anchored head, then the replay."""

    def __init__(self, server, policy, log_path, victim_path, signed_head):
        from redteam.accusers import DisputeLog
        from verifier.serving_card import appraise_serving_card

        self.server, self.log, self.log_path = server, DisputeLog(), Path(log_path)
        self.victim_path, self.signed_head = Path(victim_path), signed_head
        result, _ = appraise_serving_card(server.d.card_bytes, policy=policy,
                                          model_sha256=server.d.model_sha256)
        self.card_problem = None if result.status != "contraindicated" else "; ".join(
            f"{c.check}: {c.reason}" for c in result.failed())
        self.evidence: dict = {}
        self.head: bytes | None = None
        self.head_index = 0

    def anchor(self) -> None:
        """Sign and log the deployment's head once every query was answered."""
        self.head = self.signed_head()
        self.head_index = self.log.append("serving-head", hashlib.sha256(self.head).hexdigest())

    def judge(self, clients, copy, path: Path):
        from verifier import disputes
        from verifier.dawn_evidence import build_evidence
        from verifier.suspect import OnnxSuspect

        d = self.server.d
        if tuple(clients) not in self.evidence:
            self.evidence[tuple(clients)] = build_evidence(self.log_path, self.head, d.card,
                                                           list(clients))
        path = copy.export(path, d.card.statement["input_shape"])
        seen = self.log.observe(hashlib.sha256(path.read_bytes()).hexdigest())
        return disputes.judge_dawn_claim(
            card_problem=self.card_problem, card=d.card, anchor_index=self.head_index,
            anchor=self.head, suspect_index=seen, evidence=self.evidence[tuple(clients)],
            opening=d.opening, victim=OnnxSuspect(self.victim_path),
            suspect=OnnxSuspect(path), alpha=ALPHA, run_all=True)


@dataclass
class Data:
    """The rows (64 values, as the model takes them) each party uses."""
    test: tuple          # victim accuracy: (x, y)
    thief_pool: np.ndarray
    independent: tuple   # what independent models train on: (x, y)
    honest: tuple        # an honest client's own labelled inputs: (x, y)


def _outcome(judged) -> dict:
    r = judged.ownership
    return {"shown": judged.won, "flips": r.trigger_count if r else 0,
            "matches": r.matches if r else 0, "queries_to_decide": r.queries if r else 0,
            "p_value": r.p_value if r else 1.0}


def evaluate(server, arbiter: Arbiter, data: Data, work: Path, *, grid, independents: int = 8,
             honest_models: int = 8, progress=print) -> dict:
    """One flip rate (the deployment's): the thief grid, independent models, an honest
    client's cost and own models."""
    rate, victim = server.d.rate, arbiter.victim_path
    from verifier.suspect import OnnxSuspect

    xt, yt = data.test
    victim_accuracy = float((OnnxSuspect(victim).predict(shaped(server, xt)) == yt).mean())
    xh, yh = data.honest
    served = [server.answer("honest", shaped(server, xh[i:i + 256]))["labels"]
              for i in range(0, len(xh), 256)]
    model_accuracy = float((OnnxSuspect(victim).predict(shaped(server, xh)) == yh).mean())
    served_accuracy = float((np.concatenate(served) == yh).mean())
    copies = []
    for i, (count, answer_kind, kind, arch, n_accounts) in enumerate(grid):
        accounts = [f"thief{i}-{a}" for a in range(n_accounts)]
        copies.append((accounts, extract(server, queries(data.thief_pool, kind, count, i),
                                         accounts, answer_kind, arch, seed=100 + i)))
    arbiter.anchor()          # every answer is in the log before any copy is first seen
    thieves = []
    for i, ((count, answer_kind, kind, arch, n_accounts), (accounts, copy)) in \
            enumerate(zip(grid, copies)):
        accuracy = float((copy.predict(xt) == yt).mean())
        judged = arbiter.judge(accounts, copy, work / f"thief{i}-{rate}.onnx")
        thieves.append({"queries": count, "answers": answer_kind, "inputs": kind, "arch": arch,
                        "accounts": n_accounts, "accuracy": round(accuracy, 4),
                        "keeps_90pct": accuracy >= 0.9 * victim_accuracy,
                        "reason": judged.reason, **_outcome(judged)})
        progress(f"rate {rate}: {count} {answer_kind} {kind} {arch} x{n_accounts}: accuracy "
                 f"{accuracy:.3f}, {thieves[-1]['matches']}/{thieves[-1]['queries_to_decide']} flips "
                 f"matched, {'shown' if judged.won else 'not shown: ' + judged.reason[-160:]}")
    xi, yi = data.independent
    onehot = np.eye(server.d.classes)
    others = []
    for a, arch in enumerate(("same", "other", "narrow")):
        for seed in range(independents):
            copy = fit_arch(arch, xi, onehot[yi], 1000 + 8 * a + seed)
            for clients in (["thief0-0"], ["honest"]):
                judged = arbiter.judge(clients, copy, work / f"ind-{arch}-{seed}.onnx")
                others.append({"arch": arch, "seed": seed, "client": clients[0], **_outcome(judged)})
    honest = []
    for seed in range(honest_models):
        arch = ("same", "other", "narrow")[seed % 3]
        judged = arbiter.judge(["honest"], fit_arch(arch, xh, onehot[yh], 2000 + seed),
                               work / f"honest-{seed}.onnx")
        honest.append({"arch": arch, "seed": seed, **_outcome(judged)})
    kept = [t for t in thieves if t["keeps_90pct"]]
    return {"rate": rate, "victim_accuracy": round(victim_accuracy, 4),
            "honest_inputs": len(yh), "honest_model_accuracy": round(model_accuracy, 4),
            "honest_served_accuracy": round(served_accuracy, 4),
            "honest_accuracy_cost": round(model_accuracy - served_accuracy, 4),
            "thieves": thieves,
            "tpr_on_copies_keeping_90pct": (sum(t["shown"] for t in kept) / len(kept)
                                            if kept else None),
            "copies_not_shown": [f"{t['queries']} {t['answers']} {t['inputs']} {t['arch']} "
                                 f"x{t['accounts']}" for t in kept if not t["shown"]],
            "honest_client_models": honest,
            "honest_client_false_positives": sum(r["shown"] for r in honest),
            "independents": others, "independent_tests": len(others),
            "false_positives": sum(r["shown"] for r in others)}


def plot(doc: dict, path: Path, classes: int) -> Path | None:
    """Every judged model's match rate on the replayed flips against the number replayed,
    with the sequential test's decision threshold (matches needed / flips) at alpha."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from verifier.binomial import SequentialTest

    fig, axes = plt.subplots(1, len(doc["rates"]), figsize=(4.5 * len(doc["rates"]), 4),
                             squeeze=False, sharey=True)
    for ax, r in zip(axes[0], doc["rates"]):
        groups = {"copies keeping 90%": [t for t in r["thieves"] if t["keeps_90pct"]],
                  "other thieves": [t for t in r["thieves"] if not t["keeps_90pct"]],
                  "independent models": r["independents"],
                  "honest clients' models": r["honest_client_models"]}
        most = max([t["queries_to_decide"] for g in groups.values() for t in g] + [10])
        for (label, items), marker, colour in zip(groups.items(), "o^sx", ("C3", "C1", "C0", "C2")):
            shown = [t for t in items if t["queries_to_decide"]]
            ax.scatter([t["queries_to_decide"] for t in shown],
                       [t["matches"] / t["queries_to_decide"] for t in shown],
                       marker=marker, color=colour, alpha=0.6, label=label)
        # The test's thresholds depend on how many flips the client has (its n_max): the
        # curve is drawn for the largest, the strictest at every look.
        flips = max([t.get("flips", 0) for g in groups.values() for t in g] + [most])
        test = SequentialTest.create(flips, classes - 1, doc["alpha"])
        n = np.arange(1, most + 1)
        ax.plot(n, [test.thresholds[k] / k if test.thresholds[k] <= k else np.nan for k in n],
                color="black", label=f"decision threshold (alpha {doc['alpha']:g}, {flips} flips)")
        ax.axhline(1 / (classes - 1), color="grey", linestyle="--", label="chance 1/(C-1)")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("flips replayed")
        ax.set_title(f"flip rate {r['rate']}")
    axes[0][0].set_ylabel("flips matched / flips replayed")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.text(0.01, 0.01, "not drawn: models whose client has too few flips for any number of "
             "matches to reach alpha (the test does not start)", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
