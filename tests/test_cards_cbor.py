"""Deterministic CBOR and the strict decoder that signed data goes through."""

import random

import cbor2
import pytest

from cards import cbor
from cards.errors import CardFormatError, LaminateError


def test_dumps_is_rfc8949_deterministic():
    # keys sorted by encoded bytes (shorter first), shortest ints and floats
    assert cbor.dumps({"bb": 1, "a": 2, "c": 3}) == bytes.fromhex("a3616102616303626262" "01")
    assert cbor.dumps(23) == b"\x17" and cbor.dumps(24) == b"\x18\x18"
    assert cbor.dumps(1.5) == bytes.fromhex("f93e00")
    assert cbor.dumps([1, [2]]) == bytes.fromhex("82018102")
    assert cbor.dumps({10: 0, -1: 0}) == bytes.fromhex("a20a002000")


def test_round_trip_of_plain_values_is_exact():
    value = {"schema_version": 1, "x": [1, -2, 3.25, None, True, b"\x00\xff", "é"],
             "nested": {"k": {"deep": [0.1, 1e300, -0.0]}}}
    data = cbor.dumps(value)
    assert cbor.loads(data, deterministic=True) == value
    assert cbor.dumps(cbor.loads(data)) == data


@pytest.mark.parametrize("hex_data,reason", [
    ("a2616101616102", "duplicate map key 'a'"),
    ("a20101180102", "duplicate map key 1"),            # same key, two encodings
    ("a1a2616101616102f6", "duplicate map key 'a'"),    # nested inside a key
    ("81a2616101616102", "duplicate map key"),          # nested in an array
    ("0102", "1 trailing bytes"),
    ("a2", "truncated"),
    ("5b7fffffffffffffff00", "truncated"),              # absurd length, no allocation
    ("ff", "malformed"),
    ("62c328", "malformed"),                            # invalid UTF-8
    ("c11a00000001", "tag 1 is not allowed"),           # date conversion
    ("d81c01", "tag 28 is not allowed"),                # shared references
    ("c249010000000000000000", "tag 2 is not allowed"), # bignum
    ("", "empty input"),
])
def test_strict_decoder_refuses(hex_data, reason):
    for deterministic in (False, True):
        with pytest.raises(CardFormatError, match=reason):
            cbor.loads(bytes.fromhex(hex_data), deterministic=deterministic)


@pytest.mark.parametrize("hex_data", [
    "1801",                 # 1 in two bytes
    "190001",               # 1 in three bytes
    "a2616201616101",       # keys out of order
    "fb3ff8000000000000",   # 1.5 as float64
    "9f01ff",               # indefinite array
    "5f4101ff",             # indefinite byte string
    "7800",                 # empty string with a long length
    "a2040001f6",           # integer keys out of order (COSE headers have them)
    "a21818f60af6",         # 24 before 10
    "a2200001f6",           # a negative key first: the general check decides
])
def test_deterministic_mode_refuses_other_encodings(hex_data):
    data = bytes.fromhex(hex_data)
    cbor.loads(data)  # well formed
    with pytest.raises(CardFormatError, match="deterministic|indefinite"):
        cbor.loads(data, deterministic=True)


def test_deep_nesting_is_an_error_not_a_crash():
    with pytest.raises(CardFormatError, match="depth"):
        cbor.loads(b"\x81" * 10_000 + b"\x00")


def test_errors_name_the_field_and_are_laminate_errors():
    with pytest.raises(LaminateError) as info:
        cbor.loads(b"\xa2", field="evidence.quote")
    assert str(info.value).startswith("evidence.quote: ")
    assert "\n" not in str(info.value)


def test_unknown_tags_come_back_as_plain_mutable_values():
    item = cbor.loads(cbor2.dumps(cbor2.CBORTag(18, [b"a", {4: b"k"}, b"p", b"s"])))
    assert item.tag == 18 and isinstance(item.value, list) and isinstance(item.value[1], dict)


def test_random_bytes_never_raise_anything_but_card_format_error():
    rng = random.Random(1)
    for _ in range(3000):
        data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 40)))
        try:
            cbor.loads(data, deterministic=rng.random() < 0.5)
        except CardFormatError as exc:
            assert "\n" not in str(exc)


def test_non_bytes_input_is_refused():
    with pytest.raises(CardFormatError, match="expected bytes"):
        cbor.loads("a1")


@pytest.mark.parametrize("value", [{1: -8, 4: b"k"}, {0: 1, 23: 2, 24: 3, 256: None},
                                   {-1: 0, 10: 0}, {1: 1.5, 2: [1.0]}])
def test_deterministic_mode_accepts_every_deterministic_encoding(value):
    assert cbor.loads(cbor.dumps(value), deterministic=True) == value


def test_what_cbor_cannot_encode_is_a_format_error():
    with pytest.raises(CardFormatError, match="cannot encode as CBOR"):
        cbor.dumps({"x": object()})


def test_require_deterministic_compares_with_the_one_encoding():
    value = {"a": [1, 1.5]}
    cbor.require_deterministic(value, cbor.dumps(value), field="x")
    for other in (cbor2.dumps(value), bytes.fromhex("a161618201fb3ff8000000000000")):
        with pytest.raises(CardFormatError, match="^x: CBOR is not deterministically"):
            cbor.require_deterministic(value, other, field="x")
