"""Deterministic CBOR (RFC 8949 §4.2) and a strict decoder for signed data.

Signed bytes must have exactly one reading: a decoder that silently keeps the last of
two duplicate keys, ignores trailing bytes or accepts several encodings of one value
lets an attacker show different readers different claims under one signature.
"""
from __future__ import annotations

import array
import io
import operator
import struct
from functools import lru_cache
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


class _Encoded:
    """A float's deterministic encoding, written as is where the float was."""
    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data


_FLOAT32 = struct.Struct("f")
_SCALARS = (str, bytes, int, bool, type(None))
_SCALAR_TYPES = frozenset(_SCALARS)
_INT_ONLY = frozenset({int})
_NOT_PLAIN = object()


def dumps(obj: Any, *, settled=frozenset()) -> bytes:
    """Deterministic encoding: shortest forms, definite lengths, keys in length-first
    order (RFC 8949 §4.2.3; bytewise §4.2.1 order too when all keys share a major type).

    ``settled``: ids of maps and arrays inside ``obj`` known to be in deterministic form
    already (text keys in order, every float 8 bytes wide), e.g. from schema validation;
    they are encoded as they are, without walking them again."""
    if type(obj) in _SCALARS or id(obj) in settled:
        return cbor2.dumps(obj)
    encoded = _plain_dumps(obj, settled)
    if encoded is not None:
        return encoded
    try:
        return cbor2.dumps(obj, canonical=True)
    except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:
        raise CardFormatError("", f"cannot encode as CBOR: {exc}") from None


def _write_encoded(encoder, value: _Encoded):
    encoder.write(value.data)


def _plain_dumps(obj, settled=frozenset()) -> bytes | None:
    """The deterministic encoding of ``obj`` made by cbor2's plain encoder, several times
    faster than its canonical one; None where only the canonical one will do (it also
    names any encoding error). The two differ only in map key order and float width
    (plain writes every finite float in 8 bytes), so this needs every map's text keys in
    §4.2 order already, and writes each float that fits in 4 bytes deterministically."""
    try:
        plain = _plain_form(obj, settled)
        if plain is _NOT_PLAIN:
            return None
        return cbor2.dumps(plain, default=_write_encoded)
    except (cbor2.CBOREncodeError, TypeError, ValueError, RecursionError):
        return None


def _plain_form(value, settled):
    """``value`` with narrow floats swapped for their encodings (containers copied only
    on the way to one), or _NOT_PLAIN for a misordered map or a type not plain data."""
    kind = type(value)
    if kind is float:
        return value if wide_float(value) else _Encoded(cbor2.dumps(value, canonical=True))
    if id(value) in settled:
        return value
    if kind is dict:
        keys = tuple(value)
        if not keys_in_order(keys) and not _unsigned_in_order(keys):
            return _NOT_PLAIN
        items, pairs = value.values(), value.items()
    elif kind is list:
        items, pairs = value, enumerate(value)
    else:
        return value if kind in _SCALARS else _NOT_PLAIN
    if _SCALAR_TYPES.issuperset(map(type, items)):  # nothing inside to walk
        return value
    copy = None
    for key, item in pairs:
        kind = type(item)
        if kind in _SCALAR_TYPES or id(item) in settled or kind is float and wide_float(item):
            continue
        form = _plain_form(item, settled)
        if form is _NOT_PLAIN:
            return _NOT_PLAIN
        if form is not item:
            if copy is None:
                copy = value.copy()
            copy[key] = form
    return value if copy is None else copy


def wide_float(value: float) -> bool:
    """True iff the deterministic encoding of ``value`` takes 8 bytes, as the plain one
    does (NaN compares unequal to itself, and both modes write it alike)."""
    try:
        return _FLOAT32.unpack(_FLOAT32.pack(value))[0] != value
    except OverflowError:
        return True


def narrowing(value: float) -> int:
    """How many bytes shorter the deterministic encoding of ``value`` is than the plain
    one (0 for a wide float, and for infinities, which both write in 3 bytes)."""
    return len(cbor2.dumps(value)) - len(cbor2.dumps(value, canonical=True))


def plain_size(obj: Any) -> int:
    """The size of ``obj``'s plain encoding: for plain data whose maps all have their
    keys in §4.2 order, its deterministic size plus the narrowing of its floats."""
    return len(cbor2.dumps(obj))


def all_wide(values: list) -> bool:
    """Whether ``wide_float`` holds for every float in ``values``, at C speed."""
    return not any(map(operator.eq, array.array("f", values), values))


# Key tuples already judged. A card's maps share a few shapes, so this saves ordering
# them again; only small tuples are kept, so hostile cards cannot pin much memory.
_KEY_ORDER: dict[tuple, bool] = {}


def keys_in_order(keys: tuple) -> bool:
    """Whether these map keys are all text and in §4.2 order."""
    known = _KEY_ORDER.get(keys)
    if known is None:
        known = _text_in_order(keys)
        if len(_KEY_ORDER) < 1024 and len(keys) <= 64 and all(
                type(key) is str and len(key) <= 128 for key in keys):
            _KEY_ORDER[keys] = known
    return known


def _text_in_order(keys: tuple) -> bool:
    previous = None
    for key in keys:
        if type(key) is not str:
            return False
        try:
            order = _text_order(key)
        except UnicodeEncodeError:
            return False
        if previous is not None and not previous < order:
            return False
        previous = order
    return True


def _unsigned_in_order(keys: tuple) -> bool:
    """Whether these map keys are all integers >= 0 in ascending order, which is their
    §4.2 order (COSE header labels)."""
    return (_INT_ONLY.issuperset(map(type, keys)) and min(keys, default=0) >= 0
            and all(map(operator.lt, keys, keys[1:])))


def encode_map(encoded: dict) -> bytes:
    """Deterministic encoding of a map with text keys whose values are given already
    deterministically encoded: lets a caller encode a shared part once and reuse it."""
    parts = [head(5, len(encoded))]
    keys = tuple(encoded)
    for key in keys if keys_in_order(keys) else sorted_keys(keys):
        parts += (_text_key(key), encoded[key])
    return b"".join(parts)


def sorted_keys(keys) -> tuple:
    """Text keys in §4.2 order."""
    return tuple(sorted(keys, key=_text_order))


def head(major: int, n: int) -> bytes:
    """A data item head in its shortest form: major type ``major``, argument ``n``."""
    if n < 24:
        return bytes((major << 5 | n,))
    size = 1 if n < 1 << 8 else 2 if n < 1 << 16 else 4 if n < 1 << 32 else 8
    return bytes((major << 5 | 23 + size.bit_length(),)) + n.to_bytes(size, "big")


def _text_order(key: str) -> tuple:
    """§4.2 order of text keys: their encodings differ first in the length head, then
    bytewise in UTF-8, which orders like code points."""
    return len(key.encode()), key


@lru_cache(maxsize=4096)
def _text_key(key: str) -> bytes:
    return dumps(key)


def loads(data: bytes, *, deterministic: bool = False, field: str = "cbor") -> Any:
    """Decode exactly one CBOR item, refusing duplicate map keys, trailing bytes,
    malformed input and semantic tags; with ``deterministic`` also any encoding that
    is not the RFC 8949 §4.2 one. Errors are CardFormatError naming ``field``."""
    obj = decode(data, definite=deterministic, field=field)
    if deterministic:
        require_deterministic(obj, data, field=field)
    return obj


def decode(data: bytes, *, definite: bool, field: str) -> Any:
    """``loads`` without the determinism proof, for a caller that proves it later with
    ``require_deterministic`` (after schema validation has settled most of the value);
    ``definite`` refuses indefinite lengths, which no deterministic encoding has."""
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


class Reader:
    """Decodes, as ``decode`` does with definite lengths, the items of one encoding at
    offsets the caller knows from its layout: it reads the parts of a larger encoding
    it needs, one decoder for all of them, and learns where each ends."""

    def __init__(self, data: bytes, *, field: str):
        self.data, self.field = data, field
        self._fp = io.BytesIO(data)
        self._decoder = _decoder(self._fp, True)

    def item(self, at: int) -> tuple[Any, int]:
        """The item that starts at ``data[at]``, and the offset where it ends."""
        self._fp.seek(at)
        return _read(self._decoder, self.field), self._fp.tell()


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


def require_deterministic(obj: Any, data: bytes, *, field: str, settled=frozenset()) -> None:
    """Raise CardFormatError unless ``data`` (which decodes to ``obj``) is the RFC 8949
    §4.2 encoding. ``settled`` as for ``dumps``."""
    try:
        canonical = _plain_dumps(obj, settled)
        if canonical is None:
            canonical = cbor2.dumps(obj, canonical=True)
    except (cbor2.CBOREncodeError, TypeError, ValueError, RecursionError):
        canonical = None
    if canonical != data:
        raise CardFormatError(field, "CBOR is not deterministically encoded (RFC 8949 §4.2)")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
