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
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


class Settled(set):
    """The ids of the settled maps and arrays a validation walk met, and what a proof by
    length needs to know of the others: whether some map has its keys out of §4.2
    order, and by how many bytes the deterministic encoding of the floats is shorter
    than the plain one, which writes all but infinities 8 bytes wide."""
    misordered = False
    narrowing = 0


# --- small declarative checkers: each is f(value, settled) -> bool ----------------------
# Each raises _Invalid for a bad value, and returns whether the value is settled (see the
# module docstring); a settled map or array is added to the ``settled`` set by its id.
# A checker may also carry ``all_fine(values)``: True if every one of a map's or an
# array's values passes and is settled, decided in a few C calls; False leaves them to
# the checker one by one, which names the bad one.

_STR_ONLY = frozenset({str})
_BYTES_ONLY = frozenset({bytes})
_DICT_ONLY = frozenset({dict})
_INT_ONLY = frozenset({int})
_FLOAT_ONLY = frozenset({float})


def text(value, settled):
    if type(value) is not str:
        _fail(f"expected a string, got {_type_name(value)}")
    return True


text.all_fine = lambda values: _STR_ONLY.issuperset(map(type, values))


def non_empty_text(value, settled):
    text(value, settled)
    if not value:
        _fail("must not be empty")
    return True


non_empty_text.all_fine = lambda values: _STR_ONLY.issuperset(map(type, values)) and all(values)


def integer(minimum=0, maximum=None):
    def check(value, settled):
        if type(value) is not int:
            _fail(f"expected an integer, got {_type_name(value)}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            _fail(f"must be {bound}, got {value}")
        return True

    def all_fine(values):
        return _INT_ONLY.issuperset(map(type, values)) and (not values or (
            min(values) >= minimum and (maximum is None or max(values) <= maximum)))
    check.all_fine = all_fine
    return check


def number(low=None, high=None, allow_infinity=False):
    lowest = -math.inf if low is None else low
    highest = math.inf if high is None else high

    def check(value, settled):
        if type(value) is float and lowest <= value <= highest and not math.isinf(value):
            return _wide(value, settled)  # the usual case, in one test
        if type(value) not in (int, float):
            _fail(f"expected a number, got {_type_name(value)}")
        if math.isnan(value) or (math.isinf(value) and not allow_infinity):
            _fail(f"must be a finite number, got {value}")
        if (low is not None and value < low) or (high is not None and value > high):
            _fail(f"must be between {low} and {high}, got {value}"
                  if high is not None else f"must be >= {low}, got {value}")
        return type(value) is int or _wide(value, settled)

    def all_fine(values):  # floats only; an infinity is narrow, so it goes one by one
        return (_FLOAT_ONLY.issuperset(map(type, values)) and not any(map(math.isnan, values))
                and (not values or lowest <= min(values) and max(values) <= highest)
                and cbor.all_wide(values))
    check.all_fine = all_fine
    return check


def _wide(value: float, settled) -> bool:
    """Whether a float is settled (8 bytes wide in its deterministic encoding too); if
    not, adds what its deterministic encoding saves to ``settled.narrowing``."""
    if cbor.wide_float(value):
        return True
    settled.narrowing += cbor.narrowing(value)
    return False


def hex_digest(value, settled):
    if type(value) is not str or not _HEX64.match(value):
        text(value, settled)
        _fail("expected a SHA-256 digest as 64 lowercase hex digits")
    return True


_HEX_DIGITS = b"0123456789abcdef"


def _all_digests(values) -> bool:
    try:
        digests = "".join(values)
    except TypeError:
        return False
    return (len(digests) == 64 * len(values) and set(map(len, values)) <= {64}
            and digests.isascii()  # and deleting the hex digits leaves nothing:
            and not digests.encode("ascii").translate(None, _HEX_DIGITS))


hex_digest.all_fine = _all_digests


def byte_string(size=None, non_empty=False):
    def check(value, settled):
        if type(value) is not bytes:
            _fail(f"expected a byte string, got {_type_name(value)}")
        if size is not None and len(value) != size:
            _fail(f"expected {size} bytes, got {len(value)}")
        if non_empty and not value:
            _fail("must not be empty")
        return True

    def all_fine(values):
        return _BYTES_ONLY.issuperset(map(type, values)) and (
            size is None or set(map(len, values)) <= {size}) and (not non_empty or all(values))
    check.all_fine = all_fine
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
    all_fine = getattr(item, "all_fine", None)

    def check(value, settled):
        if type(value) is not list:
            _fail(f"expected an array, got {_type_name(value)}")
        if len(value) < min_items:
            _fail(f"expected at least {min_items} item(s), got {len(value)}")
        if all_fine is not None and all_fine(value):
            settled.add(id(value))
            return True
        return _elements(value, item, settled)
    return check


def _elements(value: list, item, settled) -> bool:
    """Check each element with ``item``; the list is settled if they all are."""
    done = True
    try:
        for i, element in enumerate(value):  # noqa: B007 (i names the element on error)
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
    all_fine = getattr(item, "all_fine", None)

    def check(value, settled):
        if type(value) is not dict:
            _fail(f"expected a map, got {_type_name(value)}")
        if all_fine is not None and _keys_fine(value) and all_fine(value.values()):
            settled.add(id(value))
            return True
        return _entries(value, item, settled, bracketed=True)
    return check


def _keys_fine(value: dict) -> bool:
    """Text keys in §4.2 order, none critical (a code identity lists every wrapper file:
    this checks them in a few C calls)."""
    keys = tuple(value)
    return cbor.keys_in_order(keys) and "\0" + CRITICAL_PREFIX not in "\0" + "\0".join(keys)


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
    if not cbor.keys_in_order(tuple(value)):
        settled.misordered = True
        return False
    if done:
        settled.add(id(value))
    return done


_MISSING = object()


def record(fields: dict[str, Callable]):
    """A closed map: exactly these keys, in any order (settled only in §4.2 order).
    Fields are checked in the order given here, so the first bad one is named."""
    names = fields.keys()
    order = cbor.sorted_keys(fields)
    specs = tuple(fields.items())
    in_order = tuple(fields[key] for key in order)

    def check(value, settled):
        if type(value) is not dict:
            _fail(f"expected a map, got {_type_name(value)}")
        done = tuple(value) == order
        if not done:
            settled.misordered = True
        else:  # as a deterministic card has it: check the values as they come
            try:
                for item, spec in zip(value.values(), in_order):
                    if not spec(item, settled):
                        done = False
                if done:
                    settled.add(id(value))
                return done
            except _Invalid:
                pass  # check again in the order given, to name the first bad field
        if not done and value.keys() != names:  # a key is stray or missing: name the first stray
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

    columns = tuple((operator.itemgetter(key), getattr(fields[key], "all_fine", None))
                    for key in order)

    def all_fine(rows):  # maps with exactly these keys in order, checked column by column
        if not (_DICT_ONLY.issuperset(map(type, rows)) and all(map(order.__eq__, map(tuple, rows)))):
            return False
        return all(fine(list(map(column, rows))) for column, fine in columns)
    check.fields = fields
    if all(fine is not None for _, fine in columns):
        check.all_fine = all_fine
    return check


def _plain_at(depth: int):
    """Plain YAML-like data (null, bool, int, float, str, arrays and string-keyed maps)
    nested ``depth`` levels deep: each level's check holds the next one's."""
    if depth > 32:
        def too_deep(value, settled):
            _fail("nested too deeply")
        return too_deep
    inner = _plain_at(depth + 1)

    def check(value, settled):
        kind = type(value)
        if value is None or kind is bool or kind is int or kind is str:
            return True
        if kind is float:
            if math.isnan(value):
                _fail("NaN is not allowed")
            return _wide(value, settled)
        if kind is list:
            return _elements(value, inner, settled)
        if kind is dict:
            return _entries(value, inner, settled, bracketed=False)
        _fail(f"expected plain data (null, bool, number, string, array, map), "
              f"got {_type_name(value)}")
    return check


plain = _plain_at(0)  # plain data as the values of a free-form map hold it


# Scalars that encode alike in plain and deterministic CBOR (a float may not).
_PLAIN_SCALARS = (str, bytes, int, bool, type(None))
_PLAIN_SCALAR_TYPES = frozenset(_PLAIN_SCALARS)


def any_value(value, settled):
    """Backend-specific data: any CBOR, but no unknown critical extension and no NaN as
    a map key (two NaN keys are one key twice in CBOR, yet two keys to a decoder that
    compares them as floats). Containers are not walked for settledness: event data is
    encoded from the claims it repeats."""
    found = _refused_key(value)
    if found is not None:
        error = _Invalid(found[1])
        error.trail = found[0][::-1]
        raise error
    return type(value) in _PLAIN_SCALARS


any_value.all_fine = lambda values: _PLAIN_SCALAR_TYPES.issuperset(map(type, values))


_NESTED = (dict, list, cbor2.CBORTag, cbor2.frozendict, tuple)


def _refused_key(value):
    """(key path, reason) for the first "crit." or NaN key anywhere inside ``value``: in
    maps and arrays, tagged values, and maps or arrays used as map keys; or None."""
    kind = type(value)
    if kind is cbor2.CBORTag:
        return _refused_key(value.value)
    if kind is dict or kind is cbor2.frozendict:
        for key, element in value.items():
            step = key if type(key) is str else (key,)
            if type(key) is str and key.startswith(CRITICAL_PREFIX):
                return [step], "unknown critical extension"
            if type(key) is float and math.isnan(key):
                return [step], "NaN is not allowed as a map key"
            if type(key) in _NESTED:
                found = _refused_key(key)
                if found is not None:
                    return [step], found[1]
            if type(element) in _NESTED:
                found = _refused_key(element)
                if found is not None:
                    return [step, *found[0]], found[1]
    elif kind is list or kind is tuple:
        for i, element in enumerate(value):
            if type(element) in _NESTED:
                found = _refused_key(element)
                if found is not None:
                    return [i, *found[0]], found[1]
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
_library = record({"version": text, "record_sha256": nullable(hex_digest),
                   "modified": array_of(text)})
_code = record({
    "wrapper_sha256": hex_digest, "wrapper_files": map_of(hex_digest),
    "entry_point": nullable(record({"path": text, "sha256": hex_digest})),
    "libraries": map_of(_library)})
# Where the initial weights came from: the wrapper's own draw, a parent card, or a digest.
_STARTS = {
    "random": record({"kind": one_of("random"), "seed": hex_digest, "init": text,
                      "sha256": hex_digest}),
    "parent": record({"kind": one_of("parent"), "card_sha256": hex_digest,
                      "model_sha256": hex_digest, "sha256": hex_digest}),
    "external": record({"kind": one_of("external"), "model_sha256": hex_digest,
                        "sha256": hex_digest}),
}


def start(value, settled):
    """A start claim: the record its ``kind`` names."""
    kind = value.get("kind") if type(value) is dict else None
    if type(kind) is not str or kind not in _STARTS:
        if type(value) is not dict:
            _fail(f"expected a map, got {_type_name(value)}")
        error = _Invalid("missing" if "kind" not in value else
                         f"expected one of {', '.join(map(repr, _STARTS))}, got {kind!r}"[:200])
        error.trail.append("kind")
        raise error
    return _STARTS[kind](value, settled)

DP_CLAIM = record({
    "mechanism": one_of("dp-sgd"), "noise_multiplier": number(0.0),
    "max_grad_norm": number(0.0), "sample_rate": number(0.0, 1.0), "steps": integer(),
    "delta": number(0.0, 1.0), "accountant": one_of("rdp"),
    "epsilon": number(0.0, allow_infinity=True),
    "privacy_accounting": one_of("tight", "not tight"), "non_dp_records": integer(),
    "note": text})
WATERMARK_CLAIM = record({
    "scheme": one_of("laminate-trigger-v1"), "commitment": hex_digest,
    "trigger_count": integer(1), "classes": integer(2), "schedule": one_of("joint", "split")})
CLAIMS = record({
    "model": record({
        "name": text, "format": one_of("onnx"), "sha256": hex_digest, "size": integer(),
        "parameters": integer(), "opset": integer(1), "inputs": array_of(_tensor, 1),
        "outputs": array_of(_tensor, 1)}),
    "dataset": record({"train": _dataset, "test": _dataset}),
    "start": start,
    "training": record({
        "config": map_of(plain), "config_sha256": hex_digest, "code": _code,
        "framework": map_of(text)}),
    "defenses": record({"dp": nullable(DP_CLAIM), "watermark": nullable(WATERMARK_CLAIM)}),
    "evaluation": record({
        "accuracy": unit, "per_class_accuracy": array_of(unit), "test_records": integer(),
        "watermark_accuracy": nullable(unit)}),
})


def _evidence(backend_data):
    """The evidence schema, with ``backend_data`` checking the free-form evidence data."""
    event = record({"register": integer(0, 23), "type": non_empty_text,
                    "digest": byte_string(32), "data": backend_data})
    return record({
        "backend": one_of("sim", "tpm", "tdx", "snp"), "quote": byte_string(non_empty=True),
        "signature": byte_string(non_empty=True),
        "cert_chain": array_of(byte_string(non_empty=True), 1),
        "event_log": array_of(event, 1), "extra": map_of(backend_data)})


def _no_refused_key(value, settled):
    """any_value where no "crit." or NaN key can occur: nothing left to check."""
    return type(value) in _PLAIN_SCALARS


_no_refused_key.all_fine = any_value.all_fine


EVIDENCE = _evidence(any_value)
_EVIDENCE_NO_REFUSED_KEY = _evidence(_no_refused_key)
PAYLOAD = record({"schema_version": integer(), "claims": CLAIMS, "evidence": EVIDENCE})
_PAYLOAD_NO_REFUSED_KEY = record({"schema_version": integer(), "claims": CLAIMS,
                                  "evidence": _EVIDENCE_NO_REFUSED_KEY})


def validate_payload(payload: Any, *, encoded: bytes | None = None) -> Settled:
    """Raise CardFormatError naming the first field that breaks FORMAT.md; return the
    ids of the payload's settled maps and arrays (valid while the payload lives unchanged).

    ``encoded``, the definite-length encoding ``payload`` was decoded from, lets a
    payload whose bytes hold neither "crit." nor f9 7e00 skip walking the free-form
    evidence data for refused keys: CBOR text is plain UTF-8, so no key there can start
    with "crit.", and f9 7e00 is the one encoding of NaN a deterministic payload holds
    (any other is refused as not deterministic)."""
    if type(payload) is not dict:
        raise CardFormatError("payload", f"expected a map, got {_type_name(payload)}")
    version = payload.get("schema_version")
    if "schema_version" not in payload:
        raise CardFormatError("schema_version", "missing")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise CardFormatError("schema_version", f"unsupported schema version {version!r} "
                                                f"(this laminate reads version {SCHEMA_VERSION})")
    settled = Settled()
    _check(_PAYLOAD_NO_REFUSED_KEY if _no_refused_keys(encoded) else PAYLOAD, payload, settled)
    return settled


def validate_claims(claims: Any) -> Settled:
    """``validate_payload`` for the claims alone."""
    settled = Settled()
    _check(CLAIMS, claims, settled, "claims")
    return settled


def validate_evidence(evidence: Any, settled: Settled, *, encoded: bytes | None = None) -> None:
    """``validate_payload`` for the evidence alone, adding its settled ids to ``settled``."""
    _check(_EVIDENCE_NO_REFUSED_KEY if _no_refused_keys(encoded) else EVIDENCE, evidence,
           settled, "evidence")


_CRITICAL_BYTES = CRITICAL_PREFIX.encode()
_NAN_BYTES = cbor.dumps(math.nan)


def _no_refused_keys(encoded) -> bool:
    return encoded is not None and _CRITICAL_BYTES not in encoded and _NAN_BYTES not in encoded


def _check(checker, value, settled, *outer):
    try:
        checker(value, settled)
    except _Invalid as exc:
        raise CardFormatError(_path([*exc.trail, *outer]), exc.reason) from None


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
    EventClaim("start", 23, "claims.start", lambda c: c["start"]),
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
