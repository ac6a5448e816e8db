"""Reading a card payload along the layout its deterministic encoding must have.

A valid payload in deterministic form is laid out one way only: a map of claims,
evidence and schema version, in that order, the claims sections in their order, and
each event's data a byte-for-byte repeat of the claims section it measures. Reading
along that layout, a verifier learns where every section's signed bytes are, so it
hashes and compares them without encoding anything again, and it decodes each repeat
once. Any payload that strays from the layout is left to the general reading.
"""
from __future__ import annotations

import os
from typing import NamedTuple

from . import cbor, schema
from .errors import CardFormatError


class Encoded(NamedTuple):
    """Deterministic encodings of payload parts, byte for byte as the signed payload
    holds them: a verifier hashes and compares them without encoding anything again."""
    claims: bytes         # dcbor(claims): the quote's qualifying data is its hash
    config: bytes         # dcbor(claims.training.config)
    claim_events: dict    # event type -> dcbor(the data that event must carry, per the claims)
    event_data: tuple     # dcbor(evidence.event_log[i].data), in log order


# A payload in deterministic form is a map of three, keys in this order (RFC 8949
# §4.2.1), and each event a map of four whose first key is "data".
_CLAIMS_HEAD = b"\xa3" + cbor.dumps("claims")
_EVIDENCE_KEY = cbor.dumps("evidence")
_VERSION_TAIL = cbor.dumps("schema_version") + cbor.dumps(schema.SCHEMA_VERSION)
_EVENT_HEAD = b"\xa4" + cbor.dumps("data")
# Stand in for cut-out parts of the signed bytes, one per event a card can log; random
# per process, so signed content cannot hold them.
_SLOTS = tuple(os.urandom(16) for _ in schema.EVENT_CLAIMS)
_SLOT_ITEMS = tuple(map(cbor.dumps, _SLOTS))


def _layout(record, split=frozenset()) -> tuple:
    """How the deterministic encoding of a closed map lays it out: its head and, in
    order, each field's name, encoded name, and layout if in ``split`` (else None: the
    field is read whole)."""
    names = cbor.sorted_keys(record.fields)
    return cbor.head(5, len(names)), tuple(
        (name, cbor.dumps(name), _layout(record.fields[name]) if name in split else None)
        for name in names)


# The claims sections whose fields events measure on their own (FORMAT.md, "Events and
# registers") are read field by field, the other sections whole.
_CLAIMS_LAYOUT = _layout(schema.CLAIMS, {"dataset", "training", "defenses"})


def open_by_layout(data: bytes, *, cut_repeats: bool = True) -> tuple[dict, Encoded] | None:
    """The payload and its parts' encodings, for a valid payload in deterministic form;
    None for any other, which the caller then reads the general way.

    The claims are decoded section by section, so each section's signed bytes are
    known, and proven deterministic by their length (below). Each event's data repeats,
    byte for byte, the claims section it measures: with ``cut_repeats``, every repeat
    is cut out of the evidence before decoding and a slot put in its place, which after
    decoding is replaced by the section itself, so the payload holds one object for
    both (it is for reading). Every signed byte is still proven: the evidence with
    slots re-encodes to itself, and a slot, unguessable, can only decode as the item
    put in its place."""
    if not (data.startswith(_CLAIMS_HEAD) and data.endswith(_VERSION_TAIL)):
        return None
    start, sections = len(_CLAIMS_HEAD), []
    try:
        read = _read_along(cbor.Reader(data, field="payload"), start, _CLAIMS_LAYOUT, sections)
        if read is None:
            return None
        claims, end = read
        settled = schema.validate_claims(claims)
    except CardFormatError:
        return None
    # Proof by length: the signed claims decode to ``claims``, so their items line up one
    # to one with those of the deterministic encoding when every map has its keys in
    # order; each item is at least as long as its deterministic form and equally long
    # only in it. So the two encodings are equal if their lengths are.
    if (settled.misordered or end - start != cbor.plain_size(claims) - settled.narrowing
            or not data.startswith(_EVIDENCE_KEY, end)):
        return None
    claims_bytes = data[start:end]
    # by id, as two sections may be equal; the tuple holds the value, so its id stays
    # unique (null sections share one, and their encoding)
    known = {id(value): (value, data[at:stop]) for value, at, stop in sections}
    claim_events = {}
    for spec in schema.EVENT_CLAIMS.values():
        value = spec.data(claims)
        part = known.get(id(value))
        if part is None:  # a map of sections, as the config event's
            part = value, cbor.encode_map({name: known[id(item)][1] for name, item in value.items()})
        claim_events[spec.type] = part
    parts = ([claim_events[spec.type] for spec in schema.expected_events(claims)]
             if cut_repeats else [])
    evidence, fills = _evidence_with_slots(
        data, end + len(_EVIDENCE_KEY), len(data) - len(_VERSION_TAIL), parts, settled)
    if evidence is None:
        return None
    event_data = []
    for event in evidence["event_log"]:
        value = event["data"]
        fill = fills.pop(value, None) if type(value) is bytes else None
        if fill is not None:
            event["data"] = fill[0]
        event_data.append(fill[1] if fill is not None else cbor.dumps(value, settled=settled))
    if fills:  # a slot decoded elsewhere than as an event's data
        return None
    payload = {"claims": claims, "evidence": evidence, "schema_version": schema.SCHEMA_VERSION}
    return payload, Encoded(claims_bytes, known[id(claims["training"]["config"])][1],
                            {kind: encoded for kind, (_, encoded) in claim_events.items()},
                            tuple(event_data))


def _read_along(reader, at: int, layout: tuple, sections: list):
    """The map at ``reader.data[at:]`` decoded field by field along ``layout``, and
    where it ends; None where the bytes do not follow the layout. Appends each field
    read whole to ``sections`` as (value, start, end)."""
    head, fields = layout
    data = reader.data
    if not data.startswith(head, at):
        return None
    at += len(head)
    value = {}
    for name, encoded_name, inner in fields:
        if not data.startswith(encoded_name, at):
            return None
        at += len(encoded_name)
        if inner is None:
            item, end = reader.item(at)
            sections.append((item, at, end))
        else:
            read = _read_along(reader, at, inner, sections)
            if read is None:
                return None
            item, end = read
        value[name] = item
        at = end
    return value, at


def _evidence_with_slots(data: bytes, at: int, stop: int, parts: list,
                         settled: schema.Settled):
    """The evidence decoded from ``data[at:stop]`` with each event data found among
    ``parts`` ((value, encoding), in log order) cut out and a slot put in, and
    {slot: part}; None, {} unless valid and deterministic. Adds the evidence's settled
    ids to ``settled``."""
    pieces, fills = [], {}
    for slot, item, part in zip(_SLOTS, _SLOT_ITEMS, parts):
        # one event head is looked for per part, so odd bytes before the log cost little
        cut = data.find(_EVENT_HEAD, at, stop) + len(_EVENT_HEAD)
        if cut < len(_EVENT_HEAD) or not data.startswith(part[1], cut, stop):
            continue
        pieces += data[at:cut], item
        fills[slot] = part
        at = cut + len(part[1])
    pieces.append(data[at:stop])
    spliced = b"".join(pieces)
    try:
        evidence = cbor.decode(spliced, definite=True, field="payload.evidence")
        schema.validate_evidence(evidence, settled, encoded=spliced)
    except CardFormatError:
        return None, {}
    if cbor.dumps(evidence, settled=settled) != spliced:
        return None, {}
    return evidence, fills
