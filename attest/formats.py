"""Datasets by path, streamed as (features, labels) batches in a fixed record order.

Every format ends in the same canonical record, (label, float32 features), so the same
records give the same Merkle root whatever the format or the shard split. Images become
float32 in [0, 1], channels first: (1, H, W) for greyscale, (3, H, W) for anything else
(converted to RGB). Formats:

- an image folder (`root/<class>/<image>`, classes in sorted order, files in sorted walk
  order, the layout torchvision's `ImageFolder` reads);
- Parquet files, Arrow IPC files and a saved Hugging Face `datasets` directory
  (`state.json` + `data-*.arrow`), read a record batch at a time; the label column is
  `label_column`, the features the one other column (an image `{bytes, path}` struct,
  encoded image bytes, or a list of numbers) or every other numeric column;
- WebDataset shards (`.tar`, or a folder of them in sorted order): samples are the
  consecutive members sharing a key; features from one `.png/.jpg/.jpeg/.npy` member,
  the label from `.cls`, `.label` or `.json` (`{"label": n}`);
- CSV (header row, a label column) and NPZ (arrays `x`, `y`; loaded whole: NPZ cannot
  be read in parts).
"""
from __future__ import annotations

import csv
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cards.errors import LaminateError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
TAR_FEATURES = (".png", ".jpg", ".jpeg", ".npy")
TAR_LABELS = (".cls", ".label", ".json")
MAX_MEMBER_BYTES = 256 << 20          # one tar member or image file
MAX_IMAGE_PIXELS = 1 << 26            # 64 Mpixel: refuse decompression bombs
BATCH = 1024

Batches = Iterator[tuple[np.ndarray, np.ndarray]]


def kind_of(path: Path) -> str:
    """Which reader a dataset path needs; raises naming the path when none fits."""
    suffix = path.suffix.lower()
    if path.is_file():
        kinds = {".csv": "csv", ".npz": "npz", ".parquet": "parquet", ".arrow": "arrow",
                 ".tar": "webdataset"}
        if suffix in kinds:
            return kinds[suffix]
        raise LaminateError(f"dataset.name: {path}: unknown format {suffix or '(no suffix)'} "
                            f"(expected .csv, .npz, .parquet, .arrow, .tar or a folder)")
    if not path.is_dir():
        raise LaminateError(f"dataset.name: file not found: {path}")
    names = {p.name for p in path.iterdir()}
    if "dataset_dict.json" in names:
        raise LaminateError(f"dataset.name: {path} holds several splits; name one split's folder")
    if "state.json" in names:
        return "huggingface"
    if any(n.endswith(".parquet") for n in names):
        return "parquet"
    if any(n.endswith(".tar") for n in names):
        return "webdataset"
    if any(p.is_dir() for p in path.iterdir()):
        return "imagefolder"
    raise LaminateError(f"dataset.name: {path}: no class folders, .parquet, .tar or "
                        f"state.json inside")


def batches(path, *, label_column: str = "label", batch: int = BATCH) -> Batches:
    """(x float32 (n, ...), y int64 (n,)) batches of the dataset at `path`, in record order."""
    path = Path(path)
    reader = {"csv": csv_rows, "npz": _npz, "parquet": _parquet, "arrow": _arrow,
              "huggingface": _huggingface, "webdataset": _webdataset,
              "imagefolder": _imagefolder}[kind_of(path)]
    yield from _rebatch(reader(path, label_column), batch)


def class_names(path) -> list[str] | None:
    """An image folder's class names (its folder names, in label order), else None."""
    path = Path(path)
    return _classes(path) if kind_of(path) == "imagefolder" else None


def class_count(path) -> int | None:
    """The class count a dataset declares (image folders: one per folder; Hugging Face:
    its ClassLabel names), or None when only the labels tell."""
    path = Path(path)
    kind = kind_of(path)
    if kind == "imagefolder":
        return len(_classes(path))
    if kind == "huggingface":
        info = path / "dataset_info.json"
        if info.is_file():
            features = _json(info).get("features") or {}
            for feature in features.values() if isinstance(features, dict) else ():
                if isinstance(feature, dict) and feature.get("_type") == "ClassLabel":
                    return len(feature.get("names") or []) or None
    return None


def _rebatch(items, batch: int) -> Batches:
    xs, ys = [], []
    for x, y in items:
        xs.append(x)
        ys.append(y)
        if len(xs) >= batch:
            yield np.stack(xs), np.asarray(ys, np.int64)
            xs, ys = [], []
    if xs:
        yield np.stack(xs), np.asarray(ys, np.int64)


def _label(value, where: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        try:
            if float(value) != int(float(value)):
                raise ValueError
            value = int(float(value))
        except (TypeError, ValueError):
            raise LaminateError(f"{where}: label {value!r} is not an integer") from None
    if value < 0:
        raise LaminateError(f"{where}: label {value} is negative")
    return int(value)


def _json(path: Path):
    try:
        return json.loads(path.read_bytes()[:MAX_MEMBER_BYTES])
    except (OSError, ValueError) as exc:
        raise LaminateError(f"{path}: not readable JSON: {exc}") from None


def image_array(data: bytes, where: str) -> np.ndarray:
    """Encoded image bytes as float32 in [0, 1], channels first."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise LaminateError(f"{where}: image of {img.width}x{img.height} pixels is too large")
            img = img if img.mode in ("L", "RGB") else img.convert("RGB")
            array = np.asarray(img, dtype=np.uint8)
    except LaminateError:
        raise
    except Exception as exc:  # Pillow raises many types for undecodable bytes
        raise LaminateError(f"{where}: not a readable image ({type(exc).__name__})") from None
    from attest.datasets import scale  # the card's stated rule: raw / 255

    return scale(array[None] if array.ndim == 2 else array.transpose(2, 0, 1), 0.0, 255.0)


def _read(path: Path) -> bytes:
    size = path.stat().st_size
    if size > MAX_MEMBER_BYTES:
        raise LaminateError(f"{path}: {size} bytes, more than {MAX_MEMBER_BYTES} per record")
    return path.read_bytes()


def _classes(root: Path) -> list[str]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise LaminateError(f"dataset.name: {root}: no class folders")
    return classes


def _imagefolder(root: Path, label_column: str):
    for index, name in enumerate(_classes(root)):
        found = False
        for folder, _, files in sorted(os.walk(root / name)):
            for file in sorted(files):
                if file.lower().endswith(IMAGE_SUFFIXES):
                    found = True
                    path = Path(folder) / file
                    yield image_array(_read(path), str(path)), index
        if not found:
            raise LaminateError(f"{root / name}: class folder without images "
                                f"({', '.join(IMAGE_SUFFIXES)})")


def csv_rows(path: Path, label_column: str):
    """(features, label) per data line of a CSV file with a header; the one CSV reader,
    used by the streaming formats and by `attest.datasets.load_csv`."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if not header:
            raise LaminateError(f"{path}: empty CSV file")
        if label_column not in header:
            raise LaminateError(f"dataset.label_column: {path}: no column {label_column!r} "
                                f"(columns: {', '.join(header)})")
        if len(header) < 2:
            raise LaminateError(f"{path}: no feature columns besides {label_column!r}")
        li = header.index(label_column)
        for n, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise LaminateError(f"{path}: line {n}: {len(row)} values, header has {len(header)}")
            values = []
            for name, v in zip(header, row):
                try:
                    values.append(float(v))
                except ValueError:
                    raise LaminateError(f"{path}: line {n}: column {name!r}: {v!r} is not a "
                                        "number") from None
            label = values.pop(li)
            yield np.asarray(values, np.float32), _label(label, f"{path}: line {n}")


def _npz(path: Path, label_column: str):
    from attest.datasets import load_npz

    data = load_npz(path, None)
    for i in range(len(data)):
        yield data.x[i], int(data.y[i])


def _table_rows(batch, where: str, label_column: str):
    """(features, label) per row of an Arrow record batch."""
    names = batch.schema.names
    if label_column not in names:
        raise LaminateError(f"dataset.label_column: {where}: no column {label_column!r} "
                            f"(columns: {', '.join(names)})")
    labels = batch.column(label_column).to_pylist()
    others = [n for n in names if n != label_column]
    if not others:
        raise LaminateError(f"{where}: no feature columns besides {label_column!r}")
    columns = [batch.column(n).to_pylist() for n in others]
    for i, label in enumerate(labels):
        row = f"{where}: row {i}"
        values = [c[i] for c in columns]
        if len(values) == 1:
            x = _cell(values[0], row)
        else:
            try:
                x = np.asarray(values, np.float32)
            except (TypeError, ValueError):
                raise LaminateError(f"{row}: several feature columns must all be numbers") from None
        yield x, _label(label, row)


def _cell(value, where: str) -> np.ndarray:
    if isinstance(value, dict) and "bytes" in value:      # a datasets Image feature
        if value["bytes"] is None:
            raise LaminateError(f"{where}: image given by path only; embed the bytes")
        return image_array(value["bytes"], where)
    if isinstance(value, (bytes, bytearray)):
        return image_array(bytes(value), where)
    try:
        return np.asarray(value, np.float32).reshape(np.shape(value) or (1,))
    except (TypeError, ValueError):
        raise LaminateError(f"{where}: features must be numbers, an image or a list") from None


def _files(path: Path, suffix: str) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.iterdir() if p.name.endswith(suffix))


def _parquet(path: Path, label_column: str):
    import pyarrow.parquet as pq

    for file in _files(path, ".parquet"):
        try:
            reader = pq.ParquetFile(file)
        except Exception as exc:  # pyarrow raises ArrowInvalid and OSError subtypes
            raise LaminateError(f"{file}: not a Parquet file ({exc})") from None
        for batch in reader.iter_batches(batch_size=BATCH):
            yield from _table_rows(batch, str(file), label_column)


def _arrow_batches(file: Path):
    import pyarrow as pa

    try:
        source = pa.memory_map(str(file))
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            source = pa.memory_map(str(file))
            file_reader = pa.ipc.open_file(source)
            reader = (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
        yield from reader
    except pa.ArrowException as exc:
        raise LaminateError(f"{file}: not an Arrow IPC file ({exc})") from None


def _arrow(path: Path, label_column: str):
    for batch in _arrow_batches(path):
        yield from _table_rows(batch, str(path), label_column)


def _huggingface(path: Path, label_column: str):
    state = _json(path / "state.json")
    files = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(files, list) or not files:
        raise LaminateError(f"{path / 'state.json'}: no _data_files listed")
    for entry in files:
        name = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            raise LaminateError(f"{path / 'state.json'}: bad _data_files entry {entry!r}")
        file = path / name
        for batch in _arrow_batches(file):
            yield from _table_rows(batch, str(file), label_column)


def _sample_key(name: str) -> tuple[str, str]:
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (dot + ext).lower()


def _webdataset(path: Path, label_column: str):
    for shard in _files(path, ".tar"):
        try:
            with tarfile.open(shard, "r|*") as tar:
                yield from _tar_samples(tar, shard)
        except tarfile.TarError as exc:
            raise LaminateError(f"{shard}: not a readable tar file ({exc})") from None


def _tar_samples(tar, shard: Path):
    key, parts = None, {}
    for member in tar:
        if not member.isfile():
            continue
        if member.size > MAX_MEMBER_BYTES:
            raise LaminateError(f"{shard}: {member.name}: {member.size} bytes, more than "
                                f"{MAX_MEMBER_BYTES} per member")
        name, ext = _sample_key(member.name)
        if name != key:
            if key is not None:
                yield _tar_sample(key, parts, shard)
            key, parts = name, {}
        if ext in TAR_FEATURES + TAR_LABELS:
            parts[ext] = tar.extractfile(member).read()
        tar.members = []    # a streamed tar otherwise keeps every member's header
    if key is not None:
        yield _tar_sample(key, parts, shard)


def _tar_sample(key: str, parts: dict, shard: Path):
    where = f"{shard}: sample {key}"
    features = [e for e in TAR_FEATURES if e in parts]
    labels = [e for e in TAR_LABELS if e in parts]
    if len(features) != 1 or not labels:
        raise LaminateError(f"{where}: needs one of {', '.join(TAR_FEATURES)} and a label "
                            f"({', '.join(TAR_LABELS)}), has {', '.join(sorted(parts)) or 'nothing'}")
    data = parts[features[0]]
    if features[0] == ".npy":
        try:
            x = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise LaminateError(f"{where}: not a .npy array ({exc})") from None
        x = np.asarray(x, np.float32)
    else:
        x = image_array(data, where)
    raw = parts[labels[0]]
    if labels[0] == ".json":
        doc = _json_bytes(raw, where)
        raw = doc.get("label") if isinstance(doc, dict) else None
    else:
        raw = raw.decode("ascii", "replace").strip()
    return x, _label(raw, where)


def _json_bytes(raw: bytes, where: str):
    try:
        return json.loads(raw)
    except ValueError:
        raise LaminateError(f"{where}: label .json is not JSON") from None
