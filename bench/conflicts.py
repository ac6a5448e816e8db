"""Bench: the conflicts matrix between defenses, on the 5,000 real MNIST digits.

Szyller and Asokan ("Conflicting Interactions Among Protection Mechanisms for Machine
Learning Models", AAAI 2023) measure how ownership defenses fare next to DP-SGD and
adversarial training. This bench reproduces the cells of their three tables that apply
here, each setting trained through the attested wrapper on mnist-5k (4,000 train /
1,000 test, the same small CNN), with the published MNIST figure beside ours:

  each defense alone     test accuracy and its own figure (watermark accuracy,
                         adversarial accuracy, dataset inference p-value)
  each with DP-SGD eps 3 and each with adversarial training (PGD, L-inf)
  split                  DP-SGD then a non-DP watermark phase (accounting "not tight")

Dataset inference (Maini et al.) is then run the way Szyller and Asokan's false-positive
study does: a teacher on chunk A of the training split, an independent model on the disjoint
chunk B, one on the test split, one on A+B; then its false-positive rate on independent
same-distribution models (trained on B) beside its true-positive rate on stolen copies
of the teacher (fine-tuned and label-extracted), as bench/di_study.py runs it alone.

Radioactive data (Sablayrolles et al.) alone, with DP-SGD and with adversarial training:
test accuracy, the white-box test's p-value and the black-box loss difference Szyller and
Asokan report, beside it the loss difference of the undefended model on the same marked
records (the control: what the marks cost a model that never saw them).

    python bench/conflicts.py           # full size (about 30 min on 2 heavily loaded cores)
    python bench/conflicts.py --quick   # digits, MLP, few epochs: about 5 min on 2 loaded cores
    python bench/conflicts.py --only-radioactive  # the undefended and radioactive rows only,
                                        # merged into the existing JSON
Writes bench/results/conflicts.json and conflicts.png (the matrix as a heat map); the
full run also records its figures as `ours` in verifier/conflicts.json.
"""
import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# (name, dp, watermark schedule or None, adversarial)
SETTINGS = [
    ("none", False, None, False),
    ("watermark", False, "joint", False),
    ("dp", True, None, False),
    ("adversarial", False, None, True),
    ("watermark+dp", True, "joint", False),
    ("watermark+adversarial", False, "joint", True),
    ("dp+adversarial", True, None, True),
    ("split", True, "split", False),
]
RADIOACTIVE = [("radioactive", False, None, False), ("radioactive+dp", True, None, False),
               ("radioactive+adversarial", False, None, True)]
# The marking: the config defaults (10% of the train records, L-infinity 0.1, 50 steps).
RADIOACTIVE_CONFIG = {"enabled": True, "fraction": 0.1, "epsilon": 0.1, "steps": 50,
                      "marking_epochs": 2}
# Published MNIST figures (Szyller and Asokan 2023), per setting: test, watermark, adversarial.
PUBLISHED = {
    "none": {"test": 0.99}, "watermark": {"test": 0.99, "watermark": 0.97},
    "dp": {"test": 0.98}, "adversarial": {"test": 0.99, "adversarial": 0.95},
    "watermark+dp": {"test": 0.97, "watermark": 0.30},
    "watermark+adversarial": {"test": 0.97, "watermark": 0.99, "adversarial": 0.88},
    "split": {"watermark": 0.9},
    "radioactive": {"test": 0.98, "loss_diff": 0.284},
    "radioactive+dp": {"test": 0.97, "loss_diff": 0.091},
    "radioactive+adversarial": {"test": 0.97, "loss_diff": 0.001, "adversarial": 0.95},
    "dataset inference": "<1e-30 alone, with DP and with adversarial training",
    "dataset inference A/B (CIFAR10)": {"A (teacher)": 1e-23, "test (original)": 0.1,
                                        "B (independent)": 1e-12, "A+B": 1e-13},
}
FULL = {"dataset": "mnist-5k", "arch": "cnn", "epochs": 6, "split_epochs": 4, "lr": 0.5,
        "pgd_steps": 2, "di_records": 150, "directions": 2}
QUICK = {"dataset": "digits", "arch": "mlp", "epochs": 4, "split_epochs": 3, "lr": 0.5,
         "pgd_steps": 2, "di_records": 100, "directions": 2}
EPSILON = 0.1


def config_for(setting, size: dict, tmp: Path) -> dict:
    _, dp, schedule, adv = setting
    return {
        "name": "bench-conflicts",
        "dataset": {"name": size["dataset"], "test_fraction": 0.2, "split_seed": 0},
        "model": {"arch": size["arch"], "hidden": [64]},
        "training": {"epochs": size["epochs"], "batch_size": 64, "lr": size["lr"],
                     "optimizer": "sgd", "seed": 0},
        "dp": {"enabled": True, "target_epsilon": 3.0, "max_grad_norm": 1.0, "delta": 1e-5}
        if dp else {"enabled": False},
        "watermark": {"enabled": True, "trigger_count": 100, "schedule": schedule,
                      "split_epochs": size["split_epochs"], "weight": 0.25}
        if schedule else {"enabled": False},
        "adversarial": {"enabled": adv, "epsilon": EPSILON, "step_size": EPSILON / 4,
                        "steps": size["pgd_steps"]},
        "radioactive": RADIOACTIVE_CONFIG if setting[0].startswith("radioactive") else {"enabled": False},
        "attestation": {"backend": "sim", "sim_dir": str(tmp / "sim")},
        "release_key": str(tmp / "release.pem"),
    }


def onnx_predict(path):
    from attest.train import _onnx_predictor
    return _onnx_predictor(path)


class DI:
    """Dataset inference with the owner's private records `private` (train records) and
    public records `public` (test records): fit on the first halves, test on the rest."""

    def __init__(self, private, public, owner_predict, size, seed=0):
        from verifier import dataset_inference as di

        self.di, self.n, self.dirs, self.seed = di, size["di_records"], size["directions"], seed
        self.private, self.public = private, public
        f_priv, f_pub = self.features(owner_predict)
        self.regressor = di.fit(f_priv[:self.n], f_pub[:self.n])

    def features(self, predict):
        n = 2 * self.n
        return (self.di.blind_walk(predict, self.private.x[:n], self.private.y[:n],
                                   k=self.dirs, seed=self.seed),
                self.di.blind_walk(predict, self.public.x[:n], self.public.y[:n],
                                   k=self.dirs, seed=self.seed + 1))

    def p_value(self, predict) -> float:
        f_priv, f_pub = self.features(predict)
        return self.di.test(self.regressor, f_priv[self.n:], f_pub[self.n:]).p_value


def train_setting(setting, size, tmp) -> dict:
    """One attested run (in a worker process) and its figures."""
    import torch
    import yaml

    from attest.train import train_from_config
    from verifier.binomial import power

    torch.set_num_threads(1)
    name = setting[0]
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config_for(setting, size, tmp)))
    started = time.perf_counter()
    result = train_from_config(path, tmp / name,
                               progress=lambda line: print(f"    {name}: {line}", flush=True))
    claims = result.claims
    wm, adv = claims["defenses"]["watermark"], claims["defenses"].get("adversarial")
    wm_acc = claims["evaluation"]["watermark_accuracy"]
    rad = claims["defenses"].get("radioactive")
    return {
            **({"radioactive_p_value": rad["p_value"], "loss_difference": rad["loss_difference"],
                "radioactive_cosines": rad["cosines"]} if rad else {}),
            "test_accuracy": claims["evaluation"]["accuracy"], "watermark_accuracy": wm_acc,
            "adversarial_accuracy": adv["adversarial_accuracy"] if adv else None,
            "epsilon": claims["defenses"]["dp"]["epsilon"] if claims["defenses"]["dp"] else None,
            "ownership_power": power(wm_acc, wm["trigger_count"], wm["classes"], 1e-6) if wm else None,
            "seconds": round(time.perf_counter() - started, 1), "model": str(result.model_path)}


def run_settings(size, tmp, rows, pool, settings=SETTINGS + RADIOACTIVE):
    futures = {setting[0]: pool.submit(train_setting, setting, size, tmp) for setting in settings}
    for name, future in futures.items():
        rows[name] = future.result()


def radioactive_control(rows, size, none_model) -> None:
    """The undefended model's loss difference on each radioactive run's marked records."""
    from attest.defenses import radioactive as radio
    from cards.radioactive import Opening

    for name, _, _, _ in RADIOACTIVE:
        out = Path(rows[name]["model"]).parent
        idx = Opening.load(out / radio.OPENING_NAME).marked_indices()
        train, _ = _split(size)
        marked = np.load(out / radio.MARKED_NAME)
        rows[name]["control_loss_difference"] = float(
            np.mean(radio.onnx_losses(none_model, train.x[idx], train.y[idx]))
            - np.mean(radio.onnx_losses(none_model, marked, train.y[idx])))


def _split(size):
    from attest import datasets as ds

    return ds.split(_load(size), 0.2, 0)


def di_on_settings(size, rows):
    """DI on the wrapper's models: private records from their own train split."""

    train, test = _shuffled(_load(size))
    di = DI(train, test, onnx_predict(rows["none"]["model"]), size)
    for name in ("none", "dp", "adversarial"):
        rows[name]["di_p_value"] = di.p_value(onnx_predict(rows[name]["model"]))
        print(f"    dataset inference on {name}: p = {rows[name]['di_p_value']:.3g}", flush=True)


def di_study(size) -> dict:
    """The A/B study (bench/di_study.py, in a worker process), as this table's p-values."""
    import di_study as study

    rows = study.study(study.QUICK if size["dataset"] == "digits" else study.FULL, workers=1,
                       progress=Path(tempfile.mkdtemp()) / "di.progress.jsonl")
    return {"chunks": {name: r["p_value"] for name, r in rows["chunks"].items()},
            "independent": [r["p_value"] for r in rows["independent"]],
            "stolen": [r["p_value"] for r in rows["stolen"]]}


def _shuffled(full):
    """The wrapper's train/test split, each in a seeded random order: the split keeps the
    dataset's order, and the MNIST file is sorted by label, so chunks taken in order
    would hold different digits (A: 0-4, B: 5-9) instead of the same distribution."""
    from attest import datasets as ds

    train, test = ds.split(full, 0.2, 0)
    rng = np.random.default_rng(11)
    return (train.subset(train.name, rng.permutation(len(train))),
            test.subset(test.name, rng.permutation(len(test))))


def _load(size):
    from attest import datasets as ds
    return ds.load_digits() if size["dataset"] == "digits" else ds.load_mnist_5k()


def rate(p_values, alpha):
    return sum(p < alpha for p in p_values) / max(len(p_values), 1)


def upper_bound(k: int, n: int, confidence: float = 0.95) -> float:
    """Exact one-sided Clopper-Pearson upper bound on a rate seen k times in n."""
    from verifier.binomial import tail

    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):   # P(X <= k; p) falls with p: bisect for 1 - confidence
        mid = (lo + hi) / 2
        if 1.0 - tail(k + 1, n, mid) > 1.0 - confidence:
            lo = mid
        else:
            hi = mid
    return hi


def cell(value, fmt=".2f"):
    return "-" if value is None else format(value, fmt)


def print_tables(rows, di_rows, size):
    print(f"\n{size['dataset']} ({size['arch']}, {size['epochs']} epochs; PGD L-inf eps {EPSILON}, "
          f"{size['pgd_steps']} steps; DP-SGD eps 3); published MNIST figures in brackets")
    print(f"{'setting':24} {'test':>12} {'watermark':>12} {'adversarial':>12} {'DI p':>10}")
    for name, r in rows.items():
        s = PUBLISHED.get(name, {})

        def both(ours, key, s=s):
            theirs = s.get(key)
            return f"{cell(ours)} [{cell(theirs)}]" if theirs is not None else f"{cell(ours)}     "
        print(f"{name:24} {both(r['test_accuracy'], 'test'):>12} "
              f"{both(r['watermark_accuracy'], 'watermark'):>12} "
              f"{both(r['adversarial_accuracy'], 'adversarial'):>12} "
              f"{cell(r.get('di_p_value'), '.2g'):>10}")
    print(f"\n{'radioactive data':24} {'test':>12} {'loss diff':>14} {'control':>8} {'p (white-box)':>14}"
          f" {'adversarial':>12}")
    for name, _, _, _ in RADIOACTIVE:
        r, s = rows.get(name), PUBLISHED[name]
        if r is None:
            continue
        print(f"{name:24} {cell(r['test_accuracy'])} [{cell(s['test'])}] "
              f"{cell(r['loss_difference'], '.3f')} [{cell(s['loss_diff'], '.3f')}] "
              f"{cell(r.get('control_loss_difference'), '.3f'):>8} {cell(r['radioactive_p_value'], '.3g'):>14} "
              f"{cell(r['adversarial_accuracy'])} [{cell(s.get('adversarial'))}]")
    print("\ndataset inference, A/B split (published: CIFAR10)")
    for name, p in di_rows["chunks"].items():
        print(f"  {name:18} p = {p:.3g}   [{PUBLISHED['dataset inference A/B (CIFAR10)'][name]:g}]")
    for kind in ("independent", "stolen"):
        ps = di_rows[kind]
        for alpha in (1e-3, 1e-6):
            k = sum(p < alpha for p in ps)
            print(f"  {kind:12} flagged at p < {alpha:g}: {k}/{len(ps)}"
                  + (f" (95% upper bound {upper_bound(k, len(ps)):.2f})" if kind == "independent" else ""))


def heat_map(rows, di_rows, path: Path, dataset: str) -> None:
    """Each defense's own figure (rows), alone and beside another defense (columns)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def get(name, key):
        return rows.get(name, {}).get(key)

    def log_p(p):
        return None if p is None else min(-np.log10(max(p, 1e-300)), 30.0) / 30.0

    figures = [
        ("watermark accuracy", [get("watermark", "watermark_accuracy"),
                                get("watermark+dp", "watermark_accuracy"),
                                get("watermark+adversarial", "watermark_accuracy"), None]),
        ("adversarial accuracy", [get("adversarial", "adversarial_accuracy"),
                                  get("dp+adversarial", "adversarial_accuracy"), None,
                                  get("watermark+adversarial", "adversarial_accuracy")]),
        ("DI -log10(p) / 30", [log_p(get("none", "di_p_value")), log_p(get("dp", "di_p_value")),
                               log_p(get("adversarial", "di_p_value")), None]),
        ("radioactive -log10(p) / 30", [log_p(get("radioactive", "radioactive_p_value")),
                                        log_p(get("radioactive+dp", "radioactive_p_value")),
                                        log_p(get("radioactive+adversarial", "radioactive_p_value")),
                                        None]),
        ("test accuracy", [get("none", "test_accuracy"), get("dp", "test_accuracy"),
                           get("adversarial", "test_accuracy"), get("watermark", "test_accuracy")]),
    ]
    matrix = np.array([[np.nan if v is None else v for v in vals] for _, vals in figures])
    fig, ax = plt.subplots(figsize=(7.6, 4.3))
    ax.imshow(matrix, cmap="RdYlGn", vmin=0, vmax=1)
    ax.set_xticks(range(4), ["alone", "with\nDP-SGD eps 3", "with adversarial\ntraining",
                             "with\nwatermark"], fontsize=8)
    ax.set_yticks(range(len(figures)), [name for name, _ in figures], fontsize=8)
    for i, j in np.ndindex(matrix.shape):
        ax.text(j, i, "-" if np.isnan(matrix[i, j]) else f"{matrix[i, j]:.2f}", ha="center", va="center")
    fpr, tpr = rate(di_rows["independent"], 1e-3), rate(di_rows["stolen"], 1e-3)
    ax.set_title(f"{dataset}: each defense's own figure, alone and beside another\n"
                 f"dataset inference at p<1e-3: {fpr:.0%} of {len(di_rows['independent'])} "
                 f"independent models, {tpr:.0%} of {len(di_rows['stolen'])} stolen copies",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def update_table(rows, di: dict) -> None:
    """Record this run's figures as `ours` in the verifier's conflicts table, and dataset
    inference's measured false-positive rate (what `laminate dataset-inference` cites)."""
    path = ROOT / "verifier" / "conflicts.json"
    doc = json.loads(path.read_text())
    ours = {"dp-joint-watermark": (rows["watermark"]["watermark_accuracy"],
                                   rows["watermark+dp"]["watermark_accuracy"]),
            "dp-split-watermark": (rows["watermark"]["watermark_accuracy"],
                                   rows["split"]["watermark_accuracy"]),
            "adversarial-watermark": (rows["adversarial"]["adversarial_accuracy"],
                                      rows["watermark+adversarial"]["adversarial_accuracy"]),
            "adversarial-joint-watermark": (rows["watermark"]["watermark_accuracy"],
                                            rows["watermark+adversarial"]["watermark_accuracy"]),
            "adversarial-dp": (rows["adversarial"]["adversarial_accuracy"],
                               rows["dp+adversarial"]["adversarial_accuracy"]),
            "radioactive-dp": (rows["radioactive"]["loss_difference"],
                               rows["radioactive+dp"]["loss_difference"]),
            "radioactive-adversarial": (rows["radioactive"]["loss_difference"],
                                        rows["radioactive+adversarial"]["loss_difference"])}
    for row in doc["conflicts"]:
        if row["id"] in ours:
            alone, together = ours[row["id"]]
            row["ours"] = {"source": "bench/results/conflicts.json", "alone": round(alone, 3),
                           "together": round(together, 3)}
    doc["dataset_inference"] = {
        "source": "bench/results/conflicts.json", "independent_models": len(di["independent"]),
        "fpr_at_1e-3": di["fpr_at_1e-3"], "fpr_upper_95_at_1e-3": di["fpr_upper_95_at_1e-3"],
        "stolen_models": len(di["stolen"]), "tpr_at_1e-3": di["tpr_at_1e-3"]}
    path.write_text(json.dumps(doc, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits and an MLP: minutes, for CI")
    parser.add_argument("--workers", type=int, default=4, help="training processes (default 4)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "conflicts.json")
    parser.add_argument("--only-radioactive", action="store_true",
                        help="train the undefended model (the control) and the radioactive rows only, "
                             "and merge them into the JSON at --out")
    parser.add_argument("--replot", action="store_true",
                        help="redraw the PNG from the JSON at --out, without training")
    args = parser.parse_args()
    if args.replot:
        figures = json.loads(args.out.read_text())
        heat_map(figures["rows"], figures["dataset_inference"], args.out.with_suffix(".png"),
                 figures["size"]["dataset"])
        if not figures["quick"]:
            update_table(figures["rows"], figures["dataset_inference"])
        return 0
    import torch

    from cards import keys

    torch.set_num_threads(1)
    size = QUICK if args.quick else FULL
    started = time.perf_counter()
    rows: dict = {}
    if args.only_radioactive:
        return only_radioactive(args, size, started)
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(args.workers) as pool:
        tmp = Path(tmp)
        keys.save_private_key(keys.generate_private_key("ed25519"), tmp / "release.pem")
        study = pool.submit(di_study, size)
        run_settings(size, tmp, rows, pool)
        print("--- dataset inference on the attested models", flush=True)
        di_on_settings(size, rows)
        di_rows = study.result()
        radioactive_control(rows, size, rows["none"]["model"])
    for r in rows.values():
        r.pop("model")
    seconds = round(time.perf_counter() - started, 1)
    print_tables(rows, di_rows, size)
    figures = {
        "quick": args.quick, "size": size, "pgd_epsilon": EPSILON, "rows": rows,
        "dataset_inference": {
            **di_rows,
            "fpr_at_1e-3": rate(di_rows["independent"], 1e-3),
            "fpr_upper_95_at_1e-3": upper_bound(sum(p < 1e-3 for p in di_rows["independent"]),
                                                len(di_rows["independent"])),
            "tpr_at_1e-3": rate(di_rows["stolen"], 1e-3),
            "fpr_at_1e-6": rate(di_rows["independent"], 1e-6),
            "tpr_at_1e-6": rate(di_rows["stolen"], 1e-6)},
        "published": PUBLISHED, "seconds": seconds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    heat_map(rows, di_rows, args.out.with_suffix(".png"), size["dataset"])
    if not args.quick:
        update_table(rows, figures["dataset_inference"])
    print(f"wrote {args.out} and {args.out.with_suffix('.png').name} in {seconds:.0f} s")
    return 0


def only_radioactive(args, size, started) -> int:
    """The radioactive rows (and the undefended control), merged into an existing run's JSON."""
    from cards import keys

    figures = json.loads(args.out.read_text())
    if figures["quick"] != args.quick:
        raise SystemExit(f"{args.out}: holds a {'quick' if figures['quick'] else 'full'} run; "
                         "pass the same --quick setting")
    rows: dict = {}
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(args.workers) as pool:
        tmp = Path(tmp)
        keys.save_private_key(keys.generate_private_key("ed25519"), tmp / "release.pem")
        run_settings(size, tmp, rows, pool, settings=[SETTINGS[0], *RADIOACTIVE])
        radioactive_control(rows, size, rows.pop("none")["model"])
    seconds = round(time.perf_counter() - started, 1)
    for name, r in rows.items():
        r.pop("model")
        figures["rows"][name] = r
    figures["radioactive_seconds"] = seconds
    figures["published"] = PUBLISHED
    print_tables(figures["rows"], figures["dataset_inference"], size)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    heat_map(figures["rows"], figures["dataset_inference"], args.out.with_suffix(".png"), size["dataset"])
    if not args.quick:
        update_table(figures["rows"], figures["dataset_inference"])
    print(f"merged the radioactive rows into {args.out} in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
