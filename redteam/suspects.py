"""Stolen-model builders for the red-team evaluation, and the attacker's small toolkit.

Each builder starts from the victim (a torch module the thief holds, or only an API in
front of it) and returns a new torch module plus how many victim queries it spent.
Every suspect is then exported to ONNX and tested through the same labels-only path an
arbiter uses, so the table measures the product, not a shortcut around it.

The attacks follow the model-stealing literature: using the copy as is, fine-tuning on
a little labelled data, magnitude pruning, distillation from soft labels, extraction
through a label-only prediction API with a query budget (adaptive retraining, querying
where the current copy is least certain) and through a logits API, and weight noise.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

CLASSES = 10
INPUT_SHAPE = (1, 8, 8)  # the wrapper's digits


# ---------------------------------------------------------------- data and models

@dataclass
class Partition:
    """Digits split three ways so that no attacker or independent model ever trains on the
    victim's records: the victim's training records, a pool the attackers and independent
    models draw from (same distribution, disjoint records), and a shared test split."""

    x_victim: np.ndarray
    y_victim: np.ndarray
    x_pool: np.ndarray
    y_pool: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def digits_partition(seed: int = 0, test_fraction: float = 0.2) -> Partition:
    """The wrapper's digits (1x8x8 in [0, 1]) split test / victim / pool."""
    from attest.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data))
    n_test = int(round(len(data) * test_fraction))
    test, rest = order[:n_test], order[n_test:]
    victim, pool = rest[: len(rest) // 2], rest[len(rest) // 2:]
    return Partition(data.x[victim], data.y[victim], data.x[pool], data.y[pool],
                     data.x[test], data.y[test])


# name -> (attest.models architecture, hidden widths); "mlp" is the victim's own.
ARCHITECTURES = {
    "mlp": ("mlp", [64]),
    "mlp-wide": ("mlp", [256]),
    "mlp-deep": ("mlp", [128, 64]),
    "cnn": ("cnn", [64]),
    "linear": ("mlp", []),
}
ARCHS = tuple(ARCHITECTURES)


def build_arch(arch: str, seed: int, shape=INPUT_SHAPE) -> nn.Module:
    """A fresh model of an architecture an attacker or independent developer might pick."""
    from attest.models import build

    torch.manual_seed(seed)
    kind, hidden = ARCHITECTURES[arch]
    return build(kind, tuple(shape), CLASSES, hidden)


def fit(model: nn.Module, x: np.ndarray, targets: np.ndarray, *, epochs: int, seed: int,
        lr: float = 1e-2, batch_size: int = 32, temperature: float = 1.0) -> nn.Module:
    """Train with Adam. Integer targets use cross-entropy; probability targets (soft
    labels) use the KL divergence at ``temperature``, as in distillation."""
    generator = torch.Generator().manual_seed(seed)
    xs = torch.as_tensor(x, dtype=torch.float32)
    soft = targets.ndim == 2
    ts = torch.as_tensor(targets, dtype=torch.float32 if soft else torch.int64)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=generator)
        for start in range(0, len(xs), batch_size):
            idx = order[start:start + batch_size]
            logits = model(xs[idx])
            if soft:
                loss = nn.functional.kl_div(
                    nn.functional.log_softmax(logits / temperature, dim=1), ts[idx],
                    reduction="batchmean") * temperature ** 2
            else:
                loss = nn.functional.cross_entropy(logits, ts[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    return model


def probabilities(model: nn.Module, x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    with torch.no_grad():
        logits = model(torch.as_tensor(x, dtype=torch.float32))
        return torch.softmax(logits / temperature, dim=1).numpy()


def export_onnx(model: nn.Module, path) -> Path:
    """Export a suspect exactly as the wrapper exports a released model."""
    from attest.export import export_onnx as export

    return export(model, np.zeros((2, *INPUT_SHAPE), dtype=np.float32), Path(path))


# ---------------------------------------------------------------- the victim's APIs

class LabelApi:
    """A prediction API that answers labels only and counts every query it answers."""

    def __init__(self, suspect):
        self.suspect = suspect
        self.queries = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.queries += len(x)
        return np.asarray(self.suspect.predict(np.asarray(x, dtype=np.float32)))


class LogitsApi:
    """A prediction API that answers the full probability vector (an ONNX model's softmax
    of its first output), counting queries."""

    def __init__(self, onnx_path):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self.queries = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.queries += len(x)
        logits = self._session.run(None, {self._input: np.asarray(x, dtype=np.float32)})[0]
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------- suspect builders

@dataclass
class Stolen:
    """A suspect built by an attack: the model, and victim queries spent (0 = white-box)."""

    name: str
    attack: str
    model: nn.Module
    queries: int = 0


def as_is(victim: nn.Module) -> Stolen:
    return Stolen("as-is", "deploys the stolen weights unchanged", copy.deepcopy(victim))


def fine_tune(victim: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int,
              lr: float = 1e-3) -> Stolen:
    """Continue training the stolen copy on the thief's own labelled data."""
    model = fit(copy.deepcopy(victim), x, y, epochs=epochs, seed=seed, lr=lr)
    return Stolen("fine-tune", f"fine-tuned {epochs} epochs on {len(x)} own labelled records",
                  model)


def prune(victim: nn.Module, fraction: float) -> Stolen:
    """Global magnitude pruning: zero the smallest ``fraction`` of all weights (no biases)."""
    model = copy.deepcopy(victim)
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        magnitudes = torch.cat([w.abs().flatten() for w in weights])
        k = int(fraction * magnitudes.numel())
        if k:
            threshold = magnitudes.kthvalue(k).values
            for w in weights:
                w.mul_((w.abs() > threshold).float())
    return Stolen(f"prune-{int(round(fraction * 100))}",
                  f"global magnitude pruning of {fraction:.0%} of the weights", model)


def weight_noise(victim: nn.Module, scale: float, seed: int) -> Stolen:
    """Add Gaussian noise to every parameter, ``scale`` times that tensor's std."""
    model = copy.deepcopy(victim)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            std = float(p.std()) if p.numel() > 1 else float(p.abs().mean())
            p.add_(torch.randn(p.shape, generator=generator) * std * scale)
    return Stolen(f"noise-{scale:g}", f"Gaussian weight noise, {scale:g} x each tensor's std",
                  model)


def distill(victim: nn.Module, x: np.ndarray, *, arch: str, epochs: int, seed: int,
            temperature: float = 4.0, augment: int = 3) -> Stolen:
    """Train a fresh student on the stolen model's soft labels at a temperature, over the
    thief's unlabelled data and noisy copies of it (white-box: no query budget)."""
    rng = np.random.default_rng(seed)
    copies = [x] + [np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
                    for _ in range(augment)]
    xs = np.concatenate(copies)
    soft = probabilities(victim, xs, temperature)
    student = fit(build_arch(arch, seed), xs, soft, epochs=epochs, seed=seed,
                  temperature=temperature)
    return Stolen(f"distill-{arch}", f"{arch} student on soft labels (T={temperature:g}) "
                  f"over {len(xs)} unlabelled points", student)


def _candidates(x_seed: np.ndarray, count: int, rng) -> np.ndarray:
    """In-distribution query candidates: the thief's unlabelled records and random
    interpolations between pairs of them (points near decision boundaries)."""
    a = x_seed[rng.integers(0, len(x_seed), count)]
    b = x_seed[rng.integers(0, len(x_seed), count)]
    t = rng.uniform(0.0, 1.0, (count,) + (1,) * (x_seed.ndim - 1)).astype(np.float32)
    return np.concatenate([x_seed, a * t + b * (1 - t)]).astype(np.float32)


def extract_labels(api: LabelApi, x_seed: np.ndarray, *, budget: int, arch: str,
                   epochs: int, seed: int, rounds: int = 4) -> Stolen:
    """Label-only extraction by adaptive retraining (Tramèr et al. 2016): spend the budget
    in rounds, each time querying the candidates the current copy is least sure of, and
    retrain from scratch on every answered query."""
    rng = np.random.default_rng(seed)
    pool = _candidates(x_seed, 4 * budget, rng)
    asked = np.zeros(len(pool), dtype=bool)
    first = rng.choice(len(pool), size=budget // rounds, replace=False)
    xs, ys = pool[first], api(pool[first])
    asked[first] = True
    model = fit(build_arch(arch, seed, x_seed.shape[1:]), xs, ys, epochs=epochs, seed=seed)
    for r in range(1, rounds):
        size = budget // rounds if r < rounds - 1 else budget - len(xs)
        p = np.sort(probabilities(model, pool), axis=1)
        margin = p[:, -1] - p[:, -2]
        margin[asked] = np.inf
        pick = np.argsort(margin)[:size]
        asked[pick] = True
        xs = np.concatenate([xs, pool[pick]])
        ys = np.concatenate([ys, api(pool[pick])])
        model = fit(build_arch(arch, seed, x_seed.shape[1:]), xs, ys, epochs=epochs, seed=seed)
    return Stolen(f"extract-labels-{arch}",
                  f"label-only API, adaptive retraining of a fresh {arch} ({rounds} rounds)",
                  model, api.queries)


def extract_logits(api: LogitsApi, x_seed: np.ndarray, *, budget: int, arch: str,
                   epochs: int, seed: int) -> Stolen:
    """Logits-API extraction: query ``budget`` in-distribution points once and train a
    fresh model to match the returned probability vectors."""
    rng = np.random.default_rng(seed)
    pool = _candidates(x_seed, budget, rng)
    xs = pool[rng.choice(len(pool), size=min(budget, len(pool)), replace=False)]
    model = fit(build_arch(arch, seed), xs, api(xs), epochs=epochs, seed=seed)
    return Stolen(f"extract-logits-{arch}",
                  f"probability API, a fresh {arch} trained on the answers", model, api.queries)


def solve_equations(api, x_seed: np.ndarray, *, budget: int, seed: int,
                    shape=INPUT_SHAPE, classes: int = CLASSES) -> Stolen:
    """Equation-solving extraction (Tramèr et al. 2016, "Stealing Machine Learning Models
    via Prediction APIs"): a softmax (multinomial logistic) model answers
    p = softmax(Wx + b), so log p_c - log p_0 = (w_c - w_0).x + (b_c - b_0) is linear in
    the unknowns; ``budget`` >= d + 1 answered queries determine them by least squares
    (softmax ignores a shift shared by all classes, so this is the victim's function
    exactly). Against a model that is not softmax regression the same solve is the best
    linear fit of its log-odds, the attack as published applied beyond its class.
    Queries are the thief's in-distribution candidates plus a little uniform noise, so
    that every input coordinate varies (a pixel constant over the queries leaves its
    weight undetermined); answers whose probabilities underflow are dropped."""
    import math

    rng = np.random.default_rng(seed)
    pool = _candidates(x_seed, budget, rng)
    xs = pool[rng.choice(len(pool), size=min(budget, len(pool)), replace=False)]
    xs = np.clip(xs + rng.uniform(0, 0.05, xs.shape), 0, 1).astype(np.float32)
    p = np.asarray(api(xs), dtype=np.float64)
    usable = (p > 1e-30).all(axis=1)
    if usable.sum() >= xs[0].size + 1:
        xs, p = xs[usable], p[usable]
    logp = np.log(np.clip(p, 1e-30, None))
    design = np.concatenate([xs.reshape(len(xs), -1), np.ones((len(xs), 1))], axis=1)
    solution, *_ = np.linalg.lstsq(design, logp - logp[:, :1], rcond=None)
    model = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), classes))
    with torch.no_grad():
        model[1].weight.copy_(torch.as_tensor(solution[:-1].T, dtype=torch.float32))
        model[1].bias.copy_(torch.as_tensor(solution[-1], dtype=torch.float32))
    return Stolen("equation-solving", f"probability API, softmax weights solved from "
                  f"{len(xs)} answers (least squares on log-odds)", model.eval(),
                  getattr(api, "queries", len(xs)))
