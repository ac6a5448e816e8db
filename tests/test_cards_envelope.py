"""New cards' envelope: a fully specified algorithm, typ, content type and CWT claims
that must match the card; older cards (alg and kid only) still open and verify."""
import cbor2
import pytest

from cardkit import forge, make_card
from cards import card, cbor, cose, keys
from cards.errors import CardFormatError


@pytest.fixture(scope="module", params=["ed25519", "p256"])
def kit(request, tmp_path_factory):
    return make_card(tmp_path_factory.mktemp("envelope"), key_kind=request.param)


def _resigned(kit, change=None, unprotected=None):
    """The kit's card with its protected header changed by ``change`` and signed again."""
    msg = cose.parse_sign1(kit.card_bytes)
    header = dict(msg.protected)
    if change:
        change(header)
    protected = cbor.dumps(header)
    signature = cose.sign_bytes(kit.private_key, header[1],
                                cose.sig_structure(protected, msg.payload))
    return cbor.dumps(cbor2.CBORTag(18, [protected, unprotected or {}, msg.payload, signature]))


def test_a_new_card_names_its_type_signer_and_model(kit):
    opened = card.open_card(kit.card_bytes)
    kid = keys.key_id(kit.private_key.public_key())
    assert opened.alg == cose.fully_specified_alg(kit.private_key) in (-19, -9)
    assert opened.sign1.protected[16] == "application/laminate-card+cbor"
    assert opened.sign1.protected[3] == "application/cbor"
    assert opened.sign1.protected[15] == {1: f"laminate-release-key:sha256:{kid.hex()}",
                                          2: f"sha-256:{kit.claims['model']['sha256']}"}
    assert card.release_key_matches(opened, kit.private_key.public_key())


def test_an_older_card_still_opens_and_verifies(kit):
    old = forge(kit)  # signed the older way: polymorphic algorithm, alg and kid only
    opened = card.open_card(old)
    assert opened.alg == cose.alg_for_key(kit.private_key) in (-8, -7)
    assert card.release_key_matches(opened, kit.private_key.public_key())


@pytest.mark.parametrize("case, change, field", [
    ("subject is another model", lambda h: h[15].__setitem__(2, "sha-256:" + "0" * 64),
     "card.protected"),
    ("issuer is another key", lambda h: h[15].__setitem__(1, "laminate-release-key:sha256:00"),
     "card.protected"),
    ("another typ", lambda h: h.__setitem__(16, "application/cose"), "card.protected"),
    ("typ missing", lambda h: h.pop(16), "card.protected"),
    ("an old algorithm in a new header", lambda h: h.__setitem__(1, {-19: -8, -9: -7}[h[1]]),
     "card.protected.alg"),
])
def test_a_new_header_that_does_not_match_the_card_is_refused(kit, case, change, field):
    with pytest.raises(CardFormatError) as info:
        card.open_card(_resigned(kit, change))
    assert info.value.field == field, case


def test_receipts_ride_in_the_unprotected_header_and_nothing_else(kit):
    with_receipt = _resigned(kit, unprotected={394: [b"\x84receipt"]})
    assert card.open_card(with_receipt).sign1.unprotected == {394: [b"\x84receipt"]}
    for bad in ({394: []}, {394: ["text"]}, {394: [b"r"], 5: b"iv"}, {5: b"x"}):
        with pytest.raises(CardFormatError, match="must be empty, or hold only receipts"):
            card.open_card(_resigned(kit, unprotected=bad))


def test_a_fully_specified_algorithm_binds_its_curve():
    """ESP256 is ECDSA on P-256 only: a P-384 signature under -9 never verifies."""
    from cryptography.hazmat.primitives.asymmetric import ec
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(CardFormatError):
        cose.sign_bytes(p384, cose.ALG_ESP256, b"data")
    signature = cose.sign_bytes(p384, cose.ALG_ES384, b"data")
    assert not cose.verify_bytes(p384.public_key(), cose.ALG_ESP256, b"data", signature)


@pytest.mark.parametrize("read", [card.statement_bytes, card.card_digest, card.receipts_of])
def test_the_envelope_readers_refuse_non_bytes_and_oversize_input(kit, read):
    """statement_bytes, card_digest and receipts_of read the envelope as strictly as
    open_card: not bytes, or more than MAX_CARD_BYTES, is refused by name before parsing."""
    read(kit.card_bytes)                         # a real card is read
    with pytest.raises(CardFormatError, match="expected bytes, got str") as info:
        read(kit.card_bytes.hex())
    assert info.value.field == "card"
    oversize = kit.card_bytes + b"\0" * (card.MAX_CARD_BYTES + 1 - len(kit.card_bytes))
    with pytest.raises(CardFormatError, match=f"{card.MAX_CARD_BYTES + 1} bytes exceeds") as info:
        read(oversize)
    assert info.value.field == "card"
    at_limit = kit.card_bytes + b"\0" * (card.MAX_CARD_BYTES - len(kit.card_bytes))
    with pytest.raises(CardFormatError) as info:             # not refused for its size
        read(at_limit)
    assert "exceeds" not in str(info.value)


def test_with_receipts_bounds_the_count_and_the_size(kit):
    """At most MAX_RECEIPTS receipts, and the card with them at most MAX_CARD_BYTES."""
    full = card.with_receipts(kit.card_bytes, [b"r%d" % i for i in range(card.MAX_RECEIPTS)])
    assert len(card.receipts_of(full)) == card.MAX_RECEIPTS
    with pytest.raises(CardFormatError, match=f"more than {card.MAX_RECEIPTS} receipts") as info:
        card.with_receipts(full, [b"one more"])
    assert info.value.field == "card.unprotected"
    big = b"\0" * (card.MAX_CARD_BYTES - len(kit.card_bytes))
    with pytest.raises(CardFormatError, match="bytes with receipts exceeds") as info:
        card.with_receipts(kit.card_bytes, [big])
    assert info.value.field == "card"
