"""Measurements: turn what training actually used into claim sections.

Each function computes its claim from the real artefact (records, resolved config, the
wrapper's own files, the exported model bytes), never from what the user says they used.
Record bytes and the Merkle root follow FORMAT.md so a verifier can later check a single
record's membership against the card.
"""
import base64
import csv
import functools
import hashlib
import importlib
import importlib.metadata
import io
import operator
import sys
from pathlib import Path

import numpy as np

from attest import fasthash
from cards import cbor, merkle
from cards.errors import LaminateError

WRAPPER_PACKAGES = ("attest", "cards", "enclave_sim")
# The libraries the claims depend on: training and DP noise, export, evaluation, arrays.
LIBRARIES = ("torch", "opacus", "onnx", "onnxruntime", "numpy")
MAX_MODIFIED_LISTED = 16
_CHUNK = 1 << 20
_BATCH_BYTES = 8 << 20
_BATCH_RECORDS = 1024


def _label(label) -> int:
    try:
        return operator.index(label)
    except TypeError:
        raise LaminateError(f"record label must be an integer, got {type(label).__name__}") from None


def record_bytes(x, label) -> bytes:
    """dcbor([label, x as little-endian float32 bytes]): the bytes one Merkle leaf covers."""
    features = np.ascontiguousarray(x, dtype="<f4")
    return fasthash.record_prefix(_label(label), features.nbytes) + features.tobytes()


class DatasetMeasure:
    """Count, schema, label histogram and Merkle root of records given a batch at a time,
    in O(log n) memory so datasets larger than RAM can be measured as they stream.

    A batch is hashed whole by `attest.fasthash` (native code across cores where built),
    so small records do not cost a Python call each."""

    def __init__(self, name: str, classes: int):
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
            raise LaminateError(f"dataset {name}: classes must be a positive int, got {classes!r}")
        self.name, self.classes = name, classes
        self.tree = merkle.MerkleTree()
        self.histogram = np.zeros(classes, np.int64)
        self.shape: tuple | None = None

    @property
    def records(self) -> int:
        return self.tree.size

    def add_batch(self, x, labels) -> np.ndarray:
        """Measure records x[i] with labels[i], in order; returns their (n, 32) leaf hashes."""
        features = np.ascontiguousarray(x, dtype="<f4")
        y = np.asarray(labels)
        if y.dtype.kind not in "iu":
            y = np.array([_label(v) for v in y.reshape(-1)], dtype=np.int64)
        y = y.astype(np.int64).reshape(-1)
        first = self.tree.size
        if features.ndim < 1 or features.shape[0] != len(y):
            raise LaminateError(f"dataset {self.name}: a batch at record {first} has "
                                f"{features.shape[0] if features.ndim else 0} inputs but {len(y)} labels")
        if not len(y):
            return np.empty((0, 32), np.uint8)
        if features.shape[1:] != self.shape:
            if self.shape is not None:
                raise LaminateError(f"dataset {self.name}: record {first} has shape "
                                    f"{list(features.shape[1:])}, expected {list(self.shape)} like record 0")
            self.shape = features.shape[1:]
        bad = np.flatnonzero((y < 0) | (y >= self.classes))
        if len(bad):
            raise LaminateError(f"dataset {self.name}: record {first + int(bad[0])} has label "
                                f"{int(y[bad[0]])}, outside 0..{self.classes - 1}")
        leaves = fasthash.measure_into(self.tree, features, y)
        self.histogram += np.bincount(y, minlength=self.classes)
        return leaves

    def claim(self) -> dict:
        """The `DatasetClaim` of FORMAT.md over everything added so far."""
        if self.shape is None:
            raise LaminateError(f"dataset {self.name}: no records")
        return {
            "name": self.name,
            "records": self.tree.size,
            "schema": {"features": [int(d) for d in self.shape], "dtype": "float32",
                       "classes": self.classes},
            "label_histogram": [int(c) for c in self.histogram],
            "merkle_root": self.tree.root().hex(),
        }


def dataset_claim(name: str, records, classes: int) -> dict:
    """The `DatasetClaim` of `records` ((x, label) pairs), gathered into batches of up to
    1024 records or 8 MiB for `DatasetMeasure` (large records are still hashed in place, one at a time)."""
    measure = DatasetMeasure(name, classes)
    xs: list = []
    ys: list = []
    held = 0
    for x, label in records:
        features = np.ascontiguousarray(x, dtype="<f4")
        if xs and (features.shape != xs[0].shape or held >= _BATCH_BYTES
                   or len(xs) >= _BATCH_RECORDS):
            measure.add_batch(np.stack(xs), ys)
            xs, ys, held = [], [], 0
        xs.append(features)
        ys.append(_label(label))
        held += features.nbytes
    if xs:
        measure.add_batch(np.stack(xs), ys)
    return measure.claim()


def dataset_claim_batches(name: str, batches, classes: int) -> dict:
    """The `DatasetClaim` of (x, labels) batches: the fast path for loaders that batch."""
    measure = DatasetMeasure(name, classes)
    for x, labels in batches:
        measure.add_batch(x, labels)
    return measure.claim()


def config_claim(config) -> dict:
    """The resolved config as plain CBOR types and its digest H(dcbor(config))."""
    if not isinstance(config, dict):
        raise LaminateError(f"config: expected a mapping, got {type(config).__name__}")
    encoded = cbor.dumps(config)
    return {"config": cbor.loads(encoded), "config_sha256": hashlib.sha256(encoded).hexdigest()}


def file_sha256(path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(chunk)
    except OSError as exc:
        raise LaminateError(f"{path}: cannot read: {exc.strerror}") from None
    return digest.hexdigest()


def wrapper_files() -> dict:
    """{relpath: hex} for every .py file of the installed wrapper packages."""
    files = {}
    for package in WRAPPER_PACKAGES:
        root = Path(importlib.import_module(package).__file__).resolve().parent
        for path in root.rglob("*.py"):
            if "__pycache__" not in path.parts:
                files[f"{package}/{path.relative_to(root).as_posix()}"] = file_sha256(path)
    return dict(sorted(files.items()))


def _record_mismatches(dist, record: str) -> list:
    """The .py files RECORD lists whose bytes on disk no longer match their listed hash
    (an installed library patched on disk); compiled files are left to RECORD's digest."""
    modified = []
    for row in csv.reader(io.StringIO(record)):
        if len(row) < 2 or not row[0].endswith(".py") or not row[1].startswith("sha256="):
            continue
        try:
            data = Path(dist.locate_file(row[0])).read_bytes()
        except OSError:
            modified.append(row[0])
            continue
        got = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        if got != row[1][len("sha256="):]:
            modified.append(row[0])
    return sorted(modified)


@functools.lru_cache(maxsize=1)
def library_claim() -> dict:
    """{name: {version, record_sha256, modified}} of the installed libraries the claims
    depend on: RECORD's digest pins every file the installer wrote, and `modified` lists
    (up to 16) Python files that differ from RECORD now. Absent libraries are left out.
    Cached per process: a library patched after this process imported it is not seen
    anyway (the card's entry point is what shows an in-process patch)."""
    out = {}
    for name in LIBRARIES:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        record = dist.read_text("RECORD")
        out[name] = {"version": dist.version,
                     "record_sha256": hashlib.sha256(record.encode()).hexdigest() if record else None,
                     "modified": _record_mismatches(dist, record or "")[:MAX_MODIFIED_LISTED]}
    return out


def main_script():
    """The script this process was started with, if it is a file (None in a REPL)."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return Path(path) if path and Path(path).is_file() else None


def code_claim(entry_point=None) -> dict:
    """Code identity: the digest policies pin is over the wrapper files only, so the same
    laminate release has the same identity whatever script drives it; the entry point
    and the libraries are measured beside it, for policies that pin them too."""
    files = wrapper_files()
    entry = None
    if entry_point is not None:
        path = Path(entry_point)
        try:
            shown = path.resolve().relative_to(Path.cwd().resolve()).as_posix()
        except ValueError:
            shown = path.name
        entry = {"path": shown, "sha256": file_sha256(path)}
    return {"wrapper_sha256": hashlib.sha256(cbor.dumps(files)).hexdigest(),
            "wrapper_files": files, "entry_point": entry,
            "libraries": {name: dict(lib, modified=list(lib["modified"]))
                          for name, lib in library_claim().items()}}   # a copy of the cache


def state_dict_sha256(state: dict) -> str:
    """H(dcbor([[name, dtype, shape, little-endian bytes], ...])) over a torch state_dict
    in its own order: the canonical digest of a set of weights, streamed per tensor."""
    digest = hashlib.sha256(fasthash.cbor_head(4, len(state)))
    for name, tensor in state.items():
        try:
            array = np.asarray(tensor.detach().cpu().numpy())
        except (AttributeError, TypeError, RuntimeError) as exc:
            raise LaminateError(f"start: cannot read tensor {name!r} ({exc})") from None
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        digest.update(b"\x84" + cbor.dumps(str(name)) + cbor.dumps(array.dtype.name)
                      + cbor.dumps([int(d) for d in array.shape])
                      + fasthash.cbor_head(2, array.nbytes))
        digest.update(array)
    return digest.hexdigest()


def _value_info(value, path) -> dict:
    if not value.type.HasField("tensor_type"):
        raise LaminateError(f"{path}: graph value {value.name!r} is not a tensor")
    tensor = value.type.tensor_type
    from onnx import helper
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
    except (KeyError, TypeError, ValueError):
        raise LaminateError(f"{path}: graph value {value.name!r} has unknown element type "
                            f"{tensor.elem_type}") from None
    shape = [int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
             for d in tensor.shape.dim]
    return {"name": value.name, "shape": shape, "dtype": dtype}


def model_claim(onnx_path, name: str) -> dict:
    """Digest, size, parameter count, opset and I/O signature of the exported model."""
    import onnx

    path = Path(onnx_path)
    sha256 = file_sha256(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own types for arbitrary bytes
        raise LaminateError(f"{path}: not an ONNX model ({type(exc).__name__})") from None
    graph = model.graph
    opsets = [op.version for op in model.opset_import if op.domain in ("", "ai.onnx")]
    if not graph.output or not opsets:
        raise LaminateError(f"{path}: not an ONNX model (no graph outputs or default opset)")
    initializers = {init.name for init in graph.initializer}
    return {
        "name": name,
        "format": "onnx",
        "sha256": sha256,
        "size": path.stat().st_size,
        "parameters": int(sum(int(np.prod(init.dims, dtype=np.int64)) for init in graph.initializer)),
        "opset": int(opsets[0]),
        "inputs": [_value_info(v, path) for v in graph.input if v.name not in initializers],
        "outputs": [_value_info(v, path) for v in graph.output],
    }
