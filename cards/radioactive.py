"""Radioactive data: the public parts both the trainer and the verifier recompute.

Sablayrolles, Douze, Schmid and Jegou ("Radioactive data: tracing through training",
ICML 2020) mark a share of the training records by moving their features, in a marking
network's feature space, toward one secret unit vector (carrier) per class; a model
trained on them has class weights tilted toward the carriers. Here the carriers and the
marked records are a public function of a seed the attestation module drew (so the owner
cannot pick carriers that some unrelated model already leans toward), bound by a
commitment in the card; the opening (seed, salt, parameters) stays with the owner.

The white-box test: for each class c, the cosine between the tested model's class-c
weights (mapped into the marking feature space) and carrier c. For a direction
independent of a uniformly random unit carrier in d dimensions,
P(cos >= t) = 0.5 * I_{1-t^2}((d-1)/2, 1/2) for t >= 0 (exact; I is the regularized
incomplete beta function), and the classes' p-values are combined by Fisher's method
(exact: carriers are independent, so -2 sum log p is chi-square with 2K degrees).
Only hashlib, math and numpy: the verifier needs neither torch nor scipy.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import operator
from pathlib import Path

import numpy as np

from . import cbor
from .errors import LaminateError
from .files import write_atomic

SCHEME = "laminate-radioactive-v1"
OPENING_FORMAT = "laminate-radioactive-opening/1"
SEED_BYTES = SALT_BYTES = 32
_PARAMS = ("scheme", "classes", "feature_dim", "train_records", "marked_records")


def make_parameters(classes: int, feature_dim: int, train_records: int, marked_records: int) -> dict:
    """What the commitment binds besides the seed: the carriers' shape and the marking's size."""
    counts = [operator.index(v) for v in (classes, feature_dim, train_records, marked_records)]
    if counts[0] < 2 or counts[1] < 2:
        raise LaminateError("radioactive: needs at least 2 classes and 2 feature dimensions")
    if not 1 <= counts[3] <= counts[2]:
        raise LaminateError("radioactive.fraction: marks no record, or more than the train split")
    return {"scheme": SCHEME, **dict(zip(_PARAMS[1:], counts))}


def marked_count(fraction: float, train_records: int) -> int:
    """max(1, round(fraction x records)): how many train records a fraction marks."""
    return max(1, round(fraction * train_records))


def commit(seed: bytes, salt: bytes, params: dict) -> str:
    """H(salt || seed || dcbor(parameters)) as lowercase hex (the watermark's construction)."""
    return hashlib.sha256(bytes(salt) + bytes(seed) + cbor.dumps(params)).hexdigest()


def _stream(seed: bytes, label: bytes, n: int) -> bytes:
    return hashlib.shake_256(SCHEME.encode() + b"/" + label + b"/" + bytes(seed)).digest(n)


def carriers(seed: bytes, classes: int, feature_dim: int) -> np.ndarray:
    """One uniformly random unit vector per class (float64, rows): Box-Muller Gaussians from
    a SHAKE-256 stream of the seed, normalised."""
    n = classes * feature_dim
    raw = np.frombuffer(_stream(seed, b"carriers", 16 * n), dtype="<u8").reshape(2, n)
    u1, u2 = ((raw >> np.uint64(11)).astype(np.float64) + 1.0) / 2.0 ** 53   # in (0, 1]
    gauss = (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)).reshape(classes, feature_dim)
    return gauss / np.linalg.norm(gauss, axis=1, keepdims=True)


def carriers_digest(vectors: np.ndarray) -> str:
    """SHA-256 of the carriers rounded to float32, little-endian, row-major."""
    return hashlib.sha256(np.ascontiguousarray(vectors, dtype="<f4").tobytes()).hexdigest()


def marked_indices(seed: bytes, train_records: int, marked_records: int) -> np.ndarray:
    """The train records to mark: the `marked_records` smallest keyed hashes of the indices."""
    keys = [hashlib.sha256(_stream(seed, b"records", 32) + i.to_bytes(8, "big")).digest()
            for i in range(train_records)]
    order = sorted(range(train_records), key=keys.__getitem__)
    return np.sort(np.array(order[:marked_records], dtype=np.int64))


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b), by its continued fraction (Lentz): the
    exact tails of the radioactive cosine test and of dataset inference's t-test."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 10_000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * f


def cosine_p_value(cosine: float, feature_dim: int) -> float:
    """P(cos(u, v) >= cosine) for a fixed v and u uniform on the unit sphere in R^d."""
    cosine = min(max(float(cosine), -1.0), 1.0)
    tail = 0.5 * betainc((feature_dim - 1) / 2.0, 0.5, 1.0 - cosine * cosine)
    return tail if cosine >= 0 else 1.0 - tail


def fisher(p_values) -> float:
    """Fisher's combined p-value: P(chi2_2K >= -2 sum log p), in closed form for even degrees."""
    half = -sum(math.log(max(p, 1e-300)) for p in p_values)      # X / 2
    term, total = 1.0, 1.0
    for j in range(1, len(p_values)):
        term *= half / j
        total += term
    return min(1.0, math.exp(-half) * total)


def combined_p_value(cosines, feature_dim: int) -> float:
    """The white-box test's p-value for per-class cosines with the carriers."""
    return fisher([cosine_p_value(c, feature_dim) for c in cosines])


class Opening:
    """The owner's secret: seed, salt and parameters that open the card's commitment."""

    def __init__(self, seed: bytes, salt: bytes, parameters: dict):
        self.seed, self.salt, self.parameters = bytes(seed), bytes(salt), parameters
        self.commitment = commit(self.seed, self.salt, parameters)

    def matches(self, commitment_hex: str) -> bool:
        return isinstance(commitment_hex, str) and hmac.compare_digest(self.commitment, commitment_hex)

    def carriers(self) -> np.ndarray:
        return carriers(self.seed, self.parameters["classes"], self.parameters["feature_dim"])

    def marked_indices(self) -> np.ndarray:
        return marked_indices(self.seed, self.parameters["train_records"],
                              self.parameters["marked_records"])

    def save(self, path) -> Path:
        """Owner-only (0600), like the watermark opening."""
        text = json.dumps({"format": OPENING_FORMAT, "seed": self.seed.hex(), "salt": self.salt.hex(),
                           "parameters": self.parameters, "commitment": self.commitment}, indent=2)
        return write_atomic(path, (text + "\n").encode(), mode=0o600)

    @classmethod
    def load(cls, path) -> Opening:
        """Read an opening file; LaminateError naming the file and field when it is malformed."""
        source = Path(path).name
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LaminateError(f"{source}: cannot read the radioactive opening: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != OPENING_FORMAT:
            raise LaminateError(f"{source}: format: expected {OPENING_FORMAT!r}")
        params = doc.get("parameters")
        if not isinstance(params, dict) or set(params) != set(_PARAMS) or params["scheme"] != SCHEME:
            raise LaminateError(f"{source}: parameters: expected exactly {list(_PARAMS)} of {SCHEME}")
        try:
            seed, salt = bytes.fromhex(doc["seed"]), bytes.fromhex(doc["salt"])
            make_parameters(*(params[k] for k in _PARAMS[1:]))
        except (KeyError, TypeError, ValueError) as exc:
            raise LaminateError(f"{source}: seed, salt or parameters malformed: {exc}") from None
        if len(seed) != SEED_BYTES or len(salt) != SALT_BYTES:
            raise LaminateError(f"{source}: seed and salt must be {SEED_BYTES} bytes each")
        return cls(seed, salt, params)
