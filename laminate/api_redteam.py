"""`laminate redteam --api`: API thieves against a DAWN deployment of your digits model.

The grid and the judging are `redteam.api`; this wires them to the real server logic
(`serving.app.Server`, in process) for a carded model, one deployment per flip rate.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from cards.errors import LaminateError

API_HELP = """\
With --api, instead of training watermarked victims: deploy the digits model that
`laminate quickstart --out DIR` made (pass --victim DIR) with DAWN at each --rates flip
rate, in process, and let API thieves steal it: label-only and probability answers,
1,000 and 10,000 queries, digits and uniform random inputs, the same and other
architectures, one or several colluding client accounts. Each copy is judged by the
dispute rule at alpha 1e-6 (serving card appraised under DIR/policy.yaml, log head
anchored before the copy is first seen, the thief accounts' complete evidence, the
replay of their flipped queries), as are independent models and an honest client's own
models (false positives). Writes redteam-api.json (every verdict, the honest client's
accuracy cost at each rate) and redteam-api.png (each model's match rate on the flips
against the test's decision threshold) to --out. Example:
  laminate quickstart --out qs && laminate redteam --api --victim qs --quick"""
VICTIM_FILES = ("card.cbor", "model.onnx", "release-ed25519.pem", "policy.yaml", "sim")
MAX_RATES = 5


def extend(sub) -> None:
    """Add --api to `laminate redteam` (its parser is the red team's own)."""
    p = sub.choices["redteam"]
    p.description += "\n\n" + API_HELP
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    group = p.add_argument_group("API thieves against DAWN (--api)")
    group.add_argument("--api", action="store_true",
                       help="steal a DAWN deployment through its API instead (see above)")
    group.add_argument("--victim", type=Path, metavar="DIR",
                       help="with --api: a `laminate quickstart --out DIR` folder "
                            f"({', '.join(VICTIM_FILES)})")
    group.add_argument("--rates", default="0.01,0.02,0.05",
                       help="with --api: comma-separated DAWN flip rates, each in (0, 0.5] "
                            "(default: %(default)s)")
    trained = p.get_default("func")
    p.set_defaults(func=lambda args: run(args) if args.api else trained(args))


def parse_rates(text: str) -> list[float]:
    from verifier import dawn

    rates = []
    for part in str(text).split(","):
        try:
            rate = float(part)
        except ValueError:
            raise LaminateError(f"--rates: {part.strip()!r} is not a number") from None
        if not rate > 0:
            raise LaminateError(f"--rates: {part.strip()} is not a flip rate above 0")
        rates.append(dawn.check_rate(rate, "--rates"))
    if len(set(rates)) != len(rates):
        raise LaminateError(f"--rates: {text} names a rate twice")
    if not 1 <= len(rates) <= MAX_RATES:
        raise LaminateError(f"--rates: expected 1 to {MAX_RATES} rates, got {len(rates)}")
    return rates


def check_victim(victim: Path | None) -> Path:
    if victim is None:
        raise LaminateError("--victim: required with --api (a `laminate quickstart --out DIR` folder)")
    missing = [name for name in VICTIM_FILES if not (victim / name).exists()]
    if missing:
        raise LaminateError(f"--victim {victim}: missing {', '.join(missing)} (expected the "
                            "folder `laminate quickstart --out DIR` writes)")
    from serving.deploy import model_signature

    shape, classes = model_signature(victim / "model.onnx")
    if len(shape) == 0 or math.prod(shape) != 64 or classes != 10:
        raise LaminateError(f"--victim {victim}/model.onnx: the API thieves query 8x8 digits "
                            f"(64 values, 10 classes); this model takes {shape} and has "
                            f"{classes} classes")
    return victim


def digits_data():
    """The digits as the quickstart model takes them, rows of 64: its test split for
    accuracy, the honest client and independent models; its training split (and shifted
    copies) for the thieves, so no copy is scored on inputs it queried."""
    import numpy as np

    from attest.datasets import load_digits, split
    from redteam import api

    train, test = split(load_digits(), 0.2, 0)
    rows = [np.ascontiguousarray(part.x.reshape(len(part.y), 64), np.float32)
            for part in (train, test)]
    pool = rows[0][np.random.default_rng(0).permutation(len(rows[0]))]
    return api.Data(test=(rows[1], test.y), thief_pool=pool, independent=(rows[1], test.y),
                    honest=(rows[1], test.y))


def run(args) -> int:
    from attest.session import make_out_dir
    from cards import keys
    from redteam import api
    from serving import deploy
    from serving.anchor import signed_head
    from serving.app import Server
    from serving.log import QueryLog
    from verifier.policy import Policy

    victim = check_victim(args.victim)
    rates = parse_rates(args.rates)
    out = make_out_dir(Path(args.out).resolve())
    taken = [f"deployment-{rate}" for rate in rates if (out / f"deployment-{rate}").exists()]
    if taken:
        raise LaminateError(f"--out {out}: {', '.join(taken)} exists already (each run deploys "
                            "afresh: choose a new --out)")
    policy = Policy.load(victim / "policy.yaml")
    data = digits_data()
    grid = api.QUICK_GRID if args.quick else api.FULL_GRID
    started, results = time.perf_counter(), []
    for rate in rates:
        state = out / f"deployment-{rate}"
        state.mkdir()
        deployment = deploy.start(victim / "card.cbor", victim / "model.onnx",
                                  keys.load_private_key(victim / "release-ed25519.pem"),
                                  rate=rate, sim_dir=victim / "sim", state_dir=state)
        server = Server(deployment, QueryLog(state / "log.sqlite"))
        try:
            arbiter = api.Arbiter(server, policy, state / "log.sqlite", victim / "model.onnx",
                                  lambda server=server: signed_head(server))
            if arbiter.card_problem:
                raise LaminateError(f"{victim}/policy.yaml: the deployment's serving card does "
                                    f"not verify: {arbiter.card_problem}")
            models = state / "models"
            models.mkdir()
            results.append(api.evaluate(server, arbiter, data, models, grid=grid,
                                        independents=2 if args.quick else 8,
                                        honest_models=3 if args.quick else 8))
        finally:
            server.log.close()
    doc = {"what": "API thieves against DAWN, judged by the dispute rule", "alpha": api.ALPHA,
           "victim": str(victim), "quick": bool(args.quick),
           "seconds": round(time.perf_counter() - started), "rates": results}
    (out / "redteam-api.json").write_text(json.dumps(doc, indent=2) + "\n")
    png = api.plot(doc, out / "redteam-api.png", classes=10)
    for r in results:
        print(f"rate {r['rate']}: TPR {r['tpr_on_copies_keeping_90pct']} on copies keeping 90% "
              f"of the victim's accuracy {r['victim_accuracy']}"
              + (f" (not shown: {'; '.join(r['copies_not_shown'])})" if r["copies_not_shown"] else "")
              + f"; false positives {r['false_positives']}/{r['independent_tests']} independent, "
              f"{r['honest_client_false_positives']}/{len(r['honest_client_models'])} honest "
              f"clients' models; honest client's accuracy cost {r['honest_accuracy_cost']}")
    print(f"wrote {out / 'redteam-api.json'}" + (f" and {png}" if png else
                                                 " (no PNG: matplotlib is not installed)"))
    return 0
