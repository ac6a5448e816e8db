"""Dataset inference (Maini, Yaghini and Papernot, ICLR 2021) as ownership evidence.

A model sits farther from its decision boundary on records it trained on than on records
it never saw. The owner holds private training records (each proved against the card's
train-split Merkle root, `prove_private`) and public records of the same distribution.
The arbiter measures, for every record and model, the distance to the boundary along
blind walks (the paper's black-box features, as the authors' code computes them: from
each record, k random directions of uniform, Gaussian and Laplace noise, grown step by
step until the label changes; the feature is the L-inf, L2 or L1 norm of that step), or
with MinGD when it holds a gradient (white-box: the smallest step to each target class).
A confidence regressor (a 100-unit tanh MLP, the authors' loss) is fitted on the owner's
own model: private features -> -1, public -> +1. On held-out records of a suspect,
Welch's one-sided t-test asks whether public records score higher than private ones; a
small p-value says the suspect's boundary treats the owner's records as training data.
Any model trained on the same distribution can do that too: Szyller and Asokan
("Conflicting Interactions Among Protection Mechanisms for Machine Learning Models")
flag independent models, and the measured false-positive rate (bench/di_study.py) is
why the dispute rule never lets this evidence decide alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cards import cbor, merkle
from cards.radioactive import betainc

# noise kind -> (norm the distance is measured in, scale per step); the authors' CIFAR10
# scales were 0.005 / 0.005 / 0.01 over 50 steps, doubled over 100 for SVHN; MNIST digits
# sit farther from the boundary under random noise, so the step is twice the SVHN one
# (50 steps take every pixel of a uniform walk to 0 or 1).
NOISES = {"uniform": (np.inf, 0.02), "gaussian": (2, 0.02), "laplace": (1, 0.04)}
STEPS = 50
MAX_RECORDS = 10_000


def blind_walk(predict, x: np.ndarray, y: np.ndarray, *, k: int, seed: int,
               steps: int = STEPS) -> np.ndarray:
    """Distance to a label change along k random directions per noise kind: shape
    (records, 3 * k), noise-major. Direction j of record i depends only on `seed`, so
    every model is walked along the same directions; a walk that never leaves the label
    (or starts misclassified) keeps its last (first) step's distance."""
    if len(x) > MAX_RECORDS:
        raise ValueError(f"dataset inference takes at most {MAX_RECORDS} records, got {len(x)}")
    rng = np.random.default_rng(seed)
    flat = x.reshape(len(x), -1).astype(np.float32)
    columns = []
    for noise, (order, scale) in NOISES.items():
        for _ in range(k):
            if noise == "uniform":
                base = rng.uniform(-scale, scale, size=flat.shape)
            elif noise == "gaussian":
                base = rng.normal(0.0, scale, size=flat.shape)
            else:
                base = rng.laplace(0.0, scale, size=flat.shape)
            columns.append(_walk(predict, flat, y, base.astype(np.float32), order, steps, x.shape))
    return np.stack(columns, axis=1)


def _walk(predict, flat, y, base, order, steps, shape) -> np.ndarray:
    delta = np.zeros_like(flat)
    remaining = np.arange(len(flat))
    for t in range(1, steps + 1):
        step = np.clip(flat[remaining] + t * base[remaining], 0.0, 1.0) - flat[remaining]
        delta[remaining] = step
        moved = (flat[remaining] + step).reshape((len(remaining),) + shape[1:])
        remaining = remaining[predict(moved.astype(np.float32)) == y[remaining]]
        if not len(remaining):
            break
    return np.linalg.norm(delta.astype(np.float64), ord=order, axis=1)


def mingd(gradient, predict, x: np.ndarray, *, classes: int, steps: int = 100,
          alpha: dict | None = None) -> np.ndarray:
    """MinGD (white-box): for each target class and norm, the size of the smallest step
    found by ascending `gradient(x, target)` (the gradient of the target's logit minus the
    largest logit, per record) until `predict` says target. Shape (records, 3 * classes),
    norm-major (L-inf, L2, L1), each norm's distances sorted as the authors do."""
    alpha = alpha or {np.inf: 0.01, 2: 0.1, 1: 1.0}
    flat = x.reshape(len(x), -1).astype(np.float32)
    columns = []
    for order in (np.inf, 2, 1):
        per_target = []
        for target in range(classes):
            delta = np.zeros_like(flat)
            remaining = np.arange(len(flat))
            for _ in range(steps):
                here = (flat[remaining] + delta[remaining]).reshape((len(remaining),) + x.shape[1:])
                remaining = remaining[predict(here) != target]
                if not len(remaining):
                    break
                here = (flat[remaining] + delta[remaining]).reshape((len(remaining),) + x.shape[1:])
                g = gradient(here, np.full(len(remaining), target)).reshape(len(remaining), -1)
                delta[remaining] += alpha[order] * _direction(g, order)
                delta[remaining] = np.clip(flat[remaining] + delta[remaining], 0.0, 1.0) - flat[remaining]
            per_target.append(np.linalg.norm(delta.astype(np.float64), ord=order, axis=1))
        columns.append(np.sort(np.stack(per_target, axis=1), axis=1))
    return np.concatenate(columns, axis=1)


def _direction(g: np.ndarray, order) -> np.ndarray:
    """Steepest-ascent unit step for the norm: sign (L-inf), normalised (L2), and for L1
    the single coordinate of largest gradient per record."""
    if order == np.inf:
        return np.sign(g)
    if order == 2:
        return g / (np.linalg.norm(g, axis=1, keepdims=True) + 1e-12)
    step = np.zeros_like(g)
    top = np.abs(g).argmax(axis=1)
    step[np.arange(len(g)), top] = np.sign(g[np.arange(len(g)), top])
    return step


@dataclass
class Regressor:
    """The authors' confidence regressor on features standardised per feature group by the
    owner's private features: Linear(F, 100), ReLU, Linear(100, 1), tanh."""

    mean: np.ndarray
    std: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: float

    def score(self, features: np.ndarray) -> np.ndarray:
        """Public-ness of each record in [-1, 1] (private -> -1, public -> +1)."""
        hidden = np.maximum(self._z(features) @ self.w1 + self.b1, 0.0)
        return np.tanh(hidden @ self.w2 + self.b2)

    def _z(self, features: np.ndarray) -> np.ndarray:
        return (features - self.mean) / self.std


def fit(private: np.ndarray, public: np.ndarray, *, groups: int = 3, hidden: int = 100,
        epochs: int = 1000, lr: float = 0.1, seed: int = 0) -> Regressor:
    """Fit on the owner's own model's features: full-batch gradient descent on the
    authors' loss, -mean(sign * score) with sign -1 private, +1 public. Standardisation
    is per group of columns (one per noise kind or norm), from the private features."""
    width = private.shape[1] // groups
    by_group = private.reshape(len(private), groups, width)
    mean = np.repeat(by_group.mean(axis=(0, 2)), width)
    std = np.repeat(by_group.std(axis=(0, 2)), width) + 1e-12
    rng = np.random.default_rng(seed)
    bound1, bound2 = 1 / math.sqrt(private.shape[1]), 1 / math.sqrt(hidden)
    r = Regressor(mean, std, rng.uniform(-bound1, bound1, (private.shape[1], hidden)),
                  rng.uniform(-bound1, bound1, hidden), rng.uniform(-bound2, bound2, hidden),
                  float(rng.uniform(-bound2, bound2)))
    z = r._z(np.vstack([private, public]))
    sign = np.concatenate([-np.ones(len(private)), np.ones(len(public))])
    for _ in range(epochs):
        pre = z @ r.w1 + r.b1
        hid = np.maximum(pre, 0.0)
        out = np.tanh(hid @ r.w2 + r.b2)
        d_out = -sign / len(z) * (1.0 - out ** 2)
        d_pre = np.outer(d_out, r.w2) * (pre > 0)
        r.w2 -= lr * (hid.T @ d_out)
        r.b2 -= lr * float(d_out.sum())
        r.w1 -= lr * (z.T @ d_pre)
        r.b1 -= lr * d_pre.sum(axis=0)
    return r


@dataclass
class InferenceResult:
    p_value: float
    t: float
    mean_private: float
    mean_public: float


def test(regressor: Regressor, private: np.ndarray, public: np.ndarray) -> InferenceResult:
    """Welch's one-sided t-test that public records score higher than private ones on the
    suspect's held-out features (small p: the suspect treats the private records as seen)."""
    return welch(regressor.score(public), regressor.score(private))


def welch(a: np.ndarray, b: np.ndarray) -> InferenceResult:
    """One-sided Welch t-test of mean(a) > mean(b)."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb) or 1e-12
    t = float((a.mean() - b.mean()) / se)
    df = (va + vb) ** 2 / ((va ** 2) / (len(a) - 1) + (vb ** 2) / (len(b) - 1) or 1e-300)
    return InferenceResult(float(student_t_sf(t, float(df))), t, float(b.mean()), float(a.mean()))


def p_at_m(regressor: Regressor, private: np.ndarray, public: np.ndarray, m: int, *,
           repeats: int = 100, seed: int = 0) -> float:
    """The authors' p-value with m private records: the harmonic mean of the one-sided
    Welch p-values of `repeats` random draws of m positions (the same positions in the
    private and public held-out records)."""
    if not 2 <= m <= min(len(private), len(public)):
        raise ValueError(f"m must be 2..{min(len(private), len(public))}, got {m}")
    rng = np.random.default_rng(seed)
    a, b = regressor.score(public), regressor.score(private)
    ps = []
    for _ in range(repeats):
        pick = rng.permutation(min(len(a), len(b)))[:m]
        ps.append(max(welch(a[pick], b[pick]).p_value, 1e-300))
    return len(ps) / sum(1.0 / p for p in ps)


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` degrees of freedom, through the regularised
    incomplete beta function (exact up to the continued fraction's 1e-15 tolerance)."""
    x = df / (df + t * t)
    tail = 0.5 * betainc(df / 2.0, 0.5, x)
    return tail if t > 0 else 1.0 - tail


def record_leaf(x: np.ndarray, label: int) -> bytes:
    """The dataset claim's leaf hash of one record (FORMAT.md: dcbor([label, float32 bytes]))."""
    return merkle.leaf_hash(cbor.dumps([int(label), np.ascontiguousarray(x, dtype="<f4").tobytes()]))


def prove_private(train_claim: dict, x: np.ndarray, y: np.ndarray, indices, proofs) -> str | None:
    """None when every private record is the training record at its index under the
    card's train-split Merkle root (`claims.dataset.train`), else why not."""
    root = bytes.fromhex(train_claim["merkle_root"])
    size = train_claim["records"]
    for i, (row, label, index, proof) in enumerate(zip(x, y, indices, proofs)):
        if not merkle.verify_inclusion(record_leaf(row, label), int(index), size, proof, root):
            return (f"private record {i} (train index {index}) is not proved against "
                    "claims.dataset.train.merkle_root")
    return None
