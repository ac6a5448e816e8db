"""DP-SGD under distributed data parallel training, accounted once for the whole job.

Each rank Poisson-samples its own contiguous shard at the rate one process would use over
the whole train split (1 / ceil(n / batch_size)); since the shards partition the split,
the union of the ranks' batches is exactly Poisson sampling of the split. Each rank clips
its per-sample gradients (Opacus's GradSampleModule); Opacus's DistributedDPOptimizer adds
the Gaussian noise once, on rank 0, before the clipped sums are all-reduced, so a step is
one DP-SGD step of the whole job, and one RDP accountant (rank 0's) counts it once.
"""
from __future__ import annotations

from types import SimpleNamespace

from attest.defenses.dp import ACCOUNTANT, DPTraining, _quiet


class DistributedDP(DPTraining):
    """`DPTraining`'s claim and epsilon over a job of several ranks (see the module doc)."""

    def __init__(self, model, training: dict, dp: dict, *, records: int, epochs: int,
                 world: int):
        from opacus import GradSampleModule
        from opacus.accountants import RDPAccountant
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.distributed import DifferentiallyPrivateDistributedDataParallel
        from opacus.optimizers import DistributedDPOptimizer

        from attest.train import _make_optimizer

        self.delta, self.max_grad_norm = dp["delta"], dp["max_grad_norm"]
        self.steps_per_epoch = -(-records // training["batch_size"])
        self.sample_rate = 1.0 / self.steps_per_epoch
        with _quiet():
            sigma = dp["noise_multiplier"] or get_noise_multiplier(
                target_epsilon=dp["target_epsilon"], target_delta=self.delta,
                sample_rate=self.sample_rate, steps=epochs * self.steps_per_epoch,
                accountant=ACCOUNTANT)
            # Broadcasts rank 0's start; gradients are all-reduced by the optimizer, once.
            self.model = GradSampleModule(DifferentiallyPrivateDistributedDataParallel(model))
            self.optimizer = DistributedDPOptimizer(
                _make_optimizer(self.model.parameters(), training), noise_multiplier=sigma,
                max_grad_norm=self.max_grad_norm,
                expected_batch_size=records * self.sample_rate / world)
        self.noise_multiplier = float(sigma)
        accountant = RDPAccountant()
        self.engine = SimpleNamespace(accountant=accountant, get_epsilon=accountant.get_epsilon)
        self.steps = 0

    def step(self) -> None:
        self.optimizer.step()
        self.engine.accountant.step(noise_multiplier=self.noise_multiplier,
                                    sample_rate=self.sample_rate)
        self.steps += 1

    def release_model(self):
        return self.model._module.module     # GradSampleModule -> DPDDP -> the user's module


def note(base: str, world: int) -> str:
    return (base + f" Distributed over {world} ranks: each Poisson-samples its shard at the "
            "job's rate, noise is added once per step (rank 0) to the sum of every rank's "
            "clipped gradients, and one accountant counts each step once.")
