"""DAWN, the serving-time watermark: a keyed function of the input picks which answers
are deliberately wrong and which wrong label each gets.

Both the server (which answers) and the arbiter (which replays a client's flipped
queries against a suspect) call these functions, so there is one implementation of the
rule. The key is drawn from the attestation module when the server starts and only its
commitment H(salt || key) is published in the serving card.

Why the null stays analytic: the flipped label is drawn uniformly among the C-1 classes
other than the deployed model's own answer, by a keyed function an independent model
never saw. Whatever an independent model answers on a flipped input, it equals the
flipped label with probability at most 1/(C-1) (0 if it answers the true label), and
distinct inputs get independent draws (cards/FORMAT.md, "Serving").
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cards.errors import LaminateError
from cards.files import write_atomic

SCHEME = "laminate-dawn-hmac-sha256-v1"
OPENING_FORMAT = "laminate-dawn-opening/1"
KEY_BYTES = 32
SALT_BYTES = 32
MAX_RATE = 0.5
_INPUT_DOMAIN = b"laminate-input-v1\x00"
_FLIP_DOMAIN = b"flip\x00"
_LABEL_DOMAIN = b"label\x00"
_TWO_64 = float(1 << 64)


def canonical_inputs(batch: np.ndarray) -> list[bytes]:
    """The bytes each input of a batch is known by: a domain tag, the row's rank and shape
    as little-endian integers, then its float32 little-endian values in C order with -0.0
    written as 0.0, so one input always has one byte string (NaN and infinities are
    refused before this)."""
    batch = np.ascontiguousarray(batch, dtype="<f4") + np.float32(0.0)  # -0.0 + 0.0 is +0.0
    shape = batch.shape[1:]
    prefix = _INPUT_DOMAIN + bytes([len(shape)]) + np.asarray(shape, dtype="<u4").tobytes()
    data, size = batch.tobytes(), int(np.prod(shape, dtype=np.int64)) * 4
    return [prefix + data[i:i + size] for i in range(0, len(data), size)] if size else []


def canonical_input(row: np.ndarray) -> bytes:
    return canonical_inputs(np.asarray(row)[None])[0]


def from_canonical(data: bytes, shape: list) -> np.ndarray:
    """The float32 input ``canonical_input`` wrote, which must have ``shape``."""
    prefix = _INPUT_DOMAIN + bytes([len(shape)]) + np.asarray(shape, dtype="<u4").tobytes()
    size = int(np.prod(shape, dtype=np.int64)) * 4
    if not data.startswith(prefix) or len(data) != len(prefix) + size:
        raise LaminateError(f"input: not a canonical input of shape {list(shape)}")
    return np.frombuffer(data, dtype="<f4", offset=len(prefix)).reshape(shape).astype(np.float32)


def input_digest(canonical: bytes) -> bytes:
    return hashlib.sha256(canonical).digest()


def commitment(key: bytes, salt: bytes) -> str:
    """H(salt || key), hex: what the serving card publishes."""
    return hashlib.sha256(bytes(salt) + bytes(key)).hexdigest()


@functools.lru_cache(maxsize=8)
def _flip_pads(key: bytes):
    """HMAC-SHA256 (RFC 2104) of key, split into its two SHA-256 states: the inner one
    with key XOR ipad and the flip domain absorbed, the outer one with key XOR opad. A
    server computes one MAC per answer; copying two hash states per input is several
    times cheaper than the hmac module's per-call objects, and gives the same bytes."""
    block = key.ljust(64, b"\0") if len(key) <= 64 else hashlib.sha256(key).digest().ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block) + _FLIP_DOMAIN)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
    return inner, outer


def _flip_value(pads, canonical: bytes) -> bytes:
    """The first 8 bytes of HMAC(key, "flip" || canonical) from ``_flip_pads(key)``."""
    inner, outer = pads[0].copy(), pads[1].copy()
    inner.update(canonical)
    outer.update(inner.digest())
    return outer.digest()[:8]


def flipped(key: bytes, canonical: bytes, rate: float) -> bool:
    """HMAC(key, "flip" || input) read as a fraction in [0, 1) below ``rate``: its first
    8 bytes, big-endian, below ceil(rate * 2^64) (compared as bytes, which is the same)."""
    return _flip_value(_flip_pads(bytes(key)), canonical) < _threshold(rate)


@functools.lru_cache(maxsize=8)
def _threshold(rate: float) -> bytes:
    """ceil(rate * 2^64) as 8 big-endian bytes (rate <= MAX_RATE, so it fits)."""
    return math.ceil(rate * _TWO_64).to_bytes(8, "big")


def wrong_label(key: bytes, canonical: bytes, true_label: int, classes: int) -> int:
    """A label drawn exactly uniformly among the ``classes - 1`` others than
    ``true_label``: rejection sampling over HMAC(key, "label" || counter || input)."""
    others = classes - 1
    limit = (1 << 256) - (1 << 256) % others
    for counter in range(256):
        mac = hmac.digest(key, _LABEL_DOMAIN + bytes([counter]) + canonical, "sha256")
        value = int.from_bytes(mac, "big")
        if value < limit:
            pick = value % others
            return pick if pick < true_label else pick + 1
    raise AssertionError("256 rejections in a row: probability below 2^-256")


def answers(key: bytes | None, rate: float, canonicals: list[bytes], labels,
            classes: int) -> list[tuple[int, bool]]:
    """(the label served, whether it was flipped) for each input of a batch the model
    labels ``labels``."""
    if key is None or rate <= 0.0:
        return [(int(label), False) for label in labels]
    key = bytes(key)
    pads, threshold = _flip_pads(key), _threshold(rate)
    out = []
    for canonical, label in zip(canonicals, labels):
        if _flip_value(pads, canonical) < threshold:
            out.append((wrong_label(key, canonical, int(label), classes), True))
        else:
            out.append((int(label), False))
    return out


def answer(key: bytes | None, rate: float, canonical: bytes, label: int,
           classes: int) -> tuple[int, bool]:
    """``answers`` for one input."""
    return answers(key, rate, [canonical], [label], classes)[0]


def check_rate(rate: float, where: str = "--dawn") -> float:
    if not isinstance(rate, (int, float)) or not math.isfinite(rate) or not 0.0 <= rate <= MAX_RATE:
        raise LaminateError(f"{where}: flip rate must be between 0 and {MAX_RATE}, got {rate!r}")
    return float(rate)


@dataclass(frozen=True)
class Opening:
    """The secret behind a serving card's key commitment; it lets the owner replay flips."""

    key: bytes
    salt: bytes

    @property
    def commitment(self) -> str:
        return commitment(self.key, self.salt)

    def opens(self, key_commitment: str) -> bool:
        return hmac.compare_digest(self.commitment, str(key_commitment))

    def save(self, path) -> Path:
        doc = {"format": OPENING_FORMAT, "scheme": SCHEME, "key": self.key.hex(),
               "salt": self.salt.hex()}
        return write_atomic(path, json.dumps(doc, indent=2).encode(), mode=0o600)

    @classmethod
    def load(cls, path) -> Opening:
        path = Path(path)
        try:
            raw = path.read_bytes()[:4096]
            doc = json.loads(raw)
        except OSError as exc:
            raise LaminateError(f"{path}: cannot read the DAWN opening ({exc.strerror})") from None
        except (ValueError, UnicodeDecodeError):
            raise LaminateError(f"{path}: the DAWN opening is not JSON") from None
        return cls.from_doc(doc, str(path))

    @classmethod
    def from_doc(cls, doc, where: str = "opening") -> Opening:
        """The opening in a parsed dawn.opening.json; LaminateError names the field."""
        if not isinstance(doc, dict) or doc.get("format") != OPENING_FORMAT:
            raise LaminateError(f"{where}: format: expected {OPENING_FORMAT!r}")
        if doc.get("scheme") != SCHEME:
            raise LaminateError(f"{where}: scheme: expected {SCHEME!r}")
        parts = {}
        for name, size in (("key", KEY_BYTES), ("salt", SALT_BYTES)):
            try:
                parts[name] = bytes.fromhex(doc.get(name, ""))
            except (TypeError, ValueError):
                parts[name] = b""
            if len(parts[name]) != size:
                raise LaminateError(f"{where}: {name}: expected {size} bytes as hex")
        return cls(parts["key"], parts["salt"])
