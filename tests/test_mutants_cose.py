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
