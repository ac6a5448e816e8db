"""Deterministic CBOR (RFC 8949 §4.2) and a strict decoder for signed data.

Signed bytes must have exactly one reading: a decoder that silently keeps the last of
two duplicate keys, ignores trailing bytes or accepts several encodings of one value
lets an attacker show different readers different claims under one signature.
"""
from __future__ import annotations

import io
from typing import Any

import cbor2

from .errors import CardFormatError

# Tags cbor2 would turn into Python objects (dates, bignums, shared references, sets, ...).
# Nothing laminate signs uses them, and shared references can even build cyclic values.
_SEMANTIC_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258,
                  260, 261, 1004, 43000, 55799)
MAX_DEPTH = 64


def _refuse_tag(tag: int):
    def refuse(*_args):
        raise CardFormatError("", f"CBOR tag {tag} is not allowed")
    return refuse


_STRICT_TAGS = {tag: _refuse_tag(tag) for tag in _SEMANTIC_TAGS}


def _thaw(value):
    """cbor2 decodes tagged content as tuples/frozendicts; give callers plain lists/dicts
    (map keys stay hashable)."""
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if isinstance(value, cbor2.frozendict):
        return {k: _thaw(v) for k, v in value.items()}
    return value


def _tag_hook(tag, _immutable):
    return cbor2.CBORTag(tag.tag, _thaw(tag.value))


def dumps(obj: Any) -> bytes:
    """The deterministic encoding of ``obj`` (RFC 8949 §4.2): shortest forms, definite
    lengths, map keys in length-first order (§4.2.3; the same as bytewise §4.2.1 order
    when all keys share a major type). Raises CardFormatError for what CBOR cannot
    encode."""
    try:
        return cbor2.dumps(obj, canonical=True)
    except (cbor2.CBOREncodeError, TypeError, ValueError, RecursionError) as exc:
        raise CardFormatError("", f"cannot encode as CBOR: {_one_line(exc)}") from None


def loads(data: bytes, *, deterministic: bool = False, field: str = "cbor") -> Any:
    """Decode exactly one CBOR item, refusing duplicate map keys, trailing bytes,
    malformed input and semantic tags; with ``deterministic`` also any encoding that
    is not the RFC 8949 §4.2 one. Errors are CardFormatError naming ``field``."""
    obj = decode(data, definite=deterministic, field=field)
    if deterministic:
        require_deterministic(obj, data, field=field)
    return obj


def decode(data: bytes, *, definite: bool, field: str) -> Any:
    """``loads`` without the determinism check, for a caller that makes it with
    ``require_deterministic``; ``definite`` refuses indefinite lengths, which no
    deterministic encoding has. Raises CardFormatError naming ``field``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CardFormatError(field, f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise CardFormatError(field, "empty input")
    fp = io.BytesIO(data)
    obj = _read(_decoder(fp, definite), field)
    if fp.tell() != len(data):
        raise CardFormatError(field, f"{len(data) - fp.tell()} trailing bytes after the CBOR item")
    return obj


def _decoder(fp, definite: bool):
    return cbor2.CBORDecoder(
        fp, allow_duplicate_keys=False, allow_indefinite=not definite,
        semantic_decoders=_STRICT_TAGS, tag_hook=_tag_hook, max_depth=MAX_DEPTH)


def _read(decoder, field: str) -> Any:
    try:
        return decoder.decode()
    except CardFormatError as exc:
        raise CardFormatError(field, exc.reason) from None
    except cbor2.CBORDecodeEOF:
        raise CardFormatError(field, "truncated CBOR") from None
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError,
            MemoryError) as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, CardFormatError) else None
        message = _one_line(exc)
        if cause:
            reason = cause.reason
        elif "Duplicate map key" in message:
            reason = "duplicate map key " + message.split("Duplicate map key:", 1)[1].strip()
        else:
            reason = f"malformed CBOR: {message}"
        raise CardFormatError(field, reason) from None


def require_deterministic(obj: Any, data: bytes, *, field: str) -> None:
    """Raise CardFormatError naming ``field`` unless ``data``, which decodes to ``obj``,
    is byte for byte the deterministic encoding of ``obj``: the one check that refuses
    every other way of writing the same value (wider heads, wider floats, keys out of
    order)."""
    try:
        canonical = cbor2.dumps(obj, canonical=True)
    except (cbor2.CBOREncodeError, TypeError, ValueError, RecursionError):
        canonical = None
    if canonical != data:
        raise CardFormatError(field, "CBOR is not deterministically encoded (RFC 8949 §4.2)")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
