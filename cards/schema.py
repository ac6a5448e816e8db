"""The closed, versioned card schema (FORMAT.md) and the event <-> claim mapping.

Validation is structural: it guarantees every reader sees the same fields with the
same types, so a check that reads ``claims.defenses.dp.epsilon`` can never be fooled
by a string, a missing section or an extra field that one reader ignores. Whether the
values are *true* is the verifier's job.

The walk also notes which maps and arrays are *settled*: already in deterministic
form (text keys in RFC 8949 §4.2 order, no float that encodes narrower than 8 bytes),
so `cbor.dumps` need not walk them again to prove a card's encoding deterministic.
"""
from __future__ import annotations

import functools
import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import cbor2

from . import cbor
from .errors import CardFormatError

SCHEMA_VERSION = 1
CRITICAL_PREFIX = "crit."
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_IDENTIFIER = re.compile(r"[A-Za-z0-9_]+\Z")


def _type_name(value) -> str:
    names = {dict: "map", list: "array", str: "str", bytes: "bytes", bool: "bool",
             int: "int", float: "float", type(None): "null"}
    return names.get(type(value), type(value).__name__)


class _Invalid(Exception):
    """A value breaks the schema. Each map or array it sits in adds its step to ``trail``
    as the error passes on its way out, so a valid card never formats a path, and a bad
    one costs one walk however deep it nests."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
        self.trail = []   # innermost first: int index, str field, (key,) free-form map key


def _fail(reason: str):
    raise _Invalid(reason)


def _path(trail) -> str:
    """``a.b[2]`` for fields and indices, ``a['x/y']`` for free-form keys (file names, ...)."""
    path = ""
    for step in reversed(trail):
        if type(step) is int:
            path = f"{path}[{step}]"
        elif type(step) is tuple:
            path = f"{path}[{step[0]!r}]"
        else:
            path = path + _suffix(step) if path else step
    return path


# --- small declarative checkers: each is f(value, settled) -> bool ----------------------
# Each raises _Invalid for a bad value, and returns whether the value is settled (see the
# module docstring); a settled map or array is added to the ``settled`` set by its id.

def text(value, settled):
    if type(value) is not str:
        _fail(f"expected a string, got {_type_name(value)}")
    return True


def non_empty_text(value, settled):
    text(value, settled)
    if not value:
        _fail("must not be empty")
    return True


def integer(minimum=0, maximum=None):
    def check(value, settled):
        if type(value) is not int:
            _fail(f"expected an integer, got {_type_name(value)}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            _fail(f"must be {bound}, got {value}")
        return True
    return check


def number(low=None, high=None, allow_infinity=False):
    def check(value, settled):
        if type(value) not in (int, float):
            _fail(f"expected a number, got {_type_name(value)}")
        if math.isnan(value) or (math.isinf(value) and not allow_infinity):
            _fail(f"must be a finite number, got {value}")
        if (low is not None and value < low) or (high is not None and value > high):
            _fail(f"must be between {low} and {high}, got {value}"
                  if high is not None else f"must be >= {low}, got {value}")
        return type(value) is int or cbor.wide_float(value)
    return check


def hex_digest(value, settled):
    if type(value) is not str or not _HEX64.match(value):
        text(value, settled)
        _fail("expected a SHA-256 digest as 64 lowercase hex digits")
    return True


def byte_string(size=None, non_empty=False):
    def check(value, settled):
        if type(value) is not bytes:
            _fail(f"expected a byte string, got {_type_name(value)}")
        if size is not None and len(value) != size:
            _fail(f"expected {size} bytes, got {len(value)}")
        if non_empty and not value:
            _fail("must not be empty")
        return True
    return check


def one_of(*choices):
    def check(value, settled):
        if type(value) is not type(choices[0]) or value not in choices:
            _fail(f"expected one of {', '.join(map(repr, choices))}, got {value!r}"[:200])
        return True
    return check


def nullable(inner):
    def check(value, settled):
        return value is None or inner(value, settled)
    return check


def array_of(item, min_items=0):
    def check(value, settled):
        if type(value) is not list:
            _fail(f"expected an array, got {_type_name(value)}")
        if len(value) < min_items:
            _fail(f"expected at least {min_items} item(s), got {len(value)}")
        return _elements(value, item, settled)
    return check


def _elements(value: list, item, settled) -> bool:
    """Check each element with ``item``; the list is settled if they all are."""
    done = True
    try:
        for i, element in enumerate(value):
            if not item(element, settled):
                done = False
    except _Invalid as exc:
        exc.trail.append(i)
        raise
    if done:
        settled.add(id(value))
    return done


def map_of(item):
    """A free-form map with string keys (file names, package names, config keys)."""
    def check(value, settled):
        if type(value) is not dict:
            _fail(f"expected a map, got {_type_name(value)}")
        if item is hex_digest and _digests_in_order(value):
            settled.add(id(value))
            return True
        return _entries(value, item, settled, bracketed=True)
    return check


def _entries(value: dict, item, settled, *, bracketed: bool) -> bool:
    """Check a free-form map: text keys, none critical, each value with ``item``; the
    map is settled if its values are and its keys are in §4.2 order. An error path names
    a key as ``['key']`` if ``bracketed``, else as a field."""
    done = True
    try:
        for key, element in value.items():
            if type(key) is not str:
                _fail(f"map keys must be strings, got {_type_name(key)}")
            if key.startswith(CRITICAL_PREFIX):
                raise _Invalid("unknown critical extension")
            if not item(element, settled):
                done = False
    except _Invalid as exc:
        if type(key) is str:
            exc.trail.append((key,) if bracketed else key)
        raise
    if done and cbor.keys_in_order(tuple(value)):
        settled.add(id(value))
        return True
    return False


_HEX_RUN = re.compile(r"[0-9a-f]*\Z")


def _digests_in_order(value: dict) -> bool:
    """True if ``value`` maps text keys in §4.2 order, none critical, to lowercase hex
    SHA-256 digests: a code identity lists every wrapper file, so this checks them all
    in a few C calls. False sends the map to the one-by-one check, which names the bad one."""
    keys = tuple(value)
    try:
        digests = "".join(value.values())
    except TypeError:
        return False
    return (cbor.keys_in_order(keys) and len(digests) == 64 * len(keys)
            and set(map(len, value.values())) <= {64}
            and "\0" + CRITICAL_PREFIX not in "\0" + "\0".join(keys)
            and _HEX_RUN.match(digests) is not None)


_MISSING = object()


def record(fields: dict[str, Callable]):
    """A closed map: exactly these keys, in any order (settled only in §4.2 order).
    Fields are checked in the order given here, so the first bad one is named."""
    names = fields.keys()
    order = cbor.sorted_keys(fields)
    specs = tuple(fields.items())

    def check(value, settled):
        if type(value) is not dict:
            _fail(f"expected a map, got {_type_name(value)}")
        done = tuple(value) == order
        if not done and value.keys() != names:  # some key is stray or missing: name the first stray
            for key in value:
                if type(key) is not str:
                    _fail(f"map keys must be strings, got {_type_name(key)}")
                if key not in fields:
                    error = _Invalid("unknown critical extension" if key.startswith(CRITICAL_PREFIX)
                                     else "unknown field")
                    error.trail.append(key)
                    raise error
        try:
            for key, spec in specs:
                item = value.get(key, _MISSING)
                if item is _MISSING:
                    _fail("missing")
                if not spec(item, settled):
                    done = False
        except _Invalid as exc:
            exc.trail.append(key)
            raise
        if done:
            settled.add(id(value))
        return done
    return check


def plain(value, settled, _depth=0):
    """Plain YAML-like data: null, bool, int, float, str, arrays and string-keyed maps."""
    if _depth > 32:
        _fail("nested too deeply")
    kind = type(value)
    if value is None or kind is bool or kind is int or kind is str:
        return True
    if kind is float:
        if math.isnan(value):
            _fail("NaN is not allowed")
        return cbor.wide_float(value)
    inner = functools.partial(plain, _depth=_depth + 1)
    if kind is list:
        return _elements(value, inner, settled)
    if kind is dict:
        return _entries(value, inner, settled, bracketed=False)
    _fail(f"expected plain data (null, bool, number, string, array, map), "
          f"got {_type_name(value)}")


def any_value(value, settled):
    """Backend-specific data: any CBOR, but still no unknown critical extensions. Not
    walked for settledness: event data is encoded from the claims it repeats."""
    trail = _find_critical(value)
    if trail is not None:
        error = _Invalid("unknown critical extension")
        error.trail = trail[::-1]
        raise error
    return False


_NESTED = (dict, list, cbor2.CBORTag, cbor2.frozendict, tuple)


def _find_critical(value):
    """The key path to the first "crit." key anywhere inside ``value``: in maps and
    arrays, tagged values, and maps or arrays used as map keys; None if there is none."""
    kind = type(value)
    if kind is cbor2.CBORTag:
        return _find_critical(value.value)
    if kind is dict or kind is cbor2.frozendict:
        for key, element in value.items():
            step = key if type(key) is str else (key,)
            if type(key) is str and key.startswith(CRITICAL_PREFIX):
                return [step]
            if type(key) in _NESTED and _find_critical(key) is not None:
                return [step]
            if type(element) in _NESTED:
                trail = _find_critical(element)
                if trail is not None:
                    return [step, *trail]
    elif kind is list or kind is tuple:
        for i, element in enumerate(value):
            if type(element) in _NESTED:
                trail = _find_critical(element)
                if trail is not None:
                    return [i, *trail]
    return None


@functools.lru_cache(maxsize=4096)
def _suffix(key: str) -> str:
    return f".{key}" if _IDENTIFIER.match(key) else f"[{key!r}]"


# --- FORMAT.md, version 1 --------------------------------------------------------------

_size = integer(-1)


def dimension(value, settled):
    """A tensor dimension: a size, or -1 or a name for a dynamic axis."""
    return type(value) is str or _size(value, settled)


unit = number(0.0, 1.0)
_tensor = record({"name": text, "shape": array_of(dimension), "dtype": text})
_dataset = record({
    "name": text, "records": integer(),
    "schema": record({"features": array_of(integer(1)), "dtype": non_empty_text,
                      "classes": integer(1)}),
    "label_histogram": array_of(integer()), "merkle_root": hex_digest})
_code = record({
    "wrapper_sha256": hex_digest, "wrapper_files": map_of(hex_digest),
    "entry_point": nullable(record({"path": text, "sha256": hex_digest}))})
DP_CLAIM = record({
    "mechanism": one_of("dp-sgd"), "noise_multiplier": number(0.0),
    "max_grad_norm": number(0.0), "sample_rate": number(0.0, 1.0), "steps": integer(),
    "delta": number(0.0, 1.0), "accountant": one_of("rdp"),
    "epsilon": number(0.0, allow_infinity=True),
    "privacy_accounting": one_of("tight", "not tight"), "note": text})
WATERMARK_CLAIM = record({
    "scheme": one_of("laminate-trigger-v1"), "commitment": hex_digest,
    "trigger_count": integer(1), "classes": integer(2), "schedule": one_of("joint", "split")})
CLAIMS = record({
    "model": record({
        "name": text, "format": one_of("onnx"), "sha256": hex_digest, "size": integer(),
        "parameters": integer(), "opset": integer(1), "inputs": array_of(_tensor, 1),
        "outputs": array_of(_tensor, 1)}),
    "dataset": record({"train": _dataset, "test": _dataset}),
    "training": record({
        "config": map_of(plain), "config_sha256": hex_digest, "code": _code,
        "framework": map_of(text)}),
    "defenses": record({"dp": nullable(DP_CLAIM), "watermark": nullable(WATERMARK_CLAIM)}),
    "evaluation": record({
        "accuracy": unit, "per_class_accuracy": array_of(unit), "test_records": integer(),
        "watermark_accuracy": nullable(unit)}),
})


def _payload(backend_data):
    """The payload schema, with ``backend_data`` checking the free-form evidence data."""
    event = record({"register": integer(0, 23), "type": non_empty_text,
                    "digest": byte_string(32), "data": backend_data})
    evidence = record({
        "backend": one_of("sim", "tpm"), "quote": byte_string(non_empty=True),
        "signature": byte_string(non_empty=True),
        "cert_chain": array_of(byte_string(non_empty=True), 1),
        "event_log": array_of(event, 1), "extra": map_of(backend_data)})
    return record({"schema_version": integer(), "claims": CLAIMS, "evidence": evidence})


def _no_critical_key(value, settled):
    """any_value where no "crit." key can occur: nothing left to check."""
    return False


PAYLOAD = _payload(any_value)
_PAYLOAD_NO_CRITICAL = _payload(_no_critical_key)


def validate_payload(payload: Any, *, encoded: bytes | None = None) -> set:
    """Raise CardFormatError naming the first field that breaks FORMAT.md; return the
    ids of the payload's settled maps and arrays (valid while the payload lives unchanged).

    ``encoded``, the definite-length encoding ``payload`` was decoded from, lets a
    payload whose bytes hold no "crit." skip walking the free-form evidence data for
    critical keys: CBOR text is plain UTF-8, so no key there can start with it."""
    if type(payload) is not dict:
        raise CardFormatError("payload", f"expected a map, got {_type_name(payload)}")
    version = payload.get("schema_version")
    if "schema_version" not in payload:
        raise CardFormatError("schema_version", "missing")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise CardFormatError("schema_version", f"unsupported schema version {version!r} "
                                                f"(this laminate reads version {SCHEMA_VERSION})")
    critical_free = encoded is not None and CRITICAL_PREFIX.encode() not in encoded
    settled = set()
    try:
        (_PAYLOAD_NO_CRITICAL if critical_free else PAYLOAD)(payload, settled)
    except _Invalid as exc:
        raise CardFormatError(_path(exc.trail), exc.reason) from None
    return settled


# --- events -----------------------------------------------------------------------------

@dataclass(frozen=True)
class EventClaim:
    """How one event type backs one claim section (FORMAT.md, "Events and registers")."""
    type: str
    register: int
    field: str                   # the claim section, as named in errors
    extract: Callable[[dict], Any]
    optional: bool = False       # logged only when the section is not null

    def data(self, claims: dict) -> Any:
        return self.extract(claims)


EVENT_CLAIMS: dict[str, EventClaim] = {e.type: e for e in (
    EventClaim("code", 16, "claims.training.code", lambda c: c["training"]["code"]),
    EventClaim("config", 23, "claims.training.config",
               lambda c: {"config": c["training"]["config"],
                          "config_sha256": c["training"]["config_sha256"]}),
    EventClaim("dataset.train", 23, "claims.dataset.train", lambda c: c["dataset"]["train"]),
    EventClaim("dataset.test", 23, "claims.dataset.test", lambda c: c["dataset"]["test"]),
    EventClaim("defense.dp", 23, "claims.defenses.dp", lambda c: c["defenses"]["dp"], True),
    EventClaim("defense.watermark", 23, "claims.defenses.watermark",
               lambda c: c["defenses"]["watermark"], True),
    EventClaim("evaluation", 23, "claims.evaluation", lambda c: c["evaluation"]),
    EventClaim("model", 23, "claims.model", lambda c: c["model"]),
)}


def claim_for_event(claims: dict, event_type: str) -> Any:
    """The event data that backs ``event_type`` given these claims."""
    try:
        spec = EVENT_CLAIMS[event_type]
    except KeyError:
        raise CardFormatError("evidence.event_log", f"unknown event type {event_type!r}") from None
    return spec.data(claims)


def expected_events(claims: dict) -> list[EventClaim]:
    """The events a wrapper run with these claims logs, in order (null sections skipped)."""
    return [spec for spec in EVENT_CLAIMS.values()
            if not (spec.optional and spec.data(claims) is None)]


def event_digest(event_type: str, data: Any) -> bytes:
    return hashlib.sha256(cbor.dumps({"type": event_type, "data": data})).digest()


def make_event(event_type: str, data: Any, register: int | None = None) -> dict:
    """An event-log entry; the register defaults to the one FORMAT.md assigns."""
    if register is None:
        register = EVENT_CLAIMS[event_type].register
    return {"register": register, "type": event_type,
            "digest": event_digest(event_type, data), "data": data}


def claims_digest(claims: dict) -> bytes:
    """H(dcbor(claims)): the quote's qualifying data."""
    return hashlib.sha256(cbor.dumps(claims)).digest()
