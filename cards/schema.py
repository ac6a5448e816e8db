"""The closed, versioned card schema (FORMAT.md) and the event <-> claim mapping.

Validation is structural: it guarantees every reader sees the same fields with the
same types, so a check that reads ``claims.defenses.dp.epsilon`` can never be fooled
by a string, a missing section or an extra field that one reader ignores. Whether the
values are *true* is the verifier's job.

The schema is a table (below, "FORMAT.md, version 1"): each field of a closed map names
its checker, built from the small checkers here. A checker takes a decoded value and
raises ``_Invalid`` if it breaks the schema; it returns nothing.
"""
from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2

from . import cbor
from .errors import CardFormatError

SCHEMA_VERSION = 1
CRITICAL_PREFIX = "crit."
MAX_PLAIN_DEPTH = 32
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_IDENTIFIER = re.compile(r"[A-Za-z0-9_]+\Z")


def _type_name(value) -> str:
    names = {dict: "map", list: "array", str: "str", bytes: "bytes", bool: "bool",
             int: "int", float: "float", type(None): "null"}
    return names.get(type(value), type(value).__name__)


class _Invalid(Exception):
    """A value breaks the schema. Each map or array it sits in adds its step to ``trail``
    as the error passes on its way out, so the path is built only for a bad card."""

    def __init__(self, reason: str, *trail):
        super().__init__(reason)
        self.reason = reason
        self.trail = list(trail)  # innermost first: int index, str field, (key,) free-form key


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
        elif path:
            path += f".{step}" if _IDENTIFIER.match(step) else f"[{step!r}]"
        else:
            path = step
    return path


# --- checkers: each takes a value and raises _Invalid if the value breaks the schema ---

def text(value):
    """A string (possibly empty)."""
    if type(value) is not str:
        _fail(f"expected a string, got {_type_name(value)}")


def non_empty_text(value):
    """A string that is not empty."""
    text(value)
    if not value:
        _fail("must not be empty")


def integer(minimum=0, maximum=None):
    """A checker for an int (never a bool) in ``minimum``..``maximum`` (no upper bound if
    None)."""
    def check(value):
        if type(value) is not int:
            _fail(f"expected an integer, got {_type_name(value)}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            _fail(f"must be {bound}, got {value}")
    return check


def number(low=None, high=None, allow_infinity=False):
    """An int or a float (never a bool), finite unless ``allow_infinity``, in bounds."""
    def check(value):
        if type(value) not in (int, float):
            _fail(f"expected a number, got {_type_name(value)}")
        if math.isnan(value) or (math.isinf(value) and not allow_infinity):
            _fail(f"must be a finite number, got {value}")
        if (low is not None and value < low) or (high is not None and value > high):
            _fail(f"must be between {low} and {high}, got {value}"
                  if high is not None else f"must be >= {low}, got {value}")
    return check


def hex_digest(value):
    """A SHA-256 digest written as 64 lowercase hex digits."""
    if type(value) is not str:
        text(value)
    if not _HEX64.match(value):
        _fail("expected a SHA-256 digest as 64 lowercase hex digits")


def byte_string(size=None, non_empty=False):
    """A checker for a byte string of exactly ``size`` bytes if given, not empty if
    ``non_empty``."""
    def check(value):
        if type(value) is not bytes:
            _fail(f"expected a byte string, got {_type_name(value)}")
        if size is not None and len(value) != size:
            _fail(f"expected {size} bytes, got {len(value)}")
        if non_empty and not value:
            _fail("must not be empty")
    return check


def one_of(*choices):
    """A checker for one of these values, of the same type as the first."""
    def check(value):
        if type(value) is not type(choices[0]) or value not in choices:
            _fail(f"expected one of {', '.join(map(repr, choices))}, got {value!r}"[:200])
    return check


def nullable(inner):
    """A checker for null or what ``inner`` accepts (optional sections are null, never
    absent)."""
    def check(value):
        if value is not None:
            inner(value)
    return check


def array_of(item, min_items=0):
    """A checker for an array of at least ``min_items`` items, each checked by ``item``;
    an error names the index."""
    def check(value):
        if type(value) is not list:
            _fail(f"expected an array, got {_type_name(value)}")
        if len(value) < min_items:
            _fail(f"expected at least {min_items} item(s), got {len(value)}")
        _elements(value, item)
    return check


def _elements(value: list, item) -> None:
    for i, element in enumerate(value):
        try:
            item(element)
        except _Invalid as exc:
            exc.trail.append(i)
            raise


def map_of(item):
    """A free-form map with string keys (file names, package names, config keys)."""
    def check(value):
        if type(value) is not dict:
            _fail(f"expected a map, got {_type_name(value)}")
        _entries(value, item, bracketed=True)
    return check


def _entries(value: dict, item, *, bracketed: bool) -> None:
    """Check a free-form map: text keys, none critical, each value with ``item``. An
    error path names a key as ``['key']`` if ``bracketed``, else as a field."""
    for key, element in value.items():
        if type(key) is not str:
            _fail(f"map keys must be strings, got {_type_name(key)}")
        try:
            if key.startswith(CRITICAL_PREFIX):
                _fail("unknown critical extension")
            item(element)
        except _Invalid as exc:
            exc.trail.append((key,) if bracketed else key)
            raise


def record(fields: dict[str, Callable], optional: dict[str, Callable] | None = None):
    """A closed map: exactly these keys, in any order, plus any of the ``optional`` ones
    (absent, never null: a section added after version 1 shipped, so older cards still
    read). A stray key is named first (the first in the map's order); then fields are
    checked in the order given here, so the first missing or bad one is named."""
    known = {**fields, **(optional or {})}

    def check(value):
        if type(value) is not dict:
            _fail(f"expected a map, got {_type_name(value)}")
        if value.keys() != fields.keys():
            for key in value:
                if type(key) is not str:
                    _fail(f"map keys must be strings, got {_type_name(key)}")
                if key not in known:
                    _fail_at(key, "unknown critical extension"
                             if key.startswith(CRITICAL_PREFIX) else "unknown field")
        for key, spec in known.items():
            if key not in value:
                if key in fields:
                    _fail_at(key, "missing")
                continue
            try:
                spec(value[key])
            except _Invalid as exc:
                exc.trail.append(key)
                raise
    return check


def _fail_at(key, reason: str):
    raise _Invalid(reason, key)


def plain(value, depth=0):
    """Plain YAML-like data (null, bool, int, float, str, arrays and string-keyed maps),
    nested at most MAX_PLAIN_DEPTH levels; NaN is refused, infinities are allowed."""
    if depth > MAX_PLAIN_DEPTH:
        _fail("nested too deeply")
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return
    if kind is float:
        if math.isnan(value):
            _fail("NaN is not allowed")
    elif kind is list:
        _elements(value, lambda element: plain(element, depth + 1))
    elif kind is dict:
        _entries(value, lambda element: plain(element, depth + 1), bracketed=False)
    else:
        _fail(f"expected plain data (null, bool, number, string, array, map), "
              f"got {_type_name(value)}")


_CONTAINERS = (dict, list, tuple, cbor2.CBORTag, cbor2.frozendict)


def any_value(value):
    """Backend-specific data: any CBOR, but no unknown critical extension and no NaN as
    a map key (two NaN keys are one key twice in CBOR, yet two keys to a decoder that
    compares them as floats), anywhere inside: in maps and arrays, tagged values, and
    maps or arrays used as map keys."""
    kind = type(value)
    if kind is cbor2.CBORTag:
        any_value(value.value)
    elif kind is dict or kind is cbor2.frozendict:
        for key, element in value.items():
            if type(key) is str:
                if key.startswith(CRITICAL_PREFIX):
                    _fail_at(key, "unknown critical extension")
            elif type(key) is float and math.isnan(key):
                _fail_at((key,), "NaN is not allowed as a map key")
            elif type(key) in _CONTAINERS:
                try:
                    any_value(key)
                except _Invalid as exc:  # a key is named whole, not by its insides
                    raise _Invalid(exc.reason, (key,)) from None
            if type(element) in _CONTAINERS:
                try:
                    any_value(element)
                except _Invalid as exc:
                    exc.trail.append(key if type(key) is str else (key,))
                    raise
    elif kind is list or kind is tuple:
        for i, element in enumerate(value):
            if type(element) in _CONTAINERS:
                try:
                    any_value(element)
                except _Invalid as exc:
                    exc.trail.append(i)
                    raise


# --- FORMAT.md, version 1 --------------------------------------------------------------

_size = integer(-1)


def dimension(value):
    """A tensor dimension: a size, or -1 or a name for a dynamic axis."""
    if type(value) is not str:
        _size(value)


unit = number(0.0, 1.0)
_tensor = record({"name": text, "shape": array_of(dimension), "dtype": text})


def _divisor(value):
    number()(value)
    if value <= 0:
        _fail(f"must be > 0, got {value}")


# What a record goes through before the model sees it: input = float32((raw - subtract)
# / divide), reshaped in C order to input_shape; label i is class_names[i].
PREPROCESSING = record({
    "source": non_empty_text, "subtract": number(), "divide": _divisor,
    "input_shape": array_of(integer(1), 1), "input_dtype": one_of("float32"),
    "class_names": array_of(text, 2)})
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


def start(value) -> None:
    """A start claim: the record its ``kind`` names."""
    if type(value) is not dict:
        _fail(f"expected a map, got {_type_name(value)}")
    kind = value.get("kind")
    if type(kind) is not str or kind not in _STARTS:
        _fail_at("kind", "missing" if "kind" not in value else
                 f"expected one of {', '.join(map(repr, _STARTS))}, got {kind!r}"[:200])
    _STARTS[kind](value)


DP_CLAIM = record({
    "mechanism": one_of("dp-sgd"), "noise_multiplier": number(0.0),
    "max_grad_norm": number(0.0), "sample_rate": number(0.0, 1.0), "steps": integer(),
    "delta": number(0.0, 1.0), "accountant": one_of("rdp"),
    "epsilon": number(0.0, allow_infinity=True),
    "privacy_accounting": one_of("tight", "not tight"), "non_dp_records": integer(),
    "note": text})
# Training spread over ranks (FORMAT.md, "Distributed training"); absent for one process.
_rank = record({
    "rank": integer(), "first": integer(), "records": integer(),
    "range_roots": array_of(hex_digest), "label_histogram": array_of(integer()),
    "wrapper_sha256": hex_digest,
    "fed": array_of(record({"epoch": integer(1), "records": integer(), "fed": integer(),
                            "shard_digest": hex_digest}))})
DISTRIBUTED_CLAIM = record({
    "world_size": integer(1), "backend": non_empty_text,
    "assignment": one_of("contiguous-v1"), "shard_digest": one_of("range-roots-v1"),
    "ranks": array_of(_rank, 1)})
_WATERMARKS = {
    "laminate-trigger-v1": record({
        "scheme": one_of("laminate-trigger-v1"), "commitment": hex_digest,
        "trigger_count": integer(1), "classes": integer(2), "schedule": one_of("joint", "split")}),
    # EWE and its margin-trained variant: the same claim, each under its own name.
    **{name: record({
        "scheme": one_of(name), "commitment": hex_digest,
        "trigger_count": integer(1), "keys": integer(1, 64), "classes": integer(3),
        "schedule": one_of("joint", "split"), "train_root": hex_digest,
        "train_records": integer(1)}) for name in ("laminate-ewe-v1", "laminate-ewe-margin-v1")},
}


def WATERMARK_CLAIM(value) -> None:
    """A watermark claim: the record its ``scheme`` names; anything else is judged as a
    trigger-set claim, so the reader names the same first problem it always did."""
    kind = value.get("scheme") if type(value) is dict else None
    checker = _WATERMARKS.get(kind) if type(kind) is str else None
    (checker or _WATERMARKS["laminate-trigger-v1"])(value)


# Adversarial training (PGD, Madry et al.): the attack it trained against, and the same
# attack, seeded from the session, run on the exported model's test split.
ADVERSARIAL_CLAIM = record({
    "method": one_of("pgd"), "norm": one_of("linf"), "epsilon": number(0.0, 1.0),
    "step_size": number(0.0, 1.0), "steps": integer(1, 1000), "train_fraction": unit,
    "attack_seed": hex_digest, "examples_merkle_root": hex_digest,
    "adversarial_accuracy": unit, "test_records": integer(1)})
# Radioactive data (Sablayrolles et al.): the carriers' commitment, the marking, and both
# detection tests run on the exported model (cards.radioactive).
RADIOACTIVE_CLAIM = record({
    "scheme": one_of("laminate-radioactive-v1"), "commitment": hex_digest,
    "carriers_sha256": hex_digest, "classes": integer(2), "feature_dim": integer(2),
    "fraction": number(0.0, 1.0), "marked_records": integer(1), "epsilon": number(0.0, 1.0),
    "marking_steps": integer(1, 1000), "marking_epochs": integer(1, 100),
    "marked_merkle_root": hex_digest, "test": one_of("white-box-cosine-fisher"),
    "alignment_records": integer(1), "cosines": array_of(number(-1.0, 1.0), 2),
    "p_value": unit, "loss_difference": number()})
CLAIMS = record({
    "model": record({
        "name": text, "format": one_of("onnx"), "sha256": hex_digest, "size": integer(),
        "parameters": integer(), "opset": integer(1), "inputs": array_of(_tensor, 1),
        "outputs": array_of(_tensor, 1)}, {"preprocessing": PREPROCESSING}),
    "dataset": record({"train": _dataset, "test": _dataset}),
    "start": start,
    "training": record({
        "config": map_of(plain), "config_sha256": hex_digest, "code": _code,
        "framework": map_of(text)}, optional={"distributed": DISTRIBUTED_CLAIM}),
    "defenses": record({"dp": nullable(DP_CLAIM), "watermark": nullable(WATERMARK_CLAIM)},
                       {"adversarial": ADVERSARIAL_CLAIM, "radioactive": RADIOACTIVE_CLAIM}),
    "evaluation": record({
        "accuracy": unit, "per_class_accuracy": array_of(unit), "test_records": integer(),
        "watermark_accuracy": nullable(unit)}),
})


_EVENT = record({"register": integer(0, 23), "type": non_empty_text,
                 "digest": byte_string(32), "data": any_value})
EVIDENCE = record({
    "backend": one_of("sim", "tpm", "tdx", "snp"), "quote": byte_string(non_empty=True),
    "signature": byte_string(non_empty=True),
    "cert_chain": array_of(byte_string(non_empty=True), 1),
    "event_log": array_of(_EVENT, 1), "extra": map_of(any_value)})
PAYLOAD = record({"schema_version": integer(), "claims": CLAIMS, "evidence": EVIDENCE})


def validate_payload(payload: Any) -> None:
    """Check a decoded card payload against FORMAT.md.

    Raises CardFormatError naming the first field that breaks it (a stray key before a
    missing or bad field, fields in the table's order) and why."""
    if type(payload) is not dict:
        raise CardFormatError("payload", f"expected a map, got {_type_name(payload)}")
    if "schema_version" not in payload:
        raise CardFormatError("schema_version", "missing")
    version = payload["schema_version"]
    if type(version) is not int or version != SCHEMA_VERSION:
        raise CardFormatError("schema_version", f"unsupported schema version {version!r} "
                                                f"(this laminate reads version {SCHEMA_VERSION})")
    _check(PAYLOAD, payload)


def validate_claims(claims: Any) -> None:
    """``validate_payload`` for the claims alone; errors name ``claims.…``."""
    _check(CLAIMS, claims, "claims")


def _check(checker, value, *outer) -> None:
    try:
        checker(value)
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
    EventClaim("distributed", 23, "claims.training.distributed",
               lambda c: c["training"].get("distributed"), True),
    EventClaim("defense.adversarial", 23, "claims.defenses.adversarial",
               lambda c: c["defenses"].get("adversarial"), True),
    EventClaim("defense.radioactive", 23, "claims.defenses.radioactive",
               lambda c: c["defenses"].get("radioactive"), True),
    EventClaim("evaluation", 23, "claims.evaluation", lambda c: c["evaluation"]),
    EventClaim("model", 23, "claims.model", lambda c: c["model"]),
)}


def claim_for_event(claims: dict, event_type: str) -> Any:
    """The event data that backs ``event_type`` given these (valid) claims; raises
    CardFormatError for an unknown event type."""
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
    """H(dcbor({"type": event_type, "data": data})), what an event extends its register
    with; raises CardFormatError if ``data`` cannot be encoded as CBOR."""
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
