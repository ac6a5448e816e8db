"""Raw ECDSA signatures of the wrong length, and a card carrying one.

r||s is two fixed-size integers (32 bytes each for ES256). A parser that reads r from
the first half and s from "the rest" accepts r||0x00||s (65 bytes) and, when s happens to
start with a zero byte, r||s[1:] (63 bytes): the same (r, s) in different bytes, so the
same signed card could be logged again under a new card id. Only the length check
stands in the way, and these tests show the malleated signatures carry a valid (r, s).
"""
import hashlib

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

import cardkit
from cards import cbor, cose, keys
from verifier.appraise import appraise
from verifier.policy import Policy
from verifier.result import AFFIRMING, CONTRAINDICATED

DATA = b"laminate signed bytes"


def _valid_pair(public_key, signature, data=DATA) -> bool:
    """Whether the (r, s) a permissive parser would read from ``signature`` verifies."""
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    try:
        public_key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def key():
    return keys.generate_private_key("p256")


def test_65_byte_es256_signature_is_refused(key):
    good = cose.sign_bytes(key, cose.ALG_ES256, DATA)
    assert len(good) == 64 and cose.verify_bytes(key.public_key(), cose.ALG_ES256, DATA, good)
    padded = good[:32] + b"\x00" + good[32:]
    assert _valid_pair(key.public_key(), padded)          # the same (r, s) inside
    assert cose.verify_bytes(key.public_key(), cose.ALG_ES256, DATA, padded) is False


def test_63_byte_es256_signature_is_refused(key):
    for _ in range(4000):       # s < 2**248 happens once in 256 signatures
        good = cose.sign_bytes(key, cose.ALG_ES256, DATA)
        if good[32] == 0:
            break
    else:
        pytest.fail("no signature with a leading zero byte in s")
    short = good[:32] + good[33:]
    assert _valid_pair(key.public_key(), short)
    assert cose.verify_bytes(key.public_key(), cose.ALG_ES256, DATA, short) is False


@pytest.mark.parametrize("r, s", [(0, 1), (1, 0), (0, 0)])
def test_zero_r_or_s_is_refused(key, r, s):
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert cose.verify_bytes(key.public_key(), cose.ALG_ES256, DATA, signature) is False


def test_wrong_key_type_or_algorithm_is_false_not_an_error(key):
    ed = keys.generate_private_key("ed25519")
    es = cose.sign_bytes(key, cose.ALG_ES256, DATA)
    eddsa = cose.sign_bytes(ed, cose.ALG_EDDSA, DATA)
    assert cose.verify_bytes(ed.public_key(), cose.ALG_EDDSA, DATA, eddsa)
    assert cose.verify_bytes(ed.public_key(), cose.ALG_ES256, DATA, es) is False
    assert cose.verify_bytes(key.public_key(), cose.ALG_EDDSA, DATA, eddsa) is False
    assert cose.verify_bytes(key.public_key(), cose.ALG_ES384, DATA, es) is False
    assert cose.verify_bytes(ed.public_key(), cose.ALG_EDDSA, DATA + b"!", eddsa) is False
    assert cose.verify_bytes(key.public_key(), 0, DATA, es) is False
    with pytest.raises(Exception, match="does not match key type"):
        cose.sign_bytes(ed, cose.ALG_ES256, DATA)
    # the fully specified identifiers likewise: Ed25519 (-19) is no P-256 key's algorithm
    assert cose.verify_bytes(key.public_key(), cose.ALG_ED25519, DATA, eddsa) is False
    assert cose.verify_bytes(key.public_key(), cose.ALG_ED25519, DATA, es) is False
    assert cose.verify_bytes(ed.public_key(), cose.ALG_ESP256, DATA, es) is False


def _with_signature(card_bytes: bytes, signature: bytes) -> bytes:
    tagged = cbor.loads(card_bytes)
    protected, unprotected, payload, _ = tagged.value
    return cbor2.dumps(cbor2.CBORTag(cose.TAG_SIGN1,
                                   [protected, unprotected, payload, signature]))


@pytest.fixture(scope="module")
def p256_kit(tmp_path_factory):
    return cardkit.make_card(tmp_path_factory.mktemp("p256"), key_kind="p256")


def test_card_with_a_65_byte_signature_fails_the_release_signature(p256_kit):
    kit = p256_kit
    good = cose.parse_sign1(kit.card_bytes).signature
    padded = _with_signature(kit.card_bytes, good[:32] + b"\x00" + good[32:])
    msg = cose.parse_sign1(padded)
    signed = cose.sig_structure(msg.protected_bytes, msg.payload)
    assert _valid_pair(kit.private_key.public_key(), msg.signature, signed)
    policy = Policy.load(kit.policy_path)
    assert appraise(kit.card_bytes, policy=policy).get("release_signature").status == AFFIRMING
    check = appraise(padded, policy=policy).get("release_signature")
    assert (check.status, check.field) == (CONTRAINDICATED, "card.signature")
    assert check.reason == "card signature does not verify with the trusted release key"


def test_card_with_a_65_byte_signature_is_not_registrable_under_a_new_id(p256_kit, tmp_path):
    from fastapi.testclient import TestClient

    from registry.app import ServiceConfig, create_app

    kit = p256_kit
    good = cose.parse_sign1(kit.card_bytes).signature
    padded = _with_signature(kit.card_bytes, good[:32] + b"\x00" + good[32:])
    assert hashlib.sha256(padded).hexdigest() != hashlib.sha256(kit.card_bytes).hexdigest()
    config = ServiceConfig(database_url=f"sqlite:///{tmp_path / 'service.sqlite'}",
                           policy_path=str(kit.policy_path), api_tokens=["t"],
                           key_path=str(tmp_path / "service-key.pem"))
    headers = {"Authorization": "Bearer t", "Content-Type": "application/cbor"}
    with TestClient(create_app(config)) as client:
        first = client.post("/v1/cards", content=kit.card_bytes, headers=headers)
        assert first.status_code == 201, first.text
        again = client.post("/v1/cards", content=padded, headers=headers)
        assert again.status_code == 422, again.text
        assert "release_signature (card.signature): card signature does not verify" \
            in again.json()["detail"]
        assert client.get(f"/v1/cards/{hashlib.sha256(padded).hexdigest()}").status_code == 404


def _sign1(protected, unprotected=None, payload=b"p", signature=b"s" * 64, tag=18):
    body = [protected if isinstance(protected, bytes) else cbor.dumps(protected),
            {} if unprotected is None else unprotected, payload, signature]
    return cbor.dumps(cbor2.CBORTag(tag, body) if tag is not None else body)


@pytest.mark.parametrize("data, field, reason", [
    (_sign1({1: -7}, tag=17), "cose", "CBOR tag 17 is not COSE_Sign1 (18)"),
    (cbor.dumps(cbor2.CBORTag(18, {"a": 1})), "cose", "COSE_Sign1 must be an array of 4 items"),
    (cbor.dumps(cbor2.CBORTag(18, [b"", {}, b"p", b"s", b""])), "cose",
     "COSE_Sign1 must be an array of 4 items"),
    (cbor.dumps(cbor2.CBORTag(18, ["a1", {}, b"p", b"s"])), "cose.protected",
     "expected a byte string"),
    (cbor.dumps(cbor2.CBORTag(18, [b"\xa1\x01\x26", [], b"p", b"s"])), "cose.unprotected",
     "expected a map"),
    (_sign1({1: -7}, payload="p"), "cose.payload", "expected a byte string"),
    (_sign1({1: -7}, signature=[b"s"]), "cose.signature", "expected a byte string"),
    (_sign1(cbor.dumps([1, -7])), "cose.protected", "expected a serialized map"),
    (_sign1({1: -7, 4: b"k"}, {4: b"k"}), "cose.unprotected",
     "header 4 is both protected and unprotected"),
    (_sign1({1: -7, 2: []}), "cose.protected.crit", "expected a non-empty array"),
    (_sign1({1: -7, 2: 1}), "cose.protected.crit", "expected a non-empty array"),
    (_sign1({1: -7, 2: [2]}), "cose.protected.crit", "critical header 2 is not understood"),
    (_sign1({1: -7, 2: ["1"]}), "cose.protected.crit", "critical header '1' is not understood"),
    (_sign1({1: -7}, {2: [1]}), "cose.unprotected.crit", "crit must be protected"),
    (_sign1({1: -7}, {2: [99]}), "cose.unprotected.crit", "crit must be protected"),
    (_sign1({1: True}), "cose.protected.alg", "unsupported algorithm True"),
    (_sign1({1: -7, 4: "kid"}), "cose.protected.kid", "expected a byte string"),
])
def test_malformed_sign1_names_field_and_reason(data, field, reason):
    with pytest.raises(cose.CardFormatError) as err:
        cose.parse_sign1(data)
    assert (err.value.field, err.value.reason) == (field, reason)


def test_headers_that_are_accepted():
    msg = cose.parse_sign1(_sign1({1: -7, 2: [1, 4], 4: b"k"}), require_tag=True)
    assert (msg.alg, msg.kid, msg.protected[2]) == (-7, b"k", [1, 4])
    untagged = cose.parse_sign1(_sign1(b"", {1: -8, 4: b"u"}, tag=None))
    assert (untagged.alg, untagged.kid, untagged.protected) == (-8, b"u", {})


def test_protected_header_given_to_one_caller_is_not_shared():
    data = _sign1({1: -7, 4: b"k"})
    first = cose.parse_sign1(data)
    first.protected[1] = -8
    assert cose.parse_sign1(data).protected == {1: -7, 4: b"k"}


def test_empty_protected_map_is_signed_as_an_empty_string():
    """An empty protected map (0xa0) is signed as b"" whichever way it was sent."""
    ed = keys.generate_private_key("ed25519")
    signature = cose.sign_bytes(ed, cose.ALG_EDDSA, cose.sig_structure(b"", b"p"))
    msg = cose.parse_sign1(_sign1(b"\xa0", {1: -8}, signature=signature))
    assert msg.protected == {} and cose.verify_sign1(msg, ed.public_key())
    other = cose.sign_bytes(ed, cose.ALG_EDDSA, cose.sig_structure(b"\xa0", b"p"))
    assert not cose.verify_sign1(cose.parse_sign1(_sign1(b"\xa0", {1: -8}, signature=other)),
                                 ed.public_key())


def test_external_aad_is_signed():
    ed = keys.generate_private_key("ed25519")
    msg = cose.parse_sign1(cose.sign1(b"p", ed, kid=b"k", external_aad=b"aad"))
    assert cose.verify_sign1(msg, ed.public_key(), b"aad")
    assert not cose.verify_sign1(msg, ed.public_key())


@pytest.mark.parametrize("curve, alg, size", [(ec.SECP384R1(), cose.ALG_ES384, 96),
                                              (ec.SECP521R1(), cose.ALG_ES512, 132)])
def test_larger_curves_sign_raw_fixed_size_signatures(curve, alg, size):
    key = ec.generate_private_key(curve)
    assert cose.alg_for_key(key) == alg
    signature = cose.sign_bytes(key, alg, DATA)
    assert len(signature) == size and cose.verify_bytes(key.public_key(), alg, DATA, signature)
    assert not cose.verify_bytes(key.public_key(), alg, DATA, signature[:-1])


def test_key_without_a_cose_algorithm():
    with pytest.raises(cose.CardFormatError) as err:
        cose.alg_for_key(ec.generate_private_key(ec.SECP224R1()))
    assert err.value.field == "alg"
    assert err.value.reason.startswith("no COSE algorithm for key type ")


@pytest.mark.parametrize("item, field", [
    ({"a": 1}, "cose"), ([b"", {}, b"p"], "cose"), (cbor2.CBORTag(18, "x"), "cose"), (7, "cose"),
    ([b"", {}, b"p", 5], "cose.signature"), ([b"", {}, "p", b"s"], "cose.payload"),
])
def test_deterministic_parse_of_a_non_sign1_is_a_format_error(item, field):
    with pytest.raises(cose.CardFormatError) as err:
        cose.parse_sign1(cbor.dumps(item), deterministic=True)
    assert err.value.field == field


def test_non_deterministic_encoding_is_refused_only_when_asked():
    ed = keys.generate_private_key("ed25519")
    canonical = cose.sign1(b"p", ed, kid=b"k")
    item = cbor2.loads(canonical)
    loose = b"\xd2\x84" + b"".join(cbor2.dumps(part) for part in item.value[:2]) \
        + b"\x59\x00\x01p" + cbor2.dumps(item.value[3])      # payload length in 2 bytes
    assert cose.parse_sign1(loose).payload == b"p"
    with pytest.raises(cose.CardFormatError, match="deterministic"):
        cose.parse_sign1(loose, deterministic=True)
    assert cose.parse_sign1(canonical, deterministic=True).payload == b"p"


@pytest.mark.parametrize("kind, alg", [("ed25519", cose.ALG_ED25519), ("p256", cose.ALG_ESP256)])
def test_fully_specified_algorithms_sign_and_verify(kind, alg):
    """New cards sign with the algorithm that names its curve: Ed25519 (-19), ESP256 (-9)."""
    key = keys.generate_private_key(kind)
    assert cose.fully_specified_alg(key) == cose.fully_specified_alg(key.public_key()) == alg
    signature = cose.sign_bytes(key, alg, DATA)
    assert cose.verify_bytes(key.public_key(), alg, DATA, signature)
    assert not cose.verify_bytes(key.public_key(), alg, DATA + b"!", signature)


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP521R1()])
def test_esp256_is_p256_only(curve):
    """ESP256 names P-256: a P-384 key has no fully specified algorithm here, cannot sign
    as ESP256, and its ESP256 signature (made as ES384 bytes) never verifies."""
    key = ec.generate_private_key(curve)
    with pytest.raises(cose.CardFormatError) as err:
        cose.fully_specified_alg(key)
    assert (err.value.field, err.value.reason.split(" for ")[0]) == (
        "alg", "no fully specified COSE algorithm")
    with pytest.raises(cose.CardFormatError, match=r"^alg: algorithm -9 does not match key"):
        cose.sign_bytes(key, cose.ALG_ESP256, DATA)
    es = cose.sign_bytes(key, cose.alg_for_key(key), DATA)
    assert not cose.verify_bytes(key.public_key(), cose.ALG_ESP256, DATA, es)
