"""Recompute a DP-SGD card's epsilon with Opacus's own RDP analysis, without torch.

The verifier must not trust the epsilon the prover wrote down: it reruns the accountant
on the measured mechanism parameters. Importing the `opacus` package would import torch
(seconds, gigabytes, and a dependency a deployer should not need), so the single module
that does the math, `opacus/accountants/analysis/rdp.py` (numpy + scipy only), is
loaded by file path under a private name. The package is located without executing it.
"""
from __future__ import annotations

import importlib.util
import math
from functools import lru_cache
from pathlib import Path

# Opacus's RDPAccountant.DEFAULT_ALPHAS: the orders the prover's accountant searched.
DEFAULT_ALPHAS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))

_MODULE_NAME = "_laminate_opacus_rdp"


class AccountantUnavailable(Exception):
    """Opacus (or scipy) is not installed where the verifier runs."""


@lru_cache(maxsize=1)
def _rdp_module():
    spec = importlib.util.find_spec("opacus")  # top-level lookup: does not import opacus
    if spec is None or not spec.submodule_search_locations:
        raise AccountantUnavailable("opacus is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "accountants" / "analysis" / "rdp.py"
    if not path.is_file():
        raise AccountantUnavailable("this opacus has no accountants/analysis/rdp.py")
    mod_spec = importlib.util.spec_from_file_location(_MODULE_NAME, path)
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except ImportError as exc:
        raise AccountantUnavailable(f"opacus's RDP analysis needs {exc.name or exc}") from None
    return module


@lru_cache(maxsize=1)
def opacus_version() -> str | None:
    """Installed opacus version from its metadata (no import), for the check's reason."""
    from importlib import metadata
    try:
        return metadata.version("opacus")
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1024)
def rdp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of `steps` Poisson-subsampled Gaussian steps, as Opacus's RDP accountant
    reports it (same orders, same RDP-to-(eps, delta) conversion). Cached: a service
    appraises many cards trained with the same mechanism."""
    if steps == 0:
        return 0.0  # Opacus's accountant reports 0 for an empty history
    rdp = _rdp_module()
    orders = list(DEFAULT_ALPHAS)
    curve = rdp.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier,
                            steps=steps, orders=orders)
    eps, _ = rdp.get_privacy_spent(orders=orders, rdp=curve, delta=delta)
    return float(eps)


def check_parameters(dp: dict) -> str | None:
    """A reason the parameters cannot describe a DP-SGD run, or None."""
    nm, q, steps, delta = dp["noise_multiplier"], dp["sample_rate"], dp["steps"], dp["delta"]
    if not (isinstance(nm, (int, float)) and math.isfinite(nm) and nm > 0):
        return f"noise_multiplier {nm!r} must be a positive number"
    if not (isinstance(q, (int, float)) and 0 < q <= 1):
        return f"sample_rate {q!r} must be in (0, 1]"
    if not (isinstance(steps, int) and steps >= 0):
        return f"steps {steps!r} must be a non-negative integer"
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        return f"delta {delta!r} must be in (0, 1)"
    if dp.get("accountant") != "rdp":
        return f"accountant {dp.get('accountant')!r} is not supported (only 'rdp')"
    return None


def within(claimed: float, recomputed: float, tolerance: float) -> bool:
    """True iff ``claimed`` is within ``tolerance`` of ``recomputed``: relative to it,
    or absolute when |recomputed| < 1."""
    return abs(claimed - recomputed) <= tolerance * max(1.0, abs(recomputed))


# --- the DP claim against the rest of the card -------------------------------------------
# The epsilon is recomputed from the claim's own parameters, so a claim could pair an
# honest epsilon with parameters the run never used; these checks tie the parameters to
# the measured config and training split, as the wrapper derives them.

FIELD = "claims.defenses.dp"


def _positive_int(value) -> bool:
    return type(value) is int and value > 0


def expected_schedule(records: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """(sample rate, steps) of the wrapper's DP phase: Opacus turns a loader of
    ceil(records / batch) batches into Poisson sampling at rate 1/ceil(records / batch),
    whose epoch is int(1 / rate) steps; the wrapper claims rate 1 / (steps per epoch)."""
    per_epoch = int(1 / (1 / -(-records // batch_size)))
    return 1.0 / per_epoch, epochs * per_epoch


def check_config(dp, claims: dict, tolerance: float):
    """`dp_config`: the DP claim is the one the measured config and train split imply."""
    from verifier.result import AFFIRMING, CONTRAINDICATED, Check

    config = claims["training"]["config"]
    section, training = config.get("dp"), config.get("training")
    enabled = isinstance(section, dict) and section.get("enabled") is True
    if dp is None:
        if enabled:
            return Check("dp_config", CONTRAINDICATED, FIELD, "the measured config enables DP "
                         "(training.config.dp.enabled) but the card carries no DP claim")
        return None

    def bad(field, reason):
        return Check("dp_config", CONTRAINDICATED, f"{FIELD}.{field}", reason)

    if not enabled or not isinstance(training, dict):
        return bad("mechanism", "the measured config does not enable DP (training.config.dp.enabled)")
    records = claims["dataset"]["train"]["records"]
    batch, epochs = training.get("batch_size"), training.get("epochs")
    if not (isinstance(batch, int) and isinstance(epochs, int)
            and _positive_int(batch) and _positive_int(epochs) and records > 0):
        return bad("steps", "the measured config has no positive training.batch_size and "
                   "training.epochs to derive the DP schedule from")
    rate, steps = expected_schedule(records, batch, epochs)
    if dp["sample_rate"] != rate:
        return bad("sample_rate", f"claims sample rate {dp['sample_rate']:.6g}; {records} records "
                   f"in batches of {batch} give {rate:.6g}")
    if dp["steps"] != steps:
        return bad("steps", f"claims {dp['steps']} steps; {epochs} epochs of {records} records "
                   f"in batches of {batch} give {steps}")
    for key in ("delta", "max_grad_norm"):
        if section.get(key) != dp[key]:
            return bad(key, f"claims {key} {dp[key]!r}, the measured config says {section.get(key)!r}")
    target, noise = section.get("target_epsilon"), section.get("noise_multiplier")
    if noise is not None and noise != dp["noise_multiplier"]:
        return bad("noise_multiplier", f"claims noise {dp['noise_multiplier']!r}, the measured "
                   f"config fixes {noise!r}")
    if target is not None and not (isinstance(target, (int, float))
                                   and dp["epsilon"] <= target * (1 + tolerance)):
        return bad("epsilon", f"claims epsilon {dp['epsilon']:.6g} above the measured config's "
                   f"target_epsilon {target!r}")
    wm = config.get("watermark")
    split = isinstance(wm, dict) and wm.get("enabled") is True and wm.get("schedule") == "split"
    count = wm.get("trigger_count") if split else 0
    expected = min(count, records) if type(count) is int else None
    if dp["non_dp_records"] != expected:
        return bad("non_dp_records", f"claims {dp['non_dp_records']} records touched without DP; "
                   f"the measured config's schedule touches {expected}")
    return Check("dp_config", AFFIRMING, FIELD,
                 f"sample rate, {steps} steps, delta, clipping and "
                 f"{'target epsilon' if target is not None else 'noise'} match the measured "
                 f"config and {records} training records")


def check_delta(dp, records: int, policy):
    """`dp_delta`: delta below 1/records (or the policy's dp.max_delta)."""
    from verifier.result import AFFIRMING, CONTRAINDICATED, Check

    delta, bound = dp["delta"], policy.dp.max_delta
    field = f"{FIELD}.delta"
    if bound is None:
        if delta * records >= 1:
            return Check("dp_delta", CONTRAINDICATED, field,
                         f"delta {delta:g} is not below 1/records (1/{records}): such a mechanism "
                         "may publish a record outright with that probability (set "
                         "dp.max_delta in the policy to accept it)")
        return Check("dp_delta", AFFIRMING, field, f"delta {delta:g} < 1/{records} training records")
    if delta > bound:
        return Check("dp_delta", CONTRAINDICATED, field,
                     f"delta {delta:g} exceeds the policy's dp.max_delta {bound:g}")
    return Check("dp_delta", AFFIRMING, field, f"delta {delta:g} <= dp.max_delta {bound:g}")


def check_non_dp_records(dp, policy):
    """`dp_non_dp_records`: the records a non-DP phase touched stay within the policy's bound."""
    from verifier.result import AFFIRMING, CONTRAINDICATED, Check

    touched, bound = dp["non_dp_records"], policy.dp.max_non_dp_records
    field = f"{FIELD}.non_dp_records"
    if touched > bound:
        return Check("dp_non_dp_records", CONTRAINDICATED, field,
                     f"a non-DP phase touched {touched} training records, above the policy's "
                     f"dp.max_non_dp_records {bound}: the epsilon does not protect them")
    return Check("dp_non_dp_records", AFFIRMING, field,
                 f"{touched} training records touched without DP (bound {bound})")


def check_accounting(dp, start: dict, policy, *, radioactive: bool = False):
    """`privacy_accounting`: tight only if nothing outside the DP phase shaped the model
    (a random start, no non-DP phase, no radioactive marks, whose marking network saw the
    train split without DP); not tight warns, or fails under dp.require_tight."""
    from verifier.result import AFFIRMING, CONTRAINDICATED, WARNING, Check

    field = f"{FIELD}.privacy_accounting"
    outside = []
    if start["kind"] != "random":
        outside.append(f"training started from {start['kind']} weights (claims.start), which "
                       "may have seen any record without DP")
    if dp["non_dp_records"]:
        outside.append(f"a non-DP phase touched {dp['non_dp_records']} training records")
    if radioactive:
        outside.append("radioactive marks were computed by a marking network trained without "
                       "DP on the train split (claims.defenses.radioactive)")
    if dp["privacy_accounting"] == "tight":
        if outside:
            return Check("privacy_accounting", CONTRAINDICATED, field,
                         f"claims tight accounting, but {'; '.join(outside)}")
        return Check("privacy_accounting", AFFIRMING, field,
                     "tight: epsilon covers the whole training, from a random start")
    reason = (f"not tight: epsilon {dp['epsilon']:.3g} covers only the DP phase; "
              + ("; ".join(outside) or dp.get("note") or "a non-DP phase followed the DP phase"))
    if policy.dp.require_tight:
        return Check("privacy_accounting", CONTRAINDICATED, field,
                     f"{reason}; policy {policy.policy_id} requires tight accounting")
    return Check("privacy_accounting", WARNING, field, reason)
