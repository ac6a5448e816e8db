"""Trigger-set watermark whose secret seed the attestation backend draws, never the user.

If the owner could pick the seed, they could grind seeds (or plant transferable
adversarial examples) until the triggers happen to match what independent models answer,
and then "prove" ownership of models they never trained. So the seed and the salt come
from the attested session's randomness, the triggers from the public generator in
`cards.watermark`, and only the commitment enters the card; the opening (seed, salt) goes
to a separate secret file for the owner.

Schedules: `joint` adds trigger samples to every training batch (with DP they are
data-independent inputs clipped like any other sample); `split` trains on real data first
(with DP, if enabled) and then runs a non-DP phase on the triggers plus a small fixed set
of real training records so test accuracy survives; the DP claim then says the
accounting is not tight and which records the non-DP phase touched.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cards import watermark as scheme

VALUE_RANGE = (0.0, 1.0)


@dataclass
class Watermark:
    opening: scheme.Opening
    x: np.ndarray            # triggers, float32 (n, *input_shape)
    y: np.ndarray            # trigger labels, int64 (n,)
    classes: int
    schedule: str
    weight: float
    split_epochs: int

    def claim(self) -> dict:
        """The `defenses.watermark` claim: commitment and counts, never the seed."""
        return {
            "scheme": scheme.SCHEME,
            "commitment": self.opening.commitment,
            "trigger_count": int(len(self.y)),
            "classes": int(self.classes),
            "schedule": self.schedule,
        }

    def per_batch(self, batch_size: int) -> int:
        """Trigger samples mixed into each batch: `weight` x batch size, at least one."""
        return max(1, round(self.weight * batch_size))

    def sampler(self, seed: int) -> CyclingSampler:
        return CyclingSampler(len(self.y), seed)

    def accuracy(self, predict) -> float:
        """Share of triggers on which `predict(x) -> labels` returns the trigger label."""
        return float(np.mean(predict(self.x) == self.y))


class CyclingSampler:
    """Draws indices without replacement, reshuffling after each pass (oversampling)."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(n)
        self.pos = 0

    def take(self, k: int) -> np.ndarray:
        out = []
        while k > 0:
            if self.pos == self.n:
                self.order, self.pos = self.rng.permutation(self.n), 0
            step = min(k, self.n - self.pos)
            out.append(self.order[self.pos:self.pos + step])
            self.pos += step
            k -= step
        return np.concatenate(out)


def create(session, *, trigger_count: int, classes: int, input_shape: tuple[int, ...],
           schedule: str, weight: float, split_epochs: int) -> Watermark:
    """Draw seed and salt from the attested session's module and derive the trigger set."""
    params = scheme.make_parameters(trigger_count, classes, list(input_shape), list(VALUE_RANGE))
    seed, salt = session.random(32), session.random(32)
    opening = scheme.Opening(seed=seed, salt=salt, parameters=params,
                             commitment=scheme.commit(seed, salt, params))
    x, y = scheme.generate_triggers(seed, params)
    return Watermark(opening, np.ascontiguousarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64),
                     classes, schedule, weight, split_epochs)
