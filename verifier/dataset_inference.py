"""Dataset inference (Maini, Yaghini and Papernot, ICLR 2021) as ownership evidence, black-box.

A model trained on a record tends to sit farther from its decision boundary there than
on records it never saw. The owner holds private training records (each proved against
the card's train-split Merkle root, `prove_private`) and public records of the same
distribution. For any model, a blind walk from each record along fixed random
directions (uniform, Gaussian and Laplace noise, as the paper's "blind walk") counts the
steps until the label changes; a linear distinguisher fitted on the owner's own model
(private vs public) scores a suspect's walk lengths on held-out records, and Welch's
one-sided t-test asks whether its private records score as "more private" than its
public ones. A small p-value says the suspect's boundary treats the owner's records as
training data, which is also what any model trained on the same distribution can do:
the measured false-positive rate (bench/conflicts.py) is why the dispute rule never
lets this evidence decide alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cards import cbor, merkle

NOISES = ("uniform", "gaussian", "laplace")
STEP = {"uniform": 0.02, "gaussian": 0.02, "laplace": 0.02}
MAX_STEPS = 60
MAX_RECORDS = 10_000


def walk_features(predict, x: np.ndarray, y: np.ndarray, *, directions: int, seed: int) -> np.ndarray:
    """Steps to a label change (MAX_STEPS + 1 if none) for each record and direction:
    shape (records, directions * 3). The directions depend only on `seed`, so every
    model is walked along the same ones."""
    if len(x) > MAX_RECORDS:
        raise ValueError(f"dataset inference takes at most {MAX_RECORDS} records, got {len(x)}")
    rng = np.random.default_rng(seed)
    shape = x.shape[1:]
    columns = []
    for noise in NOISES:
        for _ in range(directions):
            scale = STEP[noise]
            if noise == "uniform":
                step = rng.uniform(-scale, scale, size=shape)
            elif noise == "gaussian":
                step = rng.normal(0.0, scale, size=shape)
            else:
                step = rng.laplace(0.0, scale, size=shape)
            columns.append(_walk(predict, x, y, step.astype(np.float32)))
    return np.stack(columns, axis=1).astype(np.float64)


def _walk(predict, x, y, step) -> np.ndarray:
    steps = np.full(len(x), MAX_STEPS + 1, dtype=np.int64)
    remaining = np.arange(len(x))
    for t in range(1, MAX_STEPS + 1):
        if not len(remaining):
            break
        moved = np.clip(x[remaining] + t * step, 0.0, 1.0).astype(np.float32)
        changed = predict(moved) != y[remaining]
        steps[remaining[changed]] = t
        remaining = remaining[~changed]
    return steps


@dataclass
class Distinguisher:
    """Least-squares linear scorer on standardised walk lengths: private -> 0, public -> 1."""

    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray

    def score(self, features: np.ndarray) -> np.ndarray:
        z = (features - self.mean) / self.std
        return np.hstack([z, np.ones((len(z), 1))]) @ self.weights


def fit(private: np.ndarray, public: np.ndarray, ridge: float = 1e-3) -> Distinguisher:
    """Fit on the owner's own model's features."""
    both = np.vstack([private, public])
    mean, std = both.mean(axis=0), both.std(axis=0) + 1e-9
    z = np.hstack([(both - mean) / std, np.ones((len(both), 1))])
    target = np.concatenate([np.zeros(len(private)), np.ones(len(public))])
    weights = np.linalg.solve(z.T @ z + ridge * np.eye(z.shape[1]), z.T @ target)
    return Distinguisher(mean, std, weights)


@dataclass
class InferenceResult:
    p_value: float
    t: float
    mean_private: float
    mean_public: float


def test(distinguisher: Distinguisher, private: np.ndarray, public: np.ndarray) -> InferenceResult:
    """Welch's one-sided t-test that public records score higher than private ones on the
    suspect's held-out features (small p: the suspect treats the private records as seen)."""
    a, b = distinguisher.score(public), distinguisher.score(private)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb) or 1e-12
    t = float((a.mean() - b.mean()) / se)
    df = (va + vb) ** 2 / ((va ** 2) / (len(a) - 1) + (vb ** 2) / (len(b) - 1) or 1e-300)
    return InferenceResult(student_t_sf(t, df), t, float(b.mean()), float(a.mean()))


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` degrees of freedom, through the regularised
    incomplete beta function (exact up to the continued fraction's 1e-15 tolerance)."""
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return tail if t > 0 else 1.0 - tail


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, 1.0 - x) / b


def _beta_cf(a: float, b: float, x: float) -> float:
    """Lentz's continued fraction for the incomplete beta function."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


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
