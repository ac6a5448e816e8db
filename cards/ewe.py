"""Entangled-watermark (EWE) keys, their commitment and their opening.

An EWE watermark has K keys. Key k stamps a small pattern at one position onto training
records of a source class s_k, and the model learns to answer a target class t_k on
them (entangled with the task by the trainer's soft nearest-neighbour loss). Sources,
targets and pattern pixels come from SHAKE-256 of a seed the attestation module drew;
the position of each pattern is chosen by the trainer from the SNNL gradient without
reading the targets, and the watermark records are training records, each with an RFC
9162 inclusion proof against the card's train-split root. The commitment binds seed,
parameters, positions and records, so nothing can be changed after a suspect exists.
Why the ownership null is exact is written down in FORMAT.md ("EWE ownership null").
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import operator
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import cbor, merkle
from .errors import CardFormatError, LaminateError
from .files import write_atomic

SCHEME = "laminate-ewe-v1"
# The margin-trained variant (Kim et al., "Margin-based Neural Network Watermarking"):
# the same keys, opening and null; only the training of the watermark inputs differs,
# and the scheme name inside the committed parameters says which one was run.
MARGIN_SCHEME = "laminate-ewe-margin-v1"
SCHEMES = (SCHEME, MARGIN_SCHEME)
OPENING_FORMAT = "laminate-ewe-opening/1"
SEED_BYTES = SALT_BYTES = 32
MAX_KEYS = 64
MAX_PER_KEY = 64
MAX_CLASSES = 1 << 16
MAX_ELEMENTS = 1 << 24          # all watermark records together: 64 MiB of float32
MAX_PROOF = 64                  # a proof is at most one hash per tree level
MAX_OPENING_BYTES = 128 << 20   # base64 of MAX_ELEMENTS float32 plus proofs


def make_parameters(keys: int, per_key: int, classes: int, input_shape, value_range,
                    patch: int, scheme: str = SCHEME) -> dict:
    """The parameters map the commitment hashes; raises CardFormatError when out of range."""
    params = {"scheme": scheme, "keys": operator.index(keys),
              "per_key": operator.index(per_key), "classes": operator.index(classes),
              "input_shape": [operator.index(d) for d in input_shape],
              "value_range": [float(v) for v in value_range], "patch": operator.index(patch)}
    validate_parameters(params)
    return params


def validate_parameters(params) -> None:
    """Raise CardFormatError naming the field unless ``params`` is exactly this scheme's map."""
    where = "watermark.parameters"
    expected = {"scheme", "keys", "per_key", "classes", "input_shape", "value_range", "patch"}
    if type(params) is not dict or set(params) != expected:
        raise CardFormatError(where, f"expected a map with exactly {sorted(expected)}")
    if params["scheme"] not in SCHEMES:
        raise CardFormatError(f"{where}.scheme", f"expected one of {', '.join(SCHEMES)}")
    for name, low, high in (("keys", 1, MAX_KEYS), ("per_key", 1, MAX_PER_KEY),
                            ("classes", 3, MAX_CLASSES), ("patch", 1, 64)):
        value = params[name]
        if type(value) is not int or not low <= value <= high:
            raise CardFormatError(f"{where}.{name}", f"expected an integer from {low} to {high}")
    shape = params["input_shape"]
    if (type(shape) is not list or not 2 <= len(shape) <= 8
            or any(type(d) is not int or d < 1 for d in shape)):
        raise CardFormatError(f"{where}.input_shape", "expected 2 to 8 positive integers "
                              "(the last two are height and width)")
    if params["patch"] > min(shape[-2:]):
        raise CardFormatError(f"{where}.patch", "larger than the input's height or width")
    if params["keys"] * params["per_key"] * math.prod(shape) > MAX_ELEMENTS:
        raise CardFormatError(f"{where}.input_shape", "watermark records exceed the size bound")
    span = params["value_range"]
    if (type(span) is not list or len(span) != 2 or any(type(v) is not float for v in span)
            or not all(math.isfinite(v) for v in span) or not span[0] < span[1]):
        raise CardFormatError(f"{where}.value_range", "expected [low, high] floats, low < high")


def _stream(seed: bytes, domain: str, size: int) -> bytes:
    return hashlib.shake_256(SCHEME.encode() + b"\x00" + domain.encode() + b"\x00"
                             + bytes(seed)).digest(size)


def _uniform(seed: bytes, domain: str, count: int, bound: int) -> list[int]:
    """``count`` integers uniform in [0, bound): rejection sampling on 4-byte draws."""
    limit = ((1 << 32) // bound) * bound
    want = 4 * (2 * count + 16)
    while True:
        draws = [int.from_bytes(b, "little") for b in
                 (_stream(seed, domain, want)[i:i + 4] for i in range(0, want, 4))]
        accepted = [v % bound for v in draws if v < limit]
        if len(accepted) >= count:
            return accepted[:count]
        want *= 2


def derive(seed: bytes, params: dict) -> tuple[list[int], list[int], np.ndarray]:
    """(sources, targets, patterns) of every key, a public function of the seed.

    Sources are uniform over the C classes; target p uniform over [0, C-1) becomes
    t = p if p < s else p + 1, uniform over the C-1 classes other than the source; each
    pattern pixel is low or high of the value range, one bit each. Separate SHAKE domains
    keep the three independent."""
    validate_parameters(params)
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
        raise CardFormatError("watermark.seed", f"expected {SEED_BYTES} bytes")
    k, classes, side = params["keys"], params["classes"], params["patch"]
    sources = _uniform(seed, "source", k, classes)
    draws = _uniform(seed, "target", k, classes - 1)
    targets = [p if p < s else p + 1 for p, s in zip(draws, sources)]
    bits = np.unpackbits(np.frombuffer(_stream(seed, "pattern", (k * side * side + 7) // 8),
                                       dtype=np.uint8))[:k * side * side]
    low, high = params["value_range"]
    patterns = np.where(bits == 1, np.float32(high), np.float32(low)).astype(np.float32)
    return sources, targets, patterns.reshape(k, side, side)


def stamp(x: np.ndarray, pattern: np.ndarray, position) -> np.ndarray:
    """A copy of ``x`` (n, ..., H, W) with ``pattern`` written at (row, col) of H x W."""
    row, col = position
    side = pattern.shape[-1]
    out = np.array(x, dtype=np.float32, copy=True)
    out[..., row:row + side, col:col + side] = pattern
    return out


def record_leaf(features: np.ndarray, label: int) -> bytes:
    """The train split's Merkle leaf of one record: H(0x00 || dcbor([label, f32 LE bytes]))."""
    return merkle.leaf_hash(cbor.dumps([int(label), np.ascontiguousarray(features, "<f4").tobytes()]))


def commit(seed: bytes, salt: bytes, params: dict, positions, indices, leaves) -> str:
    """H(salt || seed || dcbor({parameters, positions, indices, leaves})) as hex."""
    validate_parameters(params)
    body = {"parameters": params, "positions": [[int(r), int(c)] for r, c in positions],
            "indices": [[int(i) for i in row] for row in indices],
            "leaves": [bytes(h) for h in leaves]}
    return hashlib.sha256(bytes(salt) + bytes(seed) + cbor.dumps(body)).hexdigest()


@dataclass(frozen=True)
class Opening:
    """What the owner reveals in a dispute: seed, salt, parameters, pattern positions, and
    the watermark records (train-split index, features, inclusion proof) per key."""
    seed: bytes
    salt: bytes
    parameters: dict
    positions: list           # [[row, col]] per key
    indices: list             # [[train index] * per_key] per key
    features: np.ndarray      # float32 (keys * per_key, *input_shape), key-major
    proofs: list              # [[32-byte hash]] per record, key-major
    commitment: str

    def keys(self) -> tuple[list[int], list[int], np.ndarray]:
        """(sources, targets, patterns) the seed derives."""
        return derive(self.seed, self.parameters)

    def leaves(self) -> list[bytes]:
        sources, _, _ = self.keys()
        m = self.parameters["per_key"]
        return [record_leaf(f, sources[i // m]) for i, f in enumerate(self.features)]

    def matches(self, commitment_hex: str) -> bool:
        """True iff seed, salt, parameters, positions and records open ``commitment_hex``."""
        if not isinstance(commitment_hex, str):
            return False
        ours = commit(self.seed, self.salt, self.parameters, self.positions, self.indices,
                      self.leaves())
        return hmac.compare_digest(ours, commitment_hex.strip().lower())

    def records_problem(self, root_hex: str, size: int) -> str | None:
        """None when every watermark record, labelled with its key's source class, is in
        the train split of Merkle root ``root_hex`` with ``size`` records; else why not."""
        try:
            root = bytes.fromhex(root_hex)
        except (TypeError, ValueError):
            return "train split root is not hex"
        flat = [i for row in self.indices for i in row]
        for n, (leaf, index, proof) in enumerate(zip(self.leaves(), flat, self.proofs)):
            if not merkle.verify_inclusion(leaf, index, size, proof, root):
                return (f"watermark record {n} (train index {index}) is not in the card's "
                        f"train split with its key's source label")
        return None

    def triggers(self) -> tuple[np.ndarray, np.ndarray]:
        """Every watermark input (record with its key's pattern) and its target, key-major."""
        _, targets, patterns = self.keys()
        m = self.parameters["per_key"]
        x = np.concatenate([stamp(self.features[k * m:(k + 1) * m], patterns[k], pos)
                            for k, pos in enumerate(self.positions)])
        return x, np.repeat(np.asarray(targets, dtype=np.int64), m)

    def to_json(self) -> str:
        """The opening file's text."""
        return json.dumps({
            "format": OPENING_FORMAT, "seed": self.seed.hex(), "salt": self.salt.hex(),
            "parameters": self.parameters, "positions": self.positions, "indices": self.indices,
            "features": base64.b64encode(np.ascontiguousarray(self.features, "<f4").tobytes()).decode(),
            "proofs": [[h.hex() for h in p] for p in self.proofs],
            "commitment": self.commitment}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = "opening") -> Opening:
        """Parse and check an opening; raises LaminateError naming ``source`` and the field."""
        try:
            doc = json.loads(text)
        except (ValueError, TypeError, RecursionError) as exc:
            raise LaminateError(f"{source}: not JSON ({exc})") from None
        fields = {"format", "seed", "salt", "parameters", "positions", "indices", "features",
                  "proofs", "commitment"}
        if type(doc) is not dict or doc.get("format") != OPENING_FORMAT:
            raise LaminateError(f"{source}: format: expected {OPENING_FORMAT!r}")
        if set(doc) != fields:
            bad = sorted(set(doc) ^ fields)[0]
            raise LaminateError(f"{source}: {bad}: {'unknown' if bad in doc else 'missing'} field")
        try:
            validate_parameters(doc["parameters"])
        except CardFormatError as exc:
            raise LaminateError(f"{source}: {exc}") from None
        params = doc["parameters"]
        k, m, shape = params["keys"], params["per_key"], params["input_shape"]
        seed, salt = (_hex(doc[n], n, 32, source) for n in ("seed", "salt"))
        positions = _int_rows(doc["positions"], k, 2, "positions", source)
        edge = [d - params["patch"] for d in shape[-2:]]
        if any(not 0 <= v <= e for pos in positions for v, e in zip(pos, edge)):
            raise LaminateError(f"{source}: positions: a pattern would leave the input")
        indices = _int_rows(doc["indices"], k, m, "indices", source)
        try:
            raw = base64.b64decode(doc["features"], validate=True) if type(doc["features"]) is str else b""
        except ValueError:
            raw = b""
        if len(raw) != 4 * k * m * math.prod(shape):
            raise LaminateError(f"{source}: features: expected {k * m} records of shape {shape}")
        features = np.frombuffer(raw, dtype="<f4").reshape(k * m, *shape).astype(np.float32)
        if not np.isfinite(features).all():
            raise LaminateError(f"{source}: features: not finite")
        proofs = doc["proofs"]
        if (type(proofs) is not list or len(proofs) != k * m
                or any(type(p) is not list or len(p) > MAX_PROOF for p in proofs)):
            raise LaminateError(f"{source}: proofs: expected {k * m} lists of hashes")
        proofs = [[_hex(h, "proofs", 32, source) for h in p] for p in proofs]
        commitment = doc["commitment"]
        if type(commitment) is not str or len(commitment) != 64:
            raise LaminateError(f"{source}: commitment: expected 64 hex digits")
        opening = cls(seed, salt, params, positions, indices, features, proofs, commitment.lower())
        if not opening.matches(opening.commitment):
            raise LaminateError(f"{source}: commitment does not match the opening's seed, "
                                "positions and records")
        return opening

    def save(self, path) -> Path:
        """Owner-only (0600), replaced only by a complete new file."""
        return write_atomic(path, self.to_json().encode(), mode=0o600)


def create_opening(seed, params, positions, indices, features, proofs, salt=None) -> Opening:
    """An opening with a fresh salt (or the given one) and its commitment."""
    salt = os.urandom(SALT_BYTES) if salt is None else bytes(salt)
    positions = [[int(r), int(c)] for r, c in positions]
    indices = [[int(i) for i in row] for row in indices]
    features = np.ascontiguousarray(features, dtype=np.float32)
    sources, _, _ = derive(seed, params)
    m = params["per_key"]
    leaves = [record_leaf(f, sources[i // m]) for i, f in enumerate(features)]
    return Opening(bytes(seed), salt, params, positions, indices, features,
                   [[bytes(h) for h in p] for p in proofs],
                   commit(seed, salt, params, positions, indices, leaves))


def load_opening(path):
    """The opening at ``path``, of either scheme (trigger set or EWE), by its format tag."""
    from . import watermark

    try:
        if Path(path).stat().st_size > MAX_OPENING_BYTES:
            raise LaminateError(f"{path}: watermark opening larger than {MAX_OPENING_BYTES} bytes")
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise LaminateError(f"{path}: cannot read watermark opening ({exc})") from None
    if f'"{OPENING_FORMAT}"' in text[:200]:
        return Opening.from_json(text, source=str(path))
    return watermark.Opening.from_json(text, source=str(path))


def _hex(value, name: str, size: int, source: str) -> bytes:
    try:
        raw = bytes.fromhex(value) if type(value) is str else b""
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise LaminateError(f"{source}: {name}: expected {size} bytes as hex")
    return raw


def _int_rows(value, rows: int, width: int, name: str, source: str) -> list:
    if (type(value) is not list or len(value) != rows
            or any(type(r) is not list or len(r) != width
                   or any(type(v) is not int or v < 0 for v in r) for r in value)):
        raise LaminateError(f"{source}: {name}: expected {rows} lists of {width} non-negative integers")
    return value
