"""Payloads laid out in unusual but valid ways open to the payload and the encodings
FORMAT.md defines; each way to sign the same claims in other bytes is refused; and an
opened card's event data and claims are separate values."""
import hashlib

import cbor2
import pytest

from cards import card, cbor, keys, schema
from test_cards_schema import _open_fails, _resign, sample_evidence, sample_payload

KEY = keys.generate_private_key("ed25519")


def _fresh_encodings(payload) -> card.Encoded:
    """The encodings as FORMAT.md defines them, each encoded from scratch."""
    claims = payload["claims"]
    return card.Encoded(
        cbor.dumps(claims), cbor.dumps(claims["training"]["config"]),
        {kind: cbor.dumps(schema.claim_for_event(claims, kind)) for kind in schema.EVENT_CLAIMS},
        tuple(cbor.dumps(event["data"]) for event in payload["evidence"]["event_log"]))


def _with(**changes):
    payload = sample_payload(dp=changes.pop("dp", True), watermark=changes.pop("watermark", True))
    for edit in changes.values():
        edit(payload)
    return payload


def _config(key, value):
    def edit(payload):
        training = payload["claims"]["training"]
        training["config"][key] = value
        training["config_sha256"] = hashlib.sha256(cbor.dumps(training["config"])).hexdigest()
        payload["evidence"] = dict(sample_evidence(payload["claims"]),
                                   extra=payload["evidence"]["extra"])
    return edit


def _extra(value):
    def edit(payload):
        payload["evidence"]["extra"] = value
    return edit


MODEL = cbor.dumps(sample_payload()["claims"]["model"])
VALID = {
    "usual": _with(),
    "no defenses": _with(dp=False, watermark=False),
    "narrow floats": _with(a=_config("lr", 0.5), b=_config("momentum", -0.0),
                           c=_config("clip", 65504.0)),
    "infinity in the config": _with(a=_config("limit", float("inf"))),
    "nested config": _with(a=_config("schedule", {"warmup": [1, 2.5, {"x": None}]})),
    "extra data": _with(a=_extra({"vendor": {"a": [1, 2]}, "z": b"\x00" * 40})),
    "event head and a section in extra": _with(a=_extra({"a": b"\xa4\x64data" + MODEL})),
    "a map of four led by data in extra": _with(a=_extra(
        {"data": sample_payload()["claims"]["model"], "other": 1, "third": 2, "fourth": 3})),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_payloads_open_to_the_payload_and_format_encodings(name):
    data = cbor.dumps(VALID[name])
    opened = card.open_card(_resign(KEY, data))
    assert opened.payload == cbor.loads(data, deterministic=True)
    assert opened.encoded == _fresh_encodings(opened.payload)


def test_event_data_and_claims_are_separate_values():
    """A caller may change what it reads: changing an event's data never changes the
    claims it repeats, nor the other way round."""
    opened = card.open_card(_resign(KEY, cbor.dumps(sample_payload())))
    claims, log = opened.claims, opened.evidence["event_log"]
    assert log[0]["data"] == claims["training"]["code"]
    assert log[0]["data"] is not claims["training"]["code"]
    log[-1]["data"]["size"] += 1
    assert claims["model"]["size"] == sample_payload()["claims"]["model"]["size"]
    claims["training"]["code"]["wrapper_sha256"] = "0" * 64
    assert log[0]["data"]["wrapper_sha256"] != "0" * 64


def _swap_entries(encoded_map: bytes, first: str, second: str) -> bytes:
    """The same map with two entries' places exchanged: equally long, keys out of order."""
    entries = cbor2.loads(encoded_map)
    order = list(entries)
    i, j = order.index(first), order.index(second)
    order[i], order[j] = order[j], order[i]
    return encoded_map[:1] + b"".join(cbor.dumps(k) + cbor.dumps(entries[k]) for k in order)


def _in_claims(old: bytes, new: bytes):
    """Replace the first occurrence of ``old``, which lies in the claims (they come first)."""
    def mutate(data: bytes) -> bytes:
        at = data.index(old)
        assert at < data.index(b"\x68evidence")
        return data[:at] + new + data[at + len(old):]
    return mutate


PAYLOAD = sample_payload()
CLAIMS = PAYLOAD["claims"]
CONFIG = cbor.dumps(CLAIMS["training"]["config"])
NOT_DETERMINISTIC = {
    "integer head too wide": _in_claims(b"\x19\x04\xd2", b"\x1a\x00\x00\x04\xd2"),
    "text head too wide": _in_claims(b"\x6adigits-mlp", b"\x78\x0adigits-mlp"),
    "narrow float written wide": _in_claims(b"\xf9\x3c\x00", cbor2.dumps(1.0)),
    "free-form keys out of order": _in_claims(CONFIG, _swap_entries(CONFIG, "dp", "lr")),
    "record keys out of order": _in_claims(
        cbor.dumps(CLAIMS["model"]), _swap_entries(cbor.dumps(CLAIMS["model"]), "size", "name")),
}


@pytest.mark.parametrize("name", sorted(NOT_DETERMINISTIC))
def test_claims_not_in_deterministic_form_are_refused(name):
    """Each way to sign the same claims in other bytes, however deep, is refused; two of
    them keep the length unchanged."""
    data = NOT_DETERMINISTIC[name](cbor.dumps(PAYLOAD))
    assert cbor.loads(data) == PAYLOAD
    _open_fails(_resign(KEY, data), "payload: CBOR is not deterministically encoded")


def test_event_data_equal_to_its_section_in_other_bytes_is_refused():
    """A repeat that decodes equal to its section but is encoded otherwise is refused."""
    data = cbor.dumps(PAYLOAD)
    model = cbor.dumps(CLAIMS["model"])
    at = data.rindex(model)  # the model event's data, the last repeat
    wide = model.replace(b"\x19\x04\xd2", b"\x1a\x00\x00\x04\xd2")
    data = data[:at] + wide + data[at + len(model):]
    assert cbor.loads(data) == PAYLOAD
    _open_fails(_resign(KEY, data), "payload: CBOR is not deterministically encoded")
