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
