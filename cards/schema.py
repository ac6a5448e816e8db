"""The closed, versioned card schema (FORMAT.md) and the event <-> claim mapping.

Validation is structural: it guarantees every reader sees the same fields with the
same types, so a check that reads ``claims.defenses.dp.epsilon`` can never be fooled
by a string, a missing section or an extra field that one reader ignores. Whether the
values are *true* is the verifier's job.
"""
from __future__ import annotations

import functools
import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

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


def _fail(path: str, reason: str):
    raise CardFormatError(path, reason)


# --- small declarative checkers: each is f(value, path) -> None -------------------------

def text(value, path):
    if type(value) is not str:
        _fail(path, f"expected a string, got {_type_name(value)}")


def non_empty_text(value, path):
    text(value, path)
    if not value:
        _fail(path, "must not be empty")


def integer(minimum=0, maximum=None):
    def check(value, path):
        if type(value) is not int:
            _fail(path, f"expected an integer, got {_type_name(value)}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            _fail(path, f"must be {bound}, got {value}")
    return check


def number(low=None, high=None, allow_infinity=False):
    def check(value, path):
        if type(value) not in (int, float):
            _fail(path, f"expected a number, got {_type_name(value)}")
        if math.isnan(value) or (math.isinf(value) and not allow_infinity):
            _fail(path, f"must be a finite number, got {value}")
        if (low is not None and value < low) or (high is not None and value > high):
            _fail(path, f"must be between {low} and {high}, got {value}"
                  if high is not None else f"must be >= {low}, got {value}")
    return check


def hex_digest(value, path):
    if type(value) is not str or not _HEX64.match(value):
        text(value, path)
        _fail(path, "expected a SHA-256 digest as 64 lowercase hex digits")


def byte_string(size=None, non_empty=False):
    def check(value, path):
        if type(value) is not bytes:
            _fail(path, f"expected a byte string, got {_type_name(value)}")
        if size is not None and len(value) != size:
            _fail(path, f"expected {size} bytes, got {len(value)}")
        if non_empty and not value:
            _fail(path, "must not be empty")
    return check


def one_of(*choices):
    def check(value, path):
        if type(value) is not type(choices[0]) or value not in choices:
            _fail(path, f"expected one of {', '.join(map(repr, choices))}, got {value!r}"[:200])
    return check


def nullable(inner):
    def check(value, path):
        if value is not None:
            inner(value, path)
    return check


def array_of(item, min_items=0):
    def check(value, path):
        if type(value) is not list:
            _fail(path, f"expected an array, got {_type_name(value)}")
        if len(value) < min_items:
            _fail(path, f"expected at least {min_items} item(s), got {len(value)}")
        for i, element in enumerate(value):
            item(element, f"{path}[{i}]")
    return check


def map_of(item):
    """A free-form map with string keys (file names, package names, config keys)."""
    def check(value, path):
        if type(value) is not dict:
            _fail(path, f"expected a map, got {_type_name(value)}")
        for key, element in value.items():
            if type(key) is not str:
                _fail(path, f"map keys must be strings, got {_type_name(key)}")
            if key.startswith(CRITICAL_PREFIX):
                _fail(f"{path}[{key!r}]", "unknown critical extension")
            item(element, f"{path}[{key!r}]")
    return check


_MISSING = object()


def record(fields: dict[str, Callable]):
    """A closed map: exactly these keys, in any order."""
    names = fields.keys()
    specs = tuple((key, spec, _suffix(key)) for key, spec in fields.items())

    def check(value, path):
        if type(value) is not dict:
            _fail(path, f"expected a map, got {_type_name(value)}")
        if value.keys() != names:  # some key is stray or missing: name the first stray
            for key in value:
                if type(key) is not str:
                    _fail(path, f"map keys must be strings, got {_type_name(key)}")
                if key not in fields:
                    if key.startswith(CRITICAL_PREFIX):
                        _fail(_join(path, key), "unknown critical extension")
                    _fail(_join(path, key), "unknown field")
        for key, spec, suffix in specs:
            item = value.get(key, _MISSING)
            if item is _MISSING:
                _fail(path + suffix if path else key, "missing")
            spec(item, path + suffix if path else key)
    return check


def plain(value, path, _depth=0):
    """Plain YAML-like data: null, bool, int, float, str, arrays and string-keyed maps."""
    if _depth > 32:
        _fail(path, "nested too deeply")
    if value is None or type(value) in (bool, int, str):
        return
    if type(value) is float:
        if math.isnan(value):
            _fail(path, "NaN is not allowed")
        return
    if type(value) is list:
        for i, element in enumerate(value):
            plain(element, f"{path}[{i}]", _depth + 1)
        return
    if type(value) is dict:
        for key, element in value.items():
            if type(key) is not str:
                _fail(path, f"map keys must be strings, got {_type_name(key)}")
            if key.startswith(CRITICAL_PREFIX):
                _fail(_join(path, key), "unknown critical extension")
            plain(element, _join(path, key), _depth + 1)
        return
    _fail(path, f"expected plain data (null, bool, number, string, array, map), "
                f"got {_type_name(value)}")


def any_value(value, path):
    """Backend-specific data: any CBOR, but still no unknown critical extensions."""
    trail = _find_critical(value)
    if trail is not None:
        for step in trail:
            path = f"{path}[{step}]" if type(step) is int else _join(path, step)
        _fail(path, "unknown critical extension")


def _find_critical(value):
    """The key path to the first "crit." key inside ``value``, or None."""
    if type(value) is dict:
        for key, element in value.items():
            if type(key) is str and key.startswith(CRITICAL_PREFIX):
                return [key]
            if type(element) in (dict, list):
                trail = _find_critical(element)
                if trail is not None:
                    return [key, *trail]
    elif type(value) is list:
        for i, element in enumerate(value):
            if type(element) in (dict, list):
                trail = _find_critical(element)
                if trail is not None:
                    return [i, *trail]
    return None


@functools.lru_cache(maxsize=4096)
def _suffix(key: str) -> str:
    return f".{key}" if _IDENTIFIER.match(key) else f"[{key!r}]"


def _join(path: str, key: str) -> str:
    """``a.b`` for plain keys, ``a['x/y']`` for free-form ones (file names, ...)."""
    return path + _suffix(key) if path else key


# --- FORMAT.md, version 1 --------------------------------------------------------------

def dimension(value, path):
    """A tensor dimension: a size, or a name for a dynamic axis."""
    if type(value) is not str:
        integer(-1)(value, path)


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


def _no_critical_key(value, path):
    """any_value where no "crit." key can occur: nothing left to check."""


PAYLOAD = _payload(any_value)
_PAYLOAD_NO_CRITICAL = _payload(_no_critical_key)


def validate_payload(payload: Any, *, encoded: bytes | None = None) -> None:
    """Raise CardFormatError naming the first field that breaks FORMAT.md.

    ``encoded``, the definite-length encoding ``payload`` was decoded from, lets a
    payload whose bytes hold no "crit." skip walking the free-form evidence data for
    critical keys: CBOR text is plain UTF-8, so no key there can start with it."""
    if type(payload) is not dict:
        _fail("payload", f"expected a map, got {_type_name(payload)}")
    version = payload.get("schema_version")
    if "schema_version" not in payload:
        _fail("schema_version", "missing")
    if type(version) is not int or version != SCHEMA_VERSION:
        _fail("schema_version", f"unsupported schema version {version!r} "
                                f"(this laminate reads version {SCHEMA_VERSION})")
    critical_free = encoded is not None and CRITICAL_PREFIX.encode() not in encoded
    (_PAYLOAD_NO_CRITICAL if critical_free else PAYLOAD)(payload, "")


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
