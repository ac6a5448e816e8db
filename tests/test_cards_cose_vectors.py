"""Our COSE_Sign1 code against the COSE working group's public examples, plus sealing
round trips and single-byte tampering."""
import base64
import hashlib
import json

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519

from cards import cbor, cose, keys
from cards.errors import CardFormatError
from vectors import cose_files

_CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}


def _b64url(text: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


def _private_key(jwk):
    if jwk["kty"] == "EC":
        public = ec.EllipticCurvePublicNumbers(_b64url(jwk["x"]), _b64url(jwk["y"]),
                                               _CURVES[jwk["crv"]]())
        return ec.EllipticCurvePrivateNumbers(_b64url(jwk["d"]), public).private_key()
    cls = {"Ed25519": ed25519.Ed25519PrivateKey, "Ed448": ed448.Ed448PrivateKey}[jwk["crv"]]
    key = cls.from_private_bytes(bytes.fromhex(jwk["d_hex"]))
    assert key.public_key().public_bytes_raw().hex() == jwk["x_hex"]
    return key


def _fresh_key_like(key):
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ec.generate_private_key(key.curve)
    if isinstance(key, ed448.Ed448PrivateKey):
        return ed448.Ed448PrivateKey.generate()
    return ed25519.Ed25519PrivateKey.generate()


def _load(path):
    case = json.loads(path.read_text())
    signer = case["input"]["sign0"]
    return (case, _private_key(signer["key"]), bytes.fromhex(case["output"]["cbor"]),
            bytes.fromhex(signer.get("external", "")))


@pytest.mark.parametrize("path", cose_files("sign1-tests/sign-pass-*.json")
                         + cose_files("*-examples/*-sig-*.json"), ids=lambda p: p.stem)
def test_passing_example_verifies_and_reproduces_to_be_signed(path):
    case, key, data, aad = _load(path)
    msg = cose.parse_sign1(data)
    assert msg.payload == case["input"]["plaintext"].encode()
    protected = msg.protected_bytes if msg.protected else b""
    tbs = cose.sig_structure(protected, msg.payload, aad)
    assert tbs.hex().upper() == case["intermediates"]["ToBeSign_hex"]
    assert cose.verify_sign1(msg, key.public_key(), aad)
    # the same message under another key, or another external_aad, does not verify
    assert not cose.verify_sign1(msg, _fresh_key_like(key).public_key(), aad)
    assert not cose.verify_sign1(msg, key.public_key(), aad + b"x")
    if cose.alg_for_key(key) == cose.ALG_EDDSA:
        # EdDSA is deterministic: our signature is the example's, byte for byte
        assert cose.sign_bytes(key, cose.ALG_EDDSA, tbs) == msg.signature
    else:
        ours = cose.sign_bytes(key, msg.alg, tbs)
        assert len(ours) == len(msg.signature)
        assert cose.verify_bytes(key.public_key(), msg.alg, tbs, ours)


def test_all_public_examples_were_found():
    assert len(cose_files("sign1-tests/sign-pass-*.json")) == 3
    assert len(cose_files("sign1-tests/sign-fail-*.json")) == 6
    assert len(cose_files("*-examples/*-sig-*.json")) == 6


@pytest.mark.parametrize("path", cose_files("sign1-tests/sign-fail-*.json"), ids=lambda p: p.stem)
def test_failing_example_is_rejected(path):
    case, key, data, aad = _load(path)
    try:
        msg = cose.parse_sign1(data)
    except CardFormatError:
        return
    assert not cose.verify_sign1(msg, key.public_key(), aad)


@pytest.mark.parametrize("kind", keys.KINDS)
def test_sign1_round_trip_and_every_byte_flip_is_rejected(kind):
    key = keys.generate_private_key(kind)
    kid = keys.key_id(key.public_key())
    data = cose.sign1(b"payload bytes", key, kid=kid)
    assert data[0] == 0xD2  # tag 18
    msg = cose.parse_sign1(data, require_tag=True, deterministic=True)
    assert msg.kid == kid and msg.payload == b"payload bytes" and msg.unprotected == {}
    assert msg.alg == (cose.ALG_EDDSA if kind == "ed25519" else cose.ALG_ES256)
    assert len(msg.signature) == 64  # ES256 is raw r||s, not DER
    assert cose.verify_sign1(msg, key.public_key())
    for i in range(len(data)):
        tampered = bytearray(data)
        tampered[i] ^= 0x01
        try:
            bad = cose.parse_sign1(bytes(tampered), require_tag=True, deterministic=True)
        except CardFormatError:
            continue
        assert not cose.verify_sign1(bad, key.public_key()), f"flip at byte {i} verified"


def test_es256_signature_is_raw_r_s_not_der():
    key = keys.generate_private_key("p256")
    msg = cose.parse_sign1(cose.sign1(b"x", key, kid=b"k"))
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    der = encode_dss_signature(int.from_bytes(msg.signature[:32], "big"),
                               int.from_bytes(msg.signature[32:], "big"))
    forged = cose.Sign1(msg.protected, msg.protected_bytes, msg.unprotected, msg.payload,
                        der, msg.alg, msg.kid)
    assert cose.verify_sign1(msg, key.public_key())
    assert not cose.verify_sign1(forged, key.public_key())


def test_algorithm_and_key_type_must_agree():
    ed = keys.generate_private_key("ed25519")
    p256 = keys.generate_private_key("p256")
    msg = cose.parse_sign1(cose.sign1(b"x", ed, kid=b"k"))
    assert not cose.verify_sign1(msg, p256.public_key())
    with pytest.raises(CardFormatError):
        cose.sign_bytes(ed, cose.ALG_ES256, b"x")


def _message(protected, unprotected, tag=18):
    body = [cbor.dumps(protected) if protected is not None else b"", unprotected, b"p", b"s" * 64]
    return cbor.dumps(cbor2.CBORTag(tag, body) if tag is not None else body)


@pytest.mark.parametrize("data,reason", [
    (_message({1: -7}, {}, tag=998), "tag 998"),
    (_message({1: -7}, {}, tag=None), "missing COSE_Sign1 tag"),
    (_message({1: -999}, {}), "unsupported algorithm"),
    (_message({1: "unknown"}, {}), "unsupported algorithm"),
    (_message({4: b"k"}, {}), "alg: missing"),
    (_message({1: -7}, {1: -7}), "both protected and unprotected"),
    (_message({1: -7, 2: [99]}, {}), "critical header 99"),
    (cbor.dumps(cbor2.CBORTag(18, [b"", {}, b"p"])), "array of 4"),
    (cbor.dumps(cbor2.CBORTag(18, [b"\xa1\x01\x26", {}, None, b"s"])), "detached"),
    (bytes.fromhex("d28443a10126a10442313154") , "truncated"),
])
def test_malformed_messages_are_refused_with_a_reason(data, reason):
    with pytest.raises(CardFormatError, match=reason):
        cose.parse_sign1(data, require_tag=True)


def test_duplicate_header_key_is_refused():
    protected = bytes.fromhex("a2012601 26".replace(" ", ""))  # {1: -7, 1: -7}
    data = cbor.dumps(cbor2.CBORTag(18, [protected, {}, b"p", b"s"]))
    with pytest.raises(CardFormatError, match="duplicate map key"):
        cose.parse_sign1(data)


# --- release keys -----------------------------------------------------------------------

def test_keys_save_load_round_trip_with_owner_only_mode(tmp_path):
    import stat
    for kind in keys.KINDS:
        key = keys.generate_private_key(kind)
        path = keys.save_private_key(key, tmp_path / f"{kind}.pem")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        loaded = keys.load_private_key(path)
        assert keys.public_pem(loaded) == keys.public_pem(key)
        pem_path = tmp_path / f"{kind}.pub"
        pem_path.write_bytes(keys.public_pem(key))
        for source in (pem_path, str(pem_path), keys.public_pem(key), keys.spki_der(key)):
            assert keys.key_id(keys.load_public_key(source)) == keys.key_id(key)
        assert keys.key_id(key) == hashlib.sha256(keys.spki_der(key)).digest()


def test_keys_public_key_from_certificate(tmp_path):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID
    key = keys.generate_private_key("p256")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "release")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    assert keys.key_id(keys.load_public_key(pem)) == keys.key_id(key)


def test_keys_user_errors_name_the_file(tmp_path):
    from cards.errors import LaminateError
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    for loader in (keys.load_private_key, keys.load_public_key):
        with pytest.raises(LaminateError, match="bad.pem"):
            loader(bad)
        with pytest.raises(LaminateError, match="cannot read"):
            loader(tmp_path / "absent.pem")
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(LaminateError, match="Ed25519 or P-256"):
        keys.save_private_key(p384, tmp_path / "p384.pem")
    from cryptography.hazmat.primitives import serialization
    (tmp_path / "p384.pub").write_bytes(p384.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(LaminateError, match="p384.pub.*Ed25519 or P-256"):
        keys.load_public_key(tmp_path / "p384.pub")
    with pytest.raises(LaminateError, match="key kind"):
        keys.generate_private_key("rsa")
