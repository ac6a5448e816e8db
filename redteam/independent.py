"""Independent models: the innocent population an ownership test must leave alone.

Dataset inference fired with confidence on models trained independently on the same
distribution; so the false-positive rate here is measured, not assumed from the null.
Each model is trained by a different developer (seed), on its own random share of the
records the victim never saw, with the victim's architecture or another one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from redteam.suspects import ARCHS, build_arch, fit


@dataclass
class Independent:
    name: str
    arch: str
    records: int
    model: nn.Module


def build_independent(x_pool: np.ndarray, y_pool: np.ndarray, *, count: int, epochs: int,
                      seed: int, share: float = 0.7, archs=ARCHS) -> list[Independent]:
    """``count`` models cycling through ``archs``, each on a seeded random ``share`` of
    the pool (records disjoint from the victim's training set)."""
    models = []
    for i in range(count):
        arch = archs[i % len(archs)]
        rng = np.random.default_rng(seed + 1000 + i)
        idx = rng.choice(len(x_pool), size=int(share * len(x_pool)), replace=False)
        model = fit(build_arch(arch, seed + 1000 + i), x_pool[idx], y_pool[idx],
                    epochs=epochs, seed=seed + 1000 + i)
        models.append(Independent(f"independent-{i:02d}-{arch}", arch, len(idx), model))
    return models
