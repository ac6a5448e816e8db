"""The card envelope's bounds, each pinned at its edge: a card of exactly the limit
(FORMAT.md: at most 8 MiB) seals and opens, one byte more is refused naming the card and
the limit; up to 16 receipts ride along, a 17th is refused."""
import cbor2
import pytest

from cards import card, cbor, cose, keys
from cards.errors import CardFormatError
from test_cards_schema import sample_claims, sample_evidence

KEY = keys.generate_private_key("ed25519")


def _sealed_with_blob(length: int) -> bytes:
    claims = sample_claims()
    evidence = sample_evidence(claims)
    evidence["extra"]["blob"] = b"x" * length
    return card.seal(claims, evidence, KEY)


def test_a_card_of_exactly_the_limit_seals_and_one_byte_more_does_not():
    """A long byte string's CBOR head has the same width from 64 KiB up, so the card grows
    byte for byte with it and can be made exactly MAX_CARD_BYTES long."""
    probe = 1 << 20
    fits = probe + card.MAX_CARD_BYTES - len(_sealed_with_blob(probe))
    at_limit = _sealed_with_blob(fits)
    assert len(at_limit) == card.MAX_CARD_BYTES == 8 * 1024 * 1024
    assert card.open_card(at_limit).evidence["extra"]["blob"] == b"x" * fits
    with pytest.raises(CardFormatError) as info:
        _sealed_with_blob(fits + 1)
    assert (info.value.field, info.value.reason) == (
        "card", f"{card.MAX_CARD_BYTES + 1} bytes exceeds the {card.MAX_CARD_BYTES}-byte limit")


def _with_receipts(count: int) -> bytes:
    claims = sample_claims()
    msg = cose.parse_sign1(card.seal(claims, sample_evidence(claims), KEY))
    return cbor.dumps(cbor2.CBORTag(18, [msg.protected_bytes, {394: [b"r"] * count},
                                         msg.payload, msg.signature]))


def test_sixteen_receipts_open_and_a_seventeenth_is_refused():
    assert card.open_card(_with_receipts(16)).sign1.unprotected[394] == [b"r"] * 16
    with pytest.raises(CardFormatError) as info:
        card.open_card(_with_receipts(17))
    assert info.value.field == "card.unprotected"
    assert "up to 16 byte strings" in info.value.reason
