"""DP-SGD through Opacus, and the card's DP claim taken from what Opacus actually did.

The claim carries the mechanism's parameters (noise multiplier, clipping norm, Poisson
sample rate, optimizer steps taken, delta) and the epsilon Opacus's RDP accountant
reports for them, so a verifier can recompute epsilon from the parameters alone. The
accountant is Opacus's own; nothing here does privacy arithmetic.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch

from cards.errors import LaminateError

ACCOUNTANT = "rdp"


@contextmanager
def _quiet():
    """Opacus warns about its own defaults (secure RNG off, alpha range); the claim says so."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class DPTraining:
    """A model, optimizer and Poisson-sampling loader made private, and the steps taken."""

    def __init__(self, model, optimizer, loader, dp: dict, *, epochs: int):
        from opacus import PrivacyEngine

        self.delta = dp["delta"]
        self.max_grad_norm = dp["max_grad_norm"]
        with _quiet():
            self.engine = PrivacyEngine(accountant=ACCOUNTANT)
            if dp["target_epsilon"] is not None:
                self.model, self.optimizer, self.loader = self.engine.make_private_with_epsilon(
                    module=model, optimizer=optimizer, data_loader=loader,
                    target_epsilon=dp["target_epsilon"], target_delta=self.delta, epochs=epochs,
                    max_grad_norm=self.max_grad_norm, poisson_sampling=True)
            else:
                self.model, self.optimizer, self.loader = self.engine.make_private(
                    module=model, optimizer=optimizer, data_loader=loader,
                    noise_multiplier=dp["noise_multiplier"], max_grad_norm=self.max_grad_norm,
                    poisson_sampling=True)
        self.noise_multiplier = float(self.optimizer.noise_multiplier)
        self.sample_rate = 1.0 / len(self.loader)
        self.steps = 0

    def step(self) -> None:
        """One noisy optimizer step (the accountant's hook records it too)."""
        self.optimizer.step()
        self.steps += 1

    def epsilon(self) -> float:
        if not self.steps:
            return 0.0
        with _quiet():
            return float(self.engine.get_epsilon(self.delta))

    def release_model(self) -> torch.nn.Module:
        """The user's module, with Opacus's per-sample-gradient hooks and attributes removed."""
        return self.model.to_standard_module()

    def claim(self, *, tight: bool, note: str, non_dp_records: int = 0) -> dict:
        """The `defenses.dp` claim (FORMAT.md DPClaim) for the steps taken so far."""
        accounted = sum(steps for _, _, steps in self.engine.accountant.history)
        if accounted != self.steps:
            raise LaminateError(f"defenses.dp.steps: accountant saw {accounted} steps, training took {self.steps}")
        return {
            "mechanism": "dp-sgd",
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": float(self.max_grad_norm),
            "sample_rate": float(self.sample_rate),
            "steps": int(self.steps),
            "delta": float(self.delta),
            "accountant": ACCOUNTANT,
            "epsilon": self.epsilon(),
            "privacy_accounting": "tight" if tight else "not tight",
            "non_dp_records": int(non_dp_records),
            "note": note,
        }


def dp_note(*, opacus_version: str, watermark: str | None, split_records: int = 0, split_epochs: int = 0,
            start: str = "random", ewe_records: int = 0) -> str:
    """Say in words what the epsilon covers and what it does not. ``ewe_records``: the
    watermark inputs are stamped copies of that many training records (EWE)."""
    base = (f"Opacus {opacus_version} DP-SGD: per-sample clipping, Poisson sampling, "
            f"RDP accountant; noise from torch's default generator (secure_mode off).")
    if start != "random":
        base += (f" Training started from {start} weights (claims.start), whose making this "
                 "epsilon does not cover: they may have seen any record without DP.")
    if watermark == "joint" and ewe_records:
        return base + (f" Watermark inputs are stamped copies of {ewe_records} training records, "
                       "added to every DP batch (clipped and noised like any sample, but outside "
                       "Poisson sampling; no SNNL step under DP): the epsilon holds for every "
                       f"other training record, not for those {ewe_records}, whose copies enter "
                       "far more steps than the accountant's sampling rate assumes.")
    if watermark == "split" and ewe_records:
        return base + (f" The epsilon covers the DP phase only: a non-DP phase of {split_epochs} "
                       f"epochs followed on the stamped copies of {ewe_records} training records "
                       f"and on {split_records} training records, which this epsilon does not "
                       "protect.")
    if watermark == "joint":
        return base + (" Watermark triggers are data-independent random inputs added to every "
                       "batch; the epsilon covers the training records.")
    if watermark == "split":
        return base + (f" The epsilon covers the DP phase only: a non-DP phase of {split_epochs} "
                       f"epochs followed on the watermark triggers and {split_records} training "
                       f"records, which this epsilon does not protect.")
    return base
