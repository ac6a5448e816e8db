"""The simulator evidence checks against a PKI built here, one defect at a time.

The simulator always issues good certificates, so certificates of the wrong key type,
outside their validity window, or chains of the wrong length are made by hand; quotes
are signed with this PKI's attestation key, as an attacker running software on a
device could sign anything.
"""
import datetime
import hashlib
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from cards import cbor
from verifier import sim_evidence
from verifier.policy import Policy
from verifier.result import AFFIRMING, CONTRAINDICATED, SKIPPED

DAY = datetime.timedelta(days=1)


def _name(common):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _cert(subject_key, issuer_key, subject, issuer, start, end):
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
            .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .sign(issuer_key, hashes.SHA256()))


class Pki:
    def __init__(self, ak_key=None, ak_window=None, root_window=None):
        now = datetime.datetime.now(datetime.timezone.utc)
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.ak_key = ak_key or ec.generate_private_key(ec.SECP256R1())
        root_start, root_end = root_window or (now - DAY, now + DAY)
        ak_start, ak_end = ak_window or (now - DAY, now + DAY)
        self.root = _cert(self.root_key, self.root_key, "root", "root", root_start, root_end)
        self.ak = _cert(self.ak_key, self.root_key, "ak", "root", ak_start, ak_end)
        self.chain = [self.ak.public_bytes(serialization.Encoding.DER),
                      self.root.public_bytes(serialization.Encoding.DER)]
        pem = self.root.public_bytes(serialization.Encoding.PEM).decode()
        self.policy = Policy.from_mapping({"policy_id": "pki", "allow_backends": ["sim"],
                                           "trusted_roots": [pem]})

    def device_id(self):
        spki = self.ak_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return "sim-" + hashlib.sha256(spki).hexdigest()[:16]

    def sign(self, quote: bytes) -> bytes:
        r, s = decode_dss_signature(self.ak_key.sign(quote, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def quote(self, **changes):
        info = {"version": 1, "backend": "sim", "device_id": self.device_id(),
                "registers": [16, 23], "register_digest": bytes(32),
                "qualifying_data": bytes(32), "counter": 1, "reset_count": 0, "clock_ms": 5}
        info.update(changes)
        return cbor.dumps(info)

    def check(self, chain=None, quote=None, signature=None):
        quote = self.quote() if quote is None else quote
        evidence = {"cert_chain": self.chain if chain is None else chain, "quote": quote,
                    "signature": self.sign(quote) if signature is None else signature}
        checks, quoted = sim_evidence.check_evidence(evidence, self.policy)
        return {c.check: c for c in checks}, quoted


def test_a_good_pki_passes():
    pki = Pki()
    checks, quoted = pki.check()
    assert checks["cert_chain"].status == checks["quote_signature"].status == AFFIRMING
    assert quoted.registers == [16, 23] and quoted.device == pki.device_id()


@pytest.mark.parametrize("chain, count", [
    (lambda p: p.chain[:1], 1), (lambda p: [*p.chain, p.chain[1]], 3), (lambda p: [], 0),
    (lambda p: [p.chain[0], "root"], 2), (lambda p: ["ak", p.chain[1]], 2),
])
def test_chain_of_the_wrong_shape(chain, count):
    pki = Pki()
    checks, quoted = pki.check(chain=chain(pki))
    assert (checks["cert_chain"].status, checks["cert_chain"].field) == \
        (CONTRAINDICATED, "evidence.cert_chain")
    assert checks["cert_chain"].reason == \
        f"expected [AK certificate, root certificate], got {count} entries"
    assert checks["quote_signature"].status == SKIPPED and quoted is None


@pytest.mark.parametrize("key", [ec.generate_private_key(ec.SECP384R1()),
                                 ed25519.Ed25519PrivateKey.generate()],
                         ids=["p384", "ed25519"])
def test_attestation_key_that_is_not_p256(key):
    pki = Pki(ak_key=key)
    checks, _ = pki.check(signature=bytes(64))
    assert (checks["cert_chain"].field, checks["cert_chain"].reason) == \
        ("evidence.cert_chain[0]", "attestation key is not an ECDSA P-256 key")


@pytest.mark.parametrize("which", ["ak", "root"])
@pytest.mark.parametrize("window", ["expired", "not yet valid"])
def test_certificate_outside_its_validity(which, window):
    now = datetime.datetime.now(datetime.timezone.utc)
    span = (now - 3 * DAY, now - DAY) if window == "expired" else (now + DAY, now + 3 * DAY)
    pki = Pki(**{f"{which}_window": span})
    checks, quoted = pki.check()
    check = checks["cert_chain"]
    assert (check.status, check.field) == \
        (CONTRAINDICATED, f"evidence.cert_chain[{0 if which == 'ak' else 1}]")
    assert check.reason.startswith("certificate not valid now (valid ")


def test_validity_is_rechecked_once_the_cached_success_expires():
    """A validated chain is cached until its first certificate expires, and a failure
    is not cached at all: the same chain fails, passes, then fails as time goes by."""
    start = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) \
        + datetime.timedelta(seconds=2)
    pki = Pki(ak_window=(start, start + datetime.timedelta(seconds=1)))

    def at(moment):
        time.sleep(max(0.0, (moment - datetime.datetime.now(datetime.timezone.utc))
                       .total_seconds()))
        return pki.check()[0]["cert_chain"].status
    assert at(start - datetime.timedelta(seconds=1)) == CONTRAINDICATED
    assert at(start + datetime.timedelta(milliseconds=200)) == AFFIRMING
    assert at(start + datetime.timedelta(milliseconds=1300)) == CONTRAINDICATED


@pytest.mark.parametrize("quote, signature, field, reason", [
    ("text", b"\x00" * 64, "evidence.signature", "quote and signature must be byte strings"),
    (b"q", "sig", "evidence.signature", "quote and signature must be byte strings"),
    (b"q", b"\x01" * 65, "evidence.signature",
     "ES256 signature must be 64 bytes (raw r||s), got 65"),
    (b"q", b"\x01" * 63, "evidence.signature",
     "ES256 signature must be 64 bytes (raw r||s), got 63"),
    (b"q", b"\x01" * 64, "evidence.signature",
     "quote signature does not verify with the attestation key"),
])
def test_quote_signature_problems(quote, signature, field, reason):
    checks, quoted = Pki().check(quote=quote, signature=signature)
    check = checks["quote_signature"]
    assert (check.status, check.field, check.reason) == (CONTRAINDICATED, field, reason)
    assert quoted is None


def test_signed_quote_that_is_not_a_map():
    pki = Pki()
    checks, quoted = pki.check(quote=cbor.dumps([1, 2]))
    check = checks["quote_signature"]
    assert (check.field, check.reason) == ("evidence.quote", "signed quote is not a map")


@pytest.mark.parametrize("changes, field, reason", [
    ({"backend": "tpm"}, "evidence.quote", "not a version 1 sim quote"),
    ({"registers": [16, 23, 23]}, "evidence.quote.registers",
     "must be distinct register indices 0-23 in ascending order"),
    ({"registers": [0, 23]}, None, None),
    ({"qualifying_data": bytes(33)}, "evidence.quote.qualifying_data", "must be 32 bytes"),
    ({"device_id": "sim-0000000000000000"}, "evidence.quote.device_id", None),
])
def test_signed_quote_fields(changes, field, reason):
    pki = Pki()
    checks, quoted = pki.check(quote=pki.quote(**changes))
    check = checks["quote_signature"]
    if field is None:
        assert check.status == AFFIRMING and quoted.registers == changes["registers"]
        return
    assert (check.status, check.field) == (CONTRAINDICATED, field)
    assert check.reason == (reason or f"quote names device sim-0000000000000000 but is signed "
                                      f"by the key of device {pki.device_id()}")
