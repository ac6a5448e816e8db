"""Stronger thieves: Knockoff-style extraction and the backdoor-removal attacks.

Shape-generic (digits and MNIST alike). Extraction (Orekondy et al., Knockoff Nets;
Tramèr et al.): the thief queries a label-only API with its own inputs, either
in-distribution records disjoint from the victim's (plus shifted, noisy copies when the
budget exceeds them) or out-of-distribution inputs, and trains a fresh model of the
same or another architecture on the answers; optionally it then fine-tunes on its own
labelled records or prunes. Removal treats the watermark as a backdoor: pruning of
neurons idle on legitimate data, fine-pruning (Liu et al.), and Neural Cleanse (Wang et
al.): reverse-engineer a minimal trigger per class, then unlearn the smallest one.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from attest.models import build

ARCHS = {"mlp": ("mlp", [64]), "cnn": ("cnn", [64]), "mlp-deep": ("mlp", [128, 64])}


def fresh(arch: str, shape, classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    kind, hidden = ARCHS[arch]
    return build(kind, tuple(shape), classes, hidden)


def fit(model: nn.Module, x, y, *, epochs: int, seed: int, lr: float = 1e-2, batch: int = 64) -> nn.Module:
    """Adam on cross-entropy; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=g)
        for i in range(0, len(xs), batch):
            idx = order[i:i + batch]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xs[idx]), ys[idx]).backward()
            opt.step()
    return model.eval()


def predict(model: nn.Module, x) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x, dtype=torch.float32)).argmax(1).numpy()


def queries(x_own: np.ndarray, budget: int, kind: str, seed: int) -> np.ndarray:
    """The thief's ``budget`` query inputs: ``in`` = its own records, then shifted noisy
    copies; ``ood`` = inputs from another distribution (each image transposed,
    inverted and blurred with uniform noise), never a record of the task."""
    rng = np.random.default_rng(seed)
    base = x_own[rng.permutation(len(x_own))]
    reps = [base]
    while sum(len(r) for r in reps) < budget:
        shifted = np.roll(base, shift=(int(rng.integers(-1, 2)), int(rng.integers(-1, 2))), axis=(-2, -1))
        reps.append(np.clip(shifted + rng.normal(0, 0.08, base.shape), 0, 1))
    x = np.concatenate(reps)[:budget].astype(np.float32)
    if kind == "ood":
        x = np.clip(0.5 * (1.0 - np.swapaxes(x, -1, -2)) + 0.5 * rng.uniform(0, 1, x.shape), 0, 1)
    return x.astype(np.float32)


def knockoff(victim_predict, x_own, *, budget: int, kind: str, arch: str, shape, classes: int,
             epochs: int, seed: int) -> nn.Module:
    """Query the label API ``budget`` times and train a fresh ``arch`` on the answers."""
    xq = queries(x_own, budget, kind, seed)
    yq = victim_predict(xq)
    steps_epochs = max(3, min(epochs, epochs * 1000 // max(budget, 1) + 3))
    return fit(fresh(arch, shape, classes, seed), xq, yq, epochs=steps_epochs, seed=seed)


def magnitude_prune(model: nn.Module, fraction: float) -> nn.Module:
    """Zero the smallest ``fraction`` of all weights."""
    model = copy.deepcopy(model)
    ws = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        k = int(fraction * sum(w.numel() for w in ws))
        if k:
            cut = torch.cat([w.abs().flatten() for w in ws]).kthvalue(k).values
            for w in ws:
                w.mul_((w.abs() > cut).float())
    return model


def prune_idle(model: nn.Module, x_clean, fraction: float) -> nn.Module:
    """Pruning defence: silence the ``fraction`` of last-hidden-layer neurons least active
    on legitimate data (a backdoor tends to live in neurons the task leaves idle)."""
    model = copy.deepcopy(model)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if len(linears) < 2:
        return model
    hidden_layer, out_layer = linears[-2], linears[-1]
    acts = []
    hook = hidden_layer.register_forward_hook(lambda _m, _i, o: acts.append(torch.relu(o)))
    with torch.no_grad():
        model(torch.as_tensor(x_clean, dtype=torch.float32))
    hook.remove()
    mean = acts[0].mean(0)
    idle = mean.argsort()[:int(fraction * len(mean))]
    with torch.no_grad():
        hidden_layer.weight[idle] = 0
        hidden_layer.bias[idle] = 0
        out_layer.weight[:, idle] = 0
    return model


def fine_prune(model: nn.Module, x_own, y_own, *, fraction: float, epochs: int, seed: int) -> nn.Module:
    """Fine-pruning: prune idle neurons, then fine-tune on the thief's labelled records."""
    return fit(prune_idle(model, x_own, fraction), x_own, y_own, epochs=epochs, seed=seed, lr=1e-3)


def neural_cleanse(model: nn.Module, x_own, y_own, classes: int, *, steps: int, seed: int,
                   epochs: int) -> tuple[nn.Module, int]:
    """Reverse-engineer per class the smallest mask m and pattern p with
    model((1-m)x + m p) = class; the class with the smallest mask (most anomalous) is
    taken as the backdoor target, and the model is fine-tuned to answer the true label on
    records carrying that reversed trigger (unlearning). Returns (model, chosen class)."""
    torch.manual_seed(seed)
    xs = torch.as_tensor(x_own, dtype=torch.float32)
    shape = xs.shape[1:]
    norms, triggers = [], []
    for c in range(classes):
        m_raw = torch.full(shape[-2:], -2.0, requires_grad=True)
        p_raw = torch.zeros(shape, requires_grad=True)
        opt = torch.optim.Adam([m_raw, p_raw], lr=0.1)
        target = torch.full((len(xs),), c, dtype=torch.int64)
        for _ in range(steps):
            m, p = torch.sigmoid(m_raw), torch.sigmoid(p_raw)
            out = model((1 - m) * xs + m * p)
            loss = nn.functional.cross_entropy(out, target) + 1e-2 * m.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        m, p = torch.sigmoid(m_raw).detach(), torch.sigmoid(p_raw).detach()
        norms.append(float(m.sum()))
        triggers.append((m, p))
    chosen = int(np.argmin(norms))
    m, p = triggers[chosen]
    rng = np.random.default_rng(seed)
    half = rng.permutation(len(xs))[: len(xs) // 5]
    x_fix = xs.clone()
    x_fix[half] = (1 - m) * xs[half] + m * p
    return fit(copy.deepcopy(model), x_fix.numpy(), y_own, epochs=epochs, seed=seed, lr=1e-3), chosen
