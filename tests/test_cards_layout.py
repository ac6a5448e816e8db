"""Opening a card along its layout (cards.layout) must decide exactly as the general
reading does: a payload that bends the layout is refused for the same reason, or read
to the same payload and the same encodings as FORMAT.md defines them."""
import hashlib

import cbor2
import pytest

from cards import card, cbor, keys, layout, schema
from test_cards_schema import _open_fails, _resign, sample_evidence, sample_payload

KEY = keys.generate_private_key("ed25519")


def _fresh_encodings(payload) -> layout.Encoded:
    """The encodings as FORMAT.md defines them, each encoded from scratch."""
    claims = payload["claims"]
    return layout.Encoded(
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
READ_ALONG = {  # payloads the layout reading opens itself, cutting out every repeat
    "usual": _with(),
    "no defenses": _with(dp=False, watermark=False),
    "narrow floats": _with(a=_config("lr", 0.5), b=_config("momentum", -0.0),
                           c=_config("clip", 65504.0)),
    "infinity in the config": _with(a=_config("limit", float("inf"))),
    "nested config": _with(a=_config("schedule", {"warmup": [1, 2.5, {"x": None}]})),
    "extra data": _with(a=_extra({"vendor": {"a": [1, 2]}, "z": b"\x00" * 40})),
}
STRAYS = {  # valid payloads whose bytes mislead the cutting: read without it
    "event head and a section in extra": _with(a=_extra({"a": b"\xa4\x64data" + MODEL})),
    "a map of four led by data in extra": _with(a=_extra(
        {"data": sample_payload()["claims"]["model"], "other": 1, "third": 2, "fourth": 3})),
}


@pytest.mark.parametrize("name", sorted(READ_ALONG) + sorted(STRAYS))
def test_layout_reading_gives_the_payload_and_format_encodings(name):
    payload = {**READ_ALONG, **STRAYS}[name]
    data = cbor.dumps(payload)
    opened = card.open_card(_resign(KEY, data))
    assert opened.payload == cbor.loads(data, deterministic=True)
    assert opened.encoded == _fresh_encodings(opened.payload)
    assert (layout.open_by_layout(data) is not None) == (name in READ_ALONG)
    assert layout.open_by_layout(data, cut_repeats=False) is not None


def test_each_repeat_is_read_once_and_shared():
    """What makes the layout reading cheap, and what a caller of open_card must know:
    an event's data that repeats its claims section is that very section."""
    opened = card.open_card(_resign(KEY, cbor.dumps(sample_payload())))
    claims, log = opened.claims, opened.evidence["event_log"]
    assert log[0]["data"] is claims["training"]["code"]
    assert log[-1]["data"] is claims["model"]


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
    """The length proof and the key-order record catch each way to sign the same claims
    in other bytes, however deep; two of them keep the length unchanged."""
    data = NOT_DETERMINISTIC[name](cbor.dumps(PAYLOAD))
    assert cbor.loads(data) == PAYLOAD
    assert layout.open_by_layout(data) is None
    _open_fails(_resign(KEY, data), "payload: CBOR is not deterministically encoded")


def test_event_data_equal_to_its_section_in_other_bytes_is_refused():
    """A repeat that decodes equal to its section but is encoded otherwise is not cut
    out, so it is decoded and proven on its own: and fails."""
    data = cbor.dumps(PAYLOAD)
    model = cbor.dumps(CLAIMS["model"])
    at = data.rindex(model)  # the model event's data, the last repeat
    wide = model.replace(b"\x19\x04\xd2", b"\x1a\x00\x00\x04\xd2")
    data = data[:at] + wide + data[at + len(model):]
    assert cbor.loads(data) == PAYLOAD
    _open_fails(_resign(KEY, data), "payload: CBOR is not deterministically encoded")


def test_claims_proof_bookkeeping_matches_the_encodings():
    """``validate_claims`` records what the length proof needs: the bytes narrow floats
    save, and whether a map is out of order."""
    claims = cbor.loads(cbor.dumps(CLAIMS))
    settled = schema.validate_claims(claims)
    assert not settled.misordered
    assert len(cbor2.dumps(claims)) - settled.narrowing == len(cbor.dumps(claims))
    assert settled.narrowing == 2 * 6  # max_grad_norm and per_class_accuracy hold 1.0
    claims["training"]["config"] = dict(reversed(claims["training"]["config"].items()))
    assert schema.validate_claims(claims).misordered
