"""Entangled Watermark Embeddings (Jia et al., USENIX Security 2021) with an exact null.

A model that learns the task from the victim's answers should also learn the watermark,
so the watermark must live in the same neurons as the task: watermark steps add the
soft nearest-neighbour loss (SNNL) between watermark inputs and clean records of their
target class, maximised so the two stay entangled in every hidden layer, with one
temperature per layer tuned against it (Algorithm 1 of the paper). What differs from
the paper is that nothing the owner could tune is chosen by the owner: K keys, each a
source class, a target class and a pattern drawn from the attestation module's seed
(`cards.ewe`); the pattern's position is where the SNNL gradient of a briefly trained
copy of the model is largest, computed without reading the targets (that independence
is what makes the ownership null exact, see FORMAT.md); the watermark records are
training records chosen by a seed-derived permutation and proven in the train split.

The margin variant (`watermark.scheme: margin`, Kim et al., "Margin-based Neural
Network Watermarking", ICML 2023) keeps the keys, placement, opening and null, and
trains the watermark inputs with a large input-space margin instead of the SNNL: each
watermark step also fits the worst case of every stamped record within an L-inf ball
of MARGIN_EPS (PGD), so the target class owns a neighbourhood of each watermark input
and extraction queries landing there are answered, and learned, as the target.

Schedules: `joint` interleaves one EWE step after every `RATIO` task steps; under DP
the SNNL couples samples (no per-sample gradient), so DP `joint` mixes the stamped
records into the DP batches as ordinary samples instead; `split` runs the non-DP
watermark phase of `attest.train` on the stamped records.
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from attest.defenses.watermark import CyclingSampler
from cards import ewe as scheme
from cards import merkle

KEYS = 10                 # independent target draws: (1/9)^7 < 1e-6 needs 7 of 10 keys
TRAIN_PER_KEY = 40        # stamped training records per key (the opening proves per_key of them)
RATIO = 2                 # task steps per EWE step
SNNL_WEIGHT = 0.5         # the SNNL factor of the paper's loss
TEMPERATURE = 1.0         # initial temperature of every layer
TEMPERATURE_LR = 0.1
VALUE_RANGE = (0.0, 1.0)
MARGIN_EPS = 0.25         # L-inf radius each margin-trained watermark input is fitted over
MARGIN_STEPS = 5          # PGD steps finding the worst point of that ball


def snnl(h: torch.Tensor, w: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Soft nearest-neighbour loss of representations ``h`` (n, d) with group labels ``w``:
    -mean_i log(sum_{j!=i, w_j=w_i} e^{-|h_i-h_j|^2/T} / sum_{k!=i} e^{-|h_i-h_k|^2/T})."""
    d = torch.cdist(h, h).pow(2)
    sim = torch.exp(-d / temperature) * (1 - torch.eye(len(h)))
    same = (w[:, None] == w[None, :]).float()
    ratio = (sim * same).sum(1) / (sim.sum(1) + 1e-8)
    return -torch.log(ratio + 1e-8).mean()


def hidden(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The logits and every ReLU output (flattened), in one forward pass."""
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.flatten(1)))
             for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return out, seen


def _rng(seed: bytes, label: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(seed + label.encode()).digest()[:8], "little"))


def place(model: nn.Module, x_source: np.ndarray, x_other: np.ndarray, pattern: np.ndarray,
          taken: np.ndarray) -> tuple[int, int]:
    """Algorithm 1 lines 2-3: the window (row, col) where the SNNL gradient of stamped
    source records against records of other classes, convolved with the pattern's size,
    is largest, among the windows sharing the fewest pixels with earlier keys' patterns
    (``taken`` counts them). The targets are never read here."""
    xs = torch.from_numpy(x_source).requires_grad_(True)
    x = torch.cat([xs, torch.from_numpy(x_other)])
    w = torch.cat([torch.ones(len(xs)), torch.zeros(len(x_other))])
    _, layers = hidden(model, x)
    loss = sum(snnl(h, w, torch.tensor(TEMPERATURE)) for h in layers)
    (grad,) = torch.autograd.grad(loss, xs)
    heat = grad.abs().sum(dim=tuple(range(grad.dim() - 2))).numpy()        # (H, W)
    side = pattern.shape[-1]
    best: tuple | None = None
    where = (0, 0)
    for r in range(heat.shape[0] - side + 1):
        for c in range(heat.shape[1] - side + 1):
            # Fewest pixels shared with earlier keys first (small inputs cannot keep every
            # pattern apart), then the largest gradient.
            score = (-int(taken[r:r + side, c:c + side].sum()), float(heat[r:r + side, c:c + side].sum()))
            if best is None or score > best:
                best, where = score, (r, c)
    return where


@dataclass
class EweWatermark:
    """The trainer's view of an EWE watermark (same surface as the trigger set's)."""
    opening: scheme.Opening
    x: np.ndarray                 # stamped training records (K * TRAIN_PER_KEY, ...)
    y: np.ndarray                 # their targets
    target_pool: list             # per key: clean train records of its target class
    classes: int
    schedule: str
    weight: float
    split_epochs: int
    train_root: str
    train_records: int
    key_of: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    interleaved: bool = True
    temperatures: list = field(default_factory=list)
    steps: int = 0
    margin: bool = False

    def claim(self) -> dict:
        """The `defenses.watermark` claim (EWE form): commitment, counts, train root."""
        p = self.opening.parameters
        return {"scheme": p["scheme"], "commitment": self.opening.commitment,
                "trigger_count": p["keys"] * p["per_key"], "keys": p["keys"],
                "classes": self.classes, "schedule": self.schedule,
                "train_root": self.train_root, "train_records": self.train_records}

    def per_batch(self, batch_size: int) -> int:
        return max(1, round(self.weight * batch_size))

    def sampler(self, seed: int) -> CyclingSampler:
        return CyclingSampler(len(self.y), seed)

    def accuracy(self, predict) -> float:
        """Share of the opening's watermark inputs answered with their key's target."""
        x, y = self.opening.triggers()
        return float(np.mean(predict(x) == y))

    def step(self, model: nn.Module, optimizer, batch_size: int, rng: np.random.Generator) -> None:
        """After a task step: every RATIO-th call, one EWE step on stamped records and clean
        records of their targets, CE minus SNNL_WEIGHT x SNNL per layer; then each layer's
        temperature moves against the SNNL (Algorithm 1 lines 10-14)."""
        self.steps += 1
        if self.steps % RATIO:
            return
        half = max(2, batch_size // 2)
        idx = rng.choice(len(self.y), size=min(half, len(self.y)), replace=False)
        if self.margin:
            return self._margin_step(model, optimizer, idx)
        pools = [self.target_pool[self.key_of[i]] for i in idx]
        clean = [pool[rng.integers(len(pool))] for pool in pools]
        x = torch.from_numpy(np.concatenate([self.x[idx], np.stack(clean)]))
        y = torch.from_numpy(np.concatenate([self.y[idx], self.y[idx]]))
        w = torch.cat([torch.ones(len(idx)), torch.zeros(len(idx))])
        out, layers = hidden(model, x)
        if not self.temperatures:
            self.temperatures = [torch.tensor(TEMPERATURE, requires_grad=True) for _ in layers]
        entangle = sum(snnl(h, w, t) for h, t in zip(layers, self.temperatures))
        loss = nn.functional.cross_entropy(out, y) - SNNL_WEIGHT * entangle
        optimizer.zero_grad(set_to_none=True)
        grads = torch.autograd.grad(entangle, self.temperatures, retain_graph=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for t, g in zip(self.temperatures, grads):
                t -= TEMPERATURE_LR * g
                t.clamp_(min=0.05)

    def _margin_step(self, model: nn.Module, optimizer, idx: np.ndarray) -> None:
        """One margin step: cross-entropy towards the targets on the stamped records and on
        their worst points within MARGIN_EPS (PGD from a random start, seeded by ``idx``)."""
        x, y = torch.from_numpy(self.x[idx]), torch.from_numpy(self.y[idx])
        low, high = VALUE_RANGE
        gen = torch.Generator().manual_seed(int(idx[0]) * 7919 + self.steps)
        worst = (x + (torch.rand(x.shape, generator=gen) * 2 - 1) * MARGIN_EPS).clamp(low, high)
        for _ in range(MARGIN_STEPS):
            worst.requires_grad_(True)
            (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(worst), y), worst)
            with torch.no_grad():
                worst = worst + 2.5 * MARGIN_EPS / MARGIN_STEPS * grad.sign()
                worst = torch.min(torch.max(worst, x - MARGIN_EPS), x + MARGIN_EPS).clamp(low, high)
        loss = nn.functional.cross_entropy(model(torch.cat([x, worst.detach()])), torch.cat([y, y]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def create(session, model: nn.Module, train, *, trigger_count: int, classes: int, schedule: str,
           weight: float, split_epochs: int, lr: float, seed: int, margin: bool = False) -> EweWatermark:
    """Draw seed and salt from the attested session, derive the keys, place each pattern by
    the SNNL gradient of a copy of ``model`` trained one epoch, and build the opening with
    the records' inclusion proofs against ``train`` (an ArrayData, the measured split).
    ``margin`` selects the margin-trained variant (its own scheme name in the parameters)."""
    shape = list(train.input_shape)
    per_key = max(1, trigger_count // KEYS)
    patch = max(3, min(shape[-2:]) // 6)
    params = scheme.make_parameters(KEYS, per_key, classes, shape, VALUE_RANGE, patch,
                                    scheme.MARGIN_SCHEME if margin else scheme.SCHEME)
    wm_seed, salt = session.random(32), session.random(32)
    sources, targets, patterns = scheme.derive(wm_seed, params)
    records, pools = [], []
    for k, s in enumerate(sources):
        members = np.flatnonzero(train.y == s)
        if len(members) < per_key:
            from cards.errors import LaminateError
            raise LaminateError(f"watermark: class {s} has {len(members)} train records, "
                                f"an EWE key needs {per_key}")
        records.append(_rng(wm_seed, f"records {k}").permutation(members)[:TRAIN_PER_KEY])
    probe = _warm_copy(model, train, lr, seed)
    taken = np.zeros(shape[-2:], dtype=np.int64)
    positions = []
    other_rng = _rng(wm_seed, "placement")
    for k, s in enumerate(sources):
        other = other_rng.choice(np.flatnonzero(train.y != s), size=32, replace=False)
        r, c = place(probe, train.x[records[k][:32]], train.x[other], patterns[k], taken)
        taken[r:r + patch, c:c + patch] += 1
        positions.append((r, c))
    # Targets are read only from here on: the positions above never depended on them.
    for t in targets:
        pools.append(train.x[np.flatnonzero(train.y == t)])
    leaves = [scheme.record_leaf(x, int(y)) for x, y in zip(train.x, train.y)]
    chosen = [rows[:per_key] for rows in records]
    flat = [int(i) for row in chosen for i in row]
    proofs = [merkle.inclusion_proof(leaves, i) for i in flat]
    opening = scheme.create_opening(wm_seed, params, positions, chosen, train.x[flat], proofs, salt=salt)
    x = np.concatenate([scheme.stamp(train.x[rows], patterns[k], positions[k]) for k, rows in enumerate(records)])
    y = np.concatenate([np.full(len(rows), targets[k], dtype=np.int64) for k, rows in enumerate(records)])
    return EweWatermark(opening, x, y, pools, classes, schedule, weight, split_epochs,
                        merkle.root_of(leaves).hex(), len(train),
                        key_of=np.repeat(np.arange(KEYS), [len(r) for r in records]), margin=margin)


def _warm_copy(model: nn.Module, train, lr: float, seed: int) -> nn.Module:
    """A copy of the initial model after one epoch of plain SGD: the network whose SNNL
    gradient places the patterns (a random network's gradient says little)."""
    probe = copy.deepcopy(model)
    opt = torch.optim.SGD(probe.parameters(), lr=lr)
    order = np.random.default_rng(seed).permutation(len(train))
    for i in range(0, len(order), 64):
        b = order[i:i + 64]
        opt.zero_grad()
        nn.functional.cross_entropy(probe(torch.from_numpy(train.x[b])), torch.from_numpy(train.y[b])).backward()
        opt.step()
    return probe
