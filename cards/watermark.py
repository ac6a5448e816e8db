"""The public trigger-set generator and the watermark commitment/opening.

Triggers are a fixed public function of a seed the attestation module drew, so the
owner cannot pick inputs that independent models happen to answer the same way; the
commitment binds seed and parameters before anyone sees a suspect model. Only numpy
and hashlib are used, and every step is exact integer or single-rounding IEEE
arithmetic, so every platform regenerates the same triggers.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import operator
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import cbor
from .errors import CardFormatError, LaminateError
from .files import write_atomic

SCHEME = "laminate-trigger-v1"
OPENING_FORMAT = "laminate-watermark-opening/1"
SEED_BYTES = 32
SALT_BYTES = 32
_INPUT_BITS = 24            # float32 has a 24-bit significand: every draw is exact
# Bounds on what an opening may ask of whoever generates its triggers (in memory,
# before any query); the ownership test bounds the count further (its tables grow
# faster than quadratically).
MAX_TRIGGERS = 1 << 16
MAX_CLASSES = 1 << 16
MAX_INPUT_RANK = 8
MAX_TRIGGER_ELEMENTS = 1 << 24     # all triggers together: 64 MiB of float32


def make_parameters(trigger_count: int, classes: int, input_shape, value_range) -> dict:
    """The generator parameters map for a trigger set, in the types the commitment
    hashes; raises CardFormatError when a value is out of range, TypeError when a count
    is not an integer."""
    params = {"scheme": SCHEME, "trigger_count": operator.index(trigger_count),
              "classes": operator.index(classes),
              "input_shape": [operator.index(d) for d in input_shape],
              "value_range": [float(v) for v in value_range]}
    validate_parameters(params)
    return params


def validate_parameters(params) -> None:
    """Raise CardFormatError, naming the field, unless ``params`` is exactly the
    parameters map of this scheme: known keys only, integers in range, a non-empty shape,
    and a finite range with low < high."""
    where = "watermark.parameters"
    if type(params) is not dict:
        raise CardFormatError(where, "expected a map")
    expected = {"scheme", "trigger_count", "classes", "input_shape", "value_range"}
    if set(params) != expected:
        extra = sorted(set(params) - expected, key=str)
        missing = sorted(expected - set(params))
        raise CardFormatError(f"{where}.{(extra or missing)[0]}",
                              "unknown field" if extra else "missing")
    if params["scheme"] != SCHEME:
        raise CardFormatError(f"{where}.scheme", f"expected {SCHEME!r}, got {params['scheme']!r}")
    for name, low, high in (("trigger_count", 1, MAX_TRIGGERS), ("classes", 2, MAX_CLASSES)):
        value = params[name]
        if type(value) is not int or not low <= value <= high:
            raise CardFormatError(f"{where}.{name}",
                                  f"expected an integer from {low} to {high}, got {value!r}")
    shape = params["input_shape"]
    if (type(shape) is not list or not 1 <= len(shape) <= MAX_INPUT_RANK
            or any(type(d) is not int or d < 1 for d in shape)):
        raise CardFormatError(f"{where}.input_shape", f"expected a list of 1 to "
                              f"{MAX_INPUT_RANK} positive integers")
    if params["trigger_count"] * math.prod(shape) > MAX_TRIGGER_ELEMENTS:
        raise CardFormatError(f"{where}.input_shape", f"trigger_count x input size exceeds "
                              f"{MAX_TRIGGER_ELEMENTS} values")
    span = params["value_range"]
    if (type(span) is not list or len(span) != 2 or any(type(v) is not float for v in span)
            or not all(math.isfinite(v) for v in span) or not span[0] < span[1]):
        raise CardFormatError(f"{where}.value_range", "expected [low, high] floats with low < high")


def generate_triggers(seed: bytes, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """Trigger inputs uniform in value_range and labels uniform over the classes.

    Stream = SHAKE-256("laminate-trigger-v1" || seed). The first 4 bytes per input
    element give a little-endian uint32 whose top 24 bits u make the value
    low + (high - low) * u / 2^24; the labels follow, each drawn by rejection sampling
    from 1, 2 or 4 little-endian bytes so that no class is favoured.
    """
    validate_parameters(params)
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
        raise CardFormatError("watermark.seed", f"expected {SEED_BYTES} bytes")
    n, classes = params["trigger_count"], params["classes"]
    shape = tuple(params["input_shape"])
    elements = n * math.prod(shape)
    xof = hashlib.shake_256(SCHEME.encode() + bytes(seed))

    width = 1 if classes <= 1 << 8 else 2 if classes <= 1 << 16 else 4
    limit = ((1 << (8 * width)) // classes) * classes   # accept v < limit: uniform mod classes
    dtype = {1: "<u1", 2: "<u2", 4: "<u4"}[width]
    offset = 4 * elements
    want = n * width * 2 + 64                            # expected need, with a margin
    while True:
        stream = xof.digest(offset + want)               # SHAKE output is prefix-stable
        draws = np.frombuffer(stream, dtype=dtype, offset=offset).astype(np.int64)
        accepted = draws[draws < limit]
        if accepted.size >= n:
            break
        want *= 2
    labels = (accepted[:n] % classes).astype(np.int64)

    raw = np.frombuffer(stream, dtype="<u4", count=elements)
    low, high = params["value_range"]
    unit = (raw >> np.uint32(32 - _INPUT_BITS)).astype(np.float64) / float(1 << _INPUT_BITS)
    inputs = (low + (high - low) * unit).astype(np.float32)
    np.clip(inputs, np.float32(low), np.float32(high), out=inputs)
    return inputs.reshape((n, *shape)), labels


def commit(seed: bytes, salt: bytes, params: dict) -> str:
    """H(salt || seed || dcbor(parameters)) as lowercase hex."""
    validate_parameters(params)
    return hashlib.sha256(bytes(salt) + bytes(seed) + cbor.dumps(params)).hexdigest()


@dataclass(frozen=True)
class Opening:
    """What the owner keeps secret and reveals to an arbiter in a dispute."""
    seed: bytes
    salt: bytes
    parameters: dict
    commitment: str

    @classmethod
    def create(cls, seed: bytes, parameters: dict, salt: bytes | None = None) -> Opening:
        """An opening of ``seed`` and ``parameters`` with a fresh random salt (or the
        given one) and the commitment they make."""
        salt = os.urandom(SALT_BYTES) if salt is None else bytes(salt)
        return cls(bytes(seed), salt, parameters, commit(seed, salt, parameters))

    def matches(self, commitment_hex: str) -> bool:
        """True iff this opening's seed, salt and parameters open ``commitment_hex``."""
        if not isinstance(commitment_hex, str):
            return False
        ours = commit(self.seed, self.salt, self.parameters)
        return hmac.compare_digest(ours, commitment_hex.strip().lower())

    def triggers(self) -> tuple[np.ndarray, np.ndarray]:
        """The trigger inputs and labels this opening's seed generates."""
        return generate_triggers(self.seed, self.parameters)

    def to_json(self) -> str:
        """The opening file's text: format tag, seed and salt as hex, parameters,
        commitment."""
        return json.dumps({"format": OPENING_FORMAT, "seed": self.seed.hex(),
                           "salt": self.salt.hex(), "parameters": self.parameters,
                           "commitment": self.commitment}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = "opening") -> Opening:
        """Parse an opening file's text; raises LaminateError naming ``source`` and the
        field when it is not JSON, has an unknown or malformed field, or its seed, salt and
        parameters do not open its commitment."""
        try:
            doc = json.loads(text)
        except (ValueError, TypeError) as exc:
            raise LaminateError(f"{source}: not JSON ({exc})") from None
        except RecursionError:
            raise LaminateError(f"{source}: JSON nested too deeply") from None
        if type(doc) is not dict or doc.get("format") != OPENING_FORMAT:
            raise LaminateError(f"{source}: format: expected {OPENING_FORMAT!r}")
        unknown = set(doc) - {"format", "seed", "salt", "parameters", "commitment"}
        if unknown:
            raise LaminateError(f"{source}: {sorted(unknown)[0]}: unknown field")
        seed = _hex_field(doc, "seed", SEED_BYTES, source)
        salt = _hex_field(doc, "salt", SALT_BYTES, source)
        commitment = doc.get("commitment")
        if type(commitment) is not str or len(commitment) != 64:
            raise LaminateError(f"{source}: commitment: expected 64 hex digits")
        try:
            validate_parameters(doc.get("parameters"))
        except CardFormatError as exc:
            raise LaminateError(f"{source}: {exc}") from None
        opening = cls(seed, salt, doc["parameters"], commitment.lower())
        if not opening.matches(opening.commitment):
            raise LaminateError(f"{source}: commitment does not match seed, salt and parameters")
        return opening

    def save(self, path) -> Path:
        """Owner-only (0600); a previous opening is replaced only by a complete new one."""
        return write_atomic(path, self.to_json().encode(), mode=0o600)

    @classmethod
    def load(cls, path) -> Opening:
        """Read and parse the opening file at ``path``; raises LaminateError naming the
        file when it cannot be read or is not a valid opening."""
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise LaminateError(f"{path}: cannot read watermark opening ({exc})") from None
        return cls.from_json(text, source=str(path))


def _hex_field(doc: dict, name: str, size: int, source: str) -> bytes:
    value = doc.get(name)
    try:
        raw = bytes.fromhex(value) if type(value) is str else None
    except ValueError:
        raw = None
    if raw is None or len(raw) != size:
        raise LaminateError(f"{source}: {name}: expected {size} bytes as hex")
    return raw
