"""`laminate redteam`: measure the ownership test's error rates instead of assuming them.

From one watermarked victim trained on digits through the attested wrapper (per
schedule: no DP, DP-SGD, DP then a non-DP watermark phase), build stolen copies,
independent models and false accusers, and judge every claim the way a dispute does
(card, commitment order, opening, ownership test at the policy's alpha). Every suspect is
exported to ONNX and queried labels-only, as an arbiter would. Torch is imported inside
the command only, so `laminate verify` never loads it.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from redteam.report import summarize, summary_text, write_report

SCHEDULES = {
    # name: (dp enabled, watermark schedule)
    "none": (False, "joint"),
    "dp": (True, "joint"),
    "split": (True, "split"),
}
ALPHA = 1e-6
TARGET_EPSILON = 3.0
TRIGGERS = 100
RETAIN = 0.9   # a stolen model counts for the TPR if it keeps >= 90% of victim accuracy
SCHEMES = ("trigger", "ewe", "margin")


@dataclass(frozen=True)
class Sizes:
    """How much work each part does; --quick shrinks everything but the trigger count."""

    victim_epochs: int = 30
    split_epochs: int = 5
    epochs: int = 40            # attacker and independent-developer training
    independents: int = 24
    budget: int = 1000          # extraction query budget
    grind_tries: int = 1000
    pgd_steps: int = 40
    nc_steps: int = 60          # Neural Cleanse optimisation steps per class


QUICK = Sizes(victim_epochs=8, split_epochs=3, epochs=8, independents=5, budget=200,
              grind_tries=30, pgd_steps=10, nc_steps=5)


def register(sub) -> None:
    p = sub.add_parser(
        "redteam", help="measure the ownership test's TPR/FPR against stolen models, "
        "independent models and false accusers",
        description="Trains a watermarked digits victim through the attested wrapper (per "
        "schedule), then judges stolen copies, independent models and false accusers the "
        "way a dispute does. Stolen copies: white-box (as is, fine-tuned, pruned, weight "
        "noise, distilled), extraction through the released model's API (Tramer et al.'s "
        "adaptive retraining on labels and equation solving on probabilities; Knockoff "
        "extraction with own in-distribution records or out-of-distribution queries, at "
        "the budget and 10x, into an MLP and a CNN, then fine-tuned or pruned) and "
        "watermark removal (idle-neuron pruning, fine-pruning, Neural Cleanse). A copy "
        "counts for the TPR when it keeps >= 90% of the victim's accuracy. "
        "Writes redteam.json and redteam.md to --out. Runs with the "
        "same --seed give the same table: the simulator's randomness (the victims' "
        "watermark seeds) is seeded too, so those victims must never be released.")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (minutes on a busy machine): for smoke tests, not for figures")
    p.add_argument("--out", default="redteam-out", help="output directory (default: %(default)s)")
    p.add_argument("--schedules", default="none,dp,split",
                   help="comma-separated from none, dp, split (default: %(default)s)")
    p.add_argument("--scheme", default="trigger", choices=SCHEMES,
                   help="the victims' watermark: trigger (random trigger set), ewe (entangled "
                   "watermark, Jia et al.) or margin (margin-trained EWE, Kim et al.); the "
                   "false accusers are that scheme's (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of every torch/numpy choice, of the simulator's randomness and "
                   "of the accusers' openings (default: %(default)s)")
    p.set_defaults(func=_command)


def _command(args) -> int:
    from cards.errors import LaminateError

    schedules = [s.strip() for s in args.schedules.split(",") if s.strip()]
    unknown = [s for s in schedules if s not in SCHEDULES]
    if unknown or not schedules:
        raise LaminateError(f"--schedules: unknown {', '.join(unknown) or '(empty)'} "
                            f"(choose from {', '.join(SCHEDULES)})")
    report = run(Path(args.out), schedules=schedules, sizes=QUICK if args.quick else Sizes(),
                 seed=args.seed, progress=print, scheme=args.scheme)
    paths = write_report(report, Path(args.out))
    print(summary_text(report))
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


# ---------------------------------------------------------------- the evaluation

def run(out: Path, *, schedules, sizes: Sizes, seed: int = 0, progress=print,
        scheme: str = "trigger") -> dict:
    """The whole evaluation; returns the report (also the JSON written to disk)."""
    import torch

    from attest.session import make_out_dir
    from redteam import accusers as acc
    from redteam import independent as ind
    from redteam import suspects as sus

    torch.set_num_threads(1)
    started = time.monotonic()
    make_out_dir(out)
    part = sus.digits_partition(seed)
    progress(f"digits: victim {len(part.y_victim)}, pool {len(part.y_pool)}, "
             f"test {len(part.y_test)} records")
    independents = ind.build_independent(part.x_pool, part.y_pool, count=sizes.independents,
                                         epochs=sizes.epochs, seed=seed)
    independent_files = [(m.name, f"{m.arch}, {m.records} pool records",
                          sus.export_onnx(m.model, out / f"{m.name}.onnx"))
                         for m in independents]
    progress(f"trained {len(independents)} independent models")
    surrogates = acc.surrogates(part.x_pool, part.y_pool, epochs=sizes.epochs, seed=seed + 7)
    results = [_schedule(name, out / name, part, independent_files, surrogates, sizes, seed,
                         progress, scheme) for name in schedules]
    return {"alpha": ALPHA, "scheme": scheme, "trigger_count": TRIGGERS, "retain": RETAIN, "seed": seed,
            "sizes": asdict(sizes), "quick": sizes == QUICK,
            "elapsed_s": round(time.monotonic() - started, 1), "schedules": results}


def _schedule(name, out, part, independent_files, surrogate_models, sizes, seed, progress,
              scheme="trigger"):
    """One victim (one schedule) and every row of its table."""
    import numpy as np

    from cards import keys
    from cards.ewe import load_opening
    from enclave_sim.device import SeededRandom, SimDevice
    from redteam import accusers as acc
    from redteam import ewe_accusers as ewe_acc
    from redteam import suspects as sus
    from redteam.stolen import build as build_stolen
    from verifier.appraise import appraise
    from verifier.policy import Policy
    from verifier.suspect import OnnxSuspect

    out.mkdir(parents=True, exist_ok=True)
    dp, wm_schedule = SCHEDULES[name]
    sim_dir = out / "sim"
    victim_key, thief_key = keys.generate_private_key(), keys.generate_private_key()
    victim_model = sus.build_arch("mlp", seed)
    victim = _train(victim_model, (part.x_victim, part.y_victim), part, out / "victim",
                    sim_dir, victim_key, dp=dp, schedule=wm_schedule,
                    epochs=sizes.victim_epochs, split_epochs=sizes.split_epochs, seed=seed,
                    random_seed=seed_bytes(seed, name, "victim"), start="random", scheme=scheme)
    _check_same(victim_model, victim.model_path, part.x_test)
    # The thief's re-watermarked copy (trained now, registered later in the log).
    thief = _train(sus.as_is(victim_model).model, (part.x_pool, part.y_pool), part,
                   out / "thief", sim_dir, thief_key, dp=False, schedule="joint",
                   epochs=max(5, sizes.victim_epochs // 2), split_epochs=1, seed=seed + 6,
                   lr=5e-3, weight=0.5, random_seed=seed_bytes(seed, name, "thief"), scheme=scheme)
    opening = load_opening(victim.opening_path)
    card = victim.card_bytes
    wm_claim = acc.watermark_claim_of(card)
    params = opening.parameters
    policy = Policy.from_mapping({
        "policy_id": "redteam-arbiter", "allow_backends": ["sim"],
        "trusted_roots": [SimDevice(sim_dir).root_certificate_pem().decode()],
        "trusted_release_keys": [keys.public_pem(k).decode() for k in (victim_key, thief_key)],
        # the arbiter pins the wrapper both parties ran (one release, unless the wrapper
        # was edited between the two runs)
        "reference_values": {"code": sorted({r.claims["training"]["code"]["wrapper_sha256"]
                                             for r in (victim, thief)})},
        "ownership": {"alpha": ALPHA}}, source="redteam-arbiter")
    appraisal = appraise(card, policy=policy, model_path=victim.model_path)
    power_check = next((c for c in appraisal.checks if c.check == "watermark_power"), None)
    evaluation = victim.claims["evaluation"]
    victim_acc = evaluation["accuracy"]
    predicted_power = _power(params, evaluation["watermark_accuracy"])
    progress(f"[{name}] victim: accuracy {victim_acc:.3f}, watermark accuracy "
             f"{evaluation['watermark_accuracy']:.2f}, predicted power {predicted_power:.3f}")

    log = acc.DisputeLog()
    log.register_card(wm_claim["commitment"], _sha256(victim.model_path))
    victim_claim = acc.Claim("owner", "the victim's genuine claim", card, opening)
    rows = []

    def judge_row(group, suspect_name, attack, path, claim, queries=0, judged=None):
        j = judged or acc.judge(claim, path, _sha256(path), log, policy, alpha=ALPHA)
        suspect = OnnxSuspect(path)
        accuracy = float(np.mean(suspect.predict(part.x_test) == part.y_test))
        x, y = opening.triggers()
        wm_rate = float(np.mean(suspect.predict(np.asarray(x, np.float32)) == y))
        test = j.ownership if j.ownership is not None and j.ownership.queries else None
        row = {"group": group, "suspect": suspect_name, "attack": attack,
               "claim": claim.strategy, "accuracy": round(accuracy, 4),
               "retains": accuracy >= RETAIN * victim_acc, "steal_queries": queries,
               "victim_watermark_rate": round(wm_rate, 3),
               "test": test and {"matches": test.matches, "queries": test.queries,
                                 "match_rate": round(test.match_rate, 3),
                                 "p_value": test.p_value},
               "verdict": j.verdict, "stopped_by": j.stopped_by,
               "checks": {k: {"passed": ok, "reason": why} for k, (ok, why) in j.checks.items()},
               "test_alone": {"verdict": j.alone.verdict, "p_value": j.alone.p_value,
                              "matches": j.alone.matches, "queries": j.alone.queries}}
        rows.append(row)
        return row

    # Malicious suspects: the owner's claim against each stolen copy.
    victim_file = victim.model_path
    stolen = build_stolen(victim_model, victim_file, part, sizes, seed)
    for s in stolen:
        path = sus.export_onnx(s.model, out / f"stolen-{s.name}.onnx")
        judge_row("stolen", s.name, s.attack, path, victim_claim, s.queries)

    # The thief registers its re-watermarked stolen copy: a genuine card
    # whose commitment precedes its model by one log entry. Owner and thief both claim
    # the thief's copy; the earliest passing commitment wins.
    log.register_card(acc.watermark_claim_of(thief.card_bytes)["commitment"],
                      _sha256(thief.model_path))
    thief_claim = acc.Claim("late-commitment", "thief's genuine card on its re-watermarked "
                            "copy, committed after the victim's", thief.card_bytes,
                            load_opening(thief.opening_path))
    path = thief.model_path
    owner_j, thief_j = acc.dispute([victim_claim, thief_claim], path, _sha256(path), log,
                                   policy, alpha=ALPHA)
    judge_row("stolen", "thief-rewatermarked", "stolen copy re-trained through the wrapper "
              "with the thief's own watermark (owner and thief both claim)", path,
              victim_claim, judged=owner_j)
    judge_row("accuser", "thief-rewatermarked", thief_claim.description, path, thief_claim,
              judged=thief_j)
    # The laundering thief registers the victim's exact file under its own genuine card
    # before the owner registers; both claim the victim's model.
    launderer = _train(sus.as_is(victim_model).model, (part.x_pool, part.y_pool), part,
                       out / "launderer", sim_dir, thief_key, dp=False, schedule="joint", epochs=1,
                       split_epochs=1, seed=seed + 8, lr=1e-300,
                       random_seed=seed_bytes(seed, name, "launderer"), scheme=scheme)
    if launderer.model_path.read_bytes() != victim_file.read_bytes():
        raise RuntimeError("the laundered model is not byte-identical to the victim's")
    early = acc.DisputeLog()
    early.register_card(acc.watermark_claim_of(launderer.card_bytes)["commitment"],
                        _sha256(launderer.model_path))
    early.register_card(wm_claim["commitment"], _sha256(victim_file))
    laundering = acc.laundering(launderer.card_bytes, load_opening(launderer.opening_path))
    owner_j, launder_j = acc.dispute([victim_claim, laundering], victim_file,
                                     _sha256(victim_file), early, policy, alpha=ALPHA)
    judge_row("stolen", "laundered-first", "the victim's file under a laundering thief's card "
              "registered before the owner's (owner and thief both claim)", victim_file,
              victim_claim, judged=owner_j)
    judge_row("accuser", "victim", laundering.description, victim_file, laundering,
              judged=launder_j)
    progress(f"[{name}] {len(stolen) + 2} stolen models judged")

    # Independent models: the owner's claim against each innocent model.
    for model_name, what, path in independent_files:
        judge_row("independent", model_name, what, path, victim_claim)
    progress(f"[{name}] {len(independent_files)} independent models judged")

    # False accusers against innocent models: the victim's own model and two independents.
    targets = [("victim", victim_file), *[(n, p) for n, p in (
        (independent_files[i][0], independent_files[i][2]) for i in (0, 3 % len(independent_files)))]]
    rand = SeededRandom(seed_bytes(seed, name, "accusers"))
    xp, yp = part.x_pool, part.y_pool
    for target_name, path in targets:
        log.observe(_sha256(path))
        suspect = OnnxSuspect(path)
        if scheme == "trigger":
            claims = [
                acc.wrong_opening(card, params, rand),
                acc.ground_seed(suspect, params, card, sizes.grind_tries, rand),
                acc.suspect_labels(suspect, params, log, rand),
                acc.adversarial(surrogate_models, params, log, eps=0.25, steps=sizes.pgd_steps,
                                rand=rand),
            ]
        else:
            claims = [
                ewe_acc.wrong_opening(card, params, xp, yp, rand),
                # each search its own evaluation (one suspect's deadline bounds one search)
                ewe_acc.ground_seed(OnnxSuspect(path), params, card, xp, yp, sizes.grind_tries,
                                    rand),
                ewe_acc.chosen_records(OnnxSuspect(path), params, xp, yp, log, rand),
                ewe_acc.adversarial(surrogate_models, params, xp, yp, log, eps=0.25,
                                    steps=sizes.pgd_steps, rand=rand),
            ]
        for claim in claims:
            judge_row("accuser", target_name, claim.description, path, claim)
    claim = acc.url_thief(thief.card_bytes, load_opening(thief.opening_path), _sha256(victim_file))
    judge_row("accuser", "victim", claim.description, victim_file, claim)
    progress(f"[{name}] false accusers judged")

    return {
        "schedule": name, "dp": dp, "watermark_schedule": wm_schedule,
        "victim": {"accuracy": victim_acc, "watermark_accuracy": evaluation["watermark_accuracy"],
                   "watermark_commitment": wm_claim["commitment"],
                   "epsilon": (victim.claims["defenses"]["dp"] or {}).get("epsilon"),
                   "privacy_accounting": (victim.claims["defenses"]["dp"] or {}).get(
                       "privacy_accounting"),
                   "appraisal": appraisal.status,
                   "power_check": power_check and {"status": power_check.status,
                                                   "reason": power_check.reason},
                   "predicted_power": predicted_power},
        "summary": summarize(rows), "rows": rows}


def _power(params: dict, accuracy: float) -> float:
    """The verifier's power for this watermark at the measured accuracy (either scheme)."""
    from verifier import binomial, ewe_null

    if "keys" in params:
        return ewe_null.power(accuracy, params["keys"], params["per_key"], params["classes"], ALPHA)
    return binomial.power(accuracy, TRIGGERS, params["classes"], ALPHA)


def seed_bytes(seed: int, *labels: str) -> bytes:
    """The seeded randomness of one part of the run (a victim's simulator, the accusers),
    distinct per part so no two share a stream."""
    return hashlib.sha256("\0".join(["laminate-redteam", str(seed), *labels]).encode()).digest()


def _train(model, train_data, part, out_dir, sim_dir, key, *, dp, schedule, epochs,
           split_epochs, seed, lr=1e-2, weight=0.25, random_seed=None, start=None,
           scheme="trigger"):
    """One wrapper run on the simulator; `random_seed` makes its watermark seed and salt
    reproducible (and predictable: red-team victims only, never a released model)."""
    from attest.backend import open_backend
    from attest.train import train

    config = {
        "name": out_dir.name, "dataset": {"name": "digits", "classes": 10},
        "model": {"arch": "mlp", "hidden": [64]},
        "training": {"epochs": epochs, "batch_size": 64, "lr": lr, "optimizer": "adam",
                     "seed": seed},
        "dp": {"enabled": dp, "target_epsilon": TARGET_EPSILON if dp else None},
        "watermark": {"enabled": True, "scheme": scheme, "trigger_count": TRIGGERS,
                      "schedule": schedule,
                      "split_epochs": split_epochs, "weight": weight},
        "attestation": {"backend": "sim", "sim_dir": str(sim_dir)},
    }
    backend = open_backend("sim", sim_dir=sim_dir, sim_random_seed=random_seed)
    try:
        return train(model, train_data, (part.x_test, part.y_test), config, out_dir=out_dir,
                     backend=backend, release_key=key, progress=lambda line: None, start=start)
    finally:
        backend.close()


def _check_same(model, onnx_path, x) -> None:
    """The torch victim the attackers copy must be the released ONNX model."""
    import numpy as np

    from redteam.suspects import probabilities
    from verifier.suspect import OnnxSuspect

    if not np.array_equal(probabilities(model, x).argmax(1), OnnxSuspect(onnx_path).predict(x)):
        raise RuntimeError("the trained torch victim and its released ONNX file disagree")


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
