"""How a verifier comes to trust a TPM attestation key (AK), offline.

The endorsement key (EK) is the only key a manufacturer certifies, and it is a
restricted *decryption* key: it can never sign, so a quote cannot be chained to the EK
certificate by signatures alone. The link is made once, at enrollment, by a registrar
using credential activation (TPM 2.0 Part 1, 24): the registrar checks the EK
certificate against the manufacturer roots, runs MakeCredential for the EK public key
and the AK's Name, and only the TPM holding that EK *and* that AK (a fixedTPM,
restricted signing key) can recover the secret with TPM2_ActivateCredential. On the
right answer the registrar issues an AK certificate naming the EK. A card is verified
offline, long after that conversation, so it carries this enrollment record; the
verifier trusts the AK only through an AK certificate that chains to a registrar CA the
policy trusts. (A certified-AK record made by the TPM itself is impossible: it would
need a signature by the EK.)

MakeCredential is implemented here with `cryptography` so the registrar, like the
verifier, needs no TPM software stack. It supports RSA EKs (every EK credential
profile mandates the RSA 2048 EK).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # CFB moved to the "decrepit" namespace; TPM credential blobs still use it
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # cryptography < 43
    from cryptography.hazmat.primitives.ciphers.modes import CFB
from cryptography.x509.oid import NameOID

from cards.errors import LaminateError
from verifier import tpm_structs as ts
from verifier.evidence import CERTIFICATE_ERRORS

AK_SUBJECT_CN = "laminate TPM attestation key"
EK_REF_PREFIX = "ek-spki-sha256:"
MAX_CHAIN = 6
TCG_KP_EK_CERTIFICATE = x509.ObjectIdentifier("2.23.133.8.1")
AK_REQUIRED_ATTRS = (ts.TPMA_RESTRICTED | ts.TPMA_SIGN_ENCRYPT | ts.TPMA_FIXEDTPM
                     | ts.TPMA_FIXEDPARENT | ts.TPMA_SENSITIVEDATAORIGIN)


def spki_sha256(public_key) -> str:
    """Hex SHA-256 of a public key's SubjectPublicKeyInfo DER (how an AK cert names its EK)."""
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def verify_chain(leaf: x509.Certificate, intermediates, roots, *, at=None) -> str | None:
    """Walk leaf -> intermediates -> one of `roots`; return why it fails, or None.

    Each link is a signature check (`verify_directly_issued_by`), issuers must be CAs,
    and every certificate on the path must be valid at `at` (now by default).
    A root is a trust anchor: any certificate the policy lists, self-signed or not.
    A certificate on the way that cannot be read is a reason too, never an exception.
    """
    try:
        return _walk_chain(leaf, intermediates, roots, at or dt.datetime.now(dt.timezone.utc))
    except CERTIFICATE_ERRORS as exc:
        return f"a certificate on the path cannot be read ({type(exc).__name__})"


def _walk_chain(leaf, intermediates, roots, at) -> str | None:
    roots, pool = list(roots), list(intermediates)
    current = leaf
    for _ in range(MAX_CHAIN):
        if not current.not_valid_before_utc <= at <= current.not_valid_after_utc:
            return f"certificate {current.subject.rfc4514_string()!r} is not valid now"
        if any(current == r for r in roots):
            return None
        for candidate in roots + pool:
            if candidate.subject != current.issuer or candidate == current:
                continue
            try:
                current.verify_directly_issued_by(candidate)
            except (*CERTIFICATE_ERRORS, InvalidSignature):
                continue
            if not _is_ca(candidate):
                return f"issuer {candidate.subject.rfc4514_string()!r} is not a CA"
            if any(candidate == r for r in roots):
                if not candidate.not_valid_before_utc <= at <= candidate.not_valid_after_utc:
                    return f"root {candidate.subject.rfc4514_string()!r} is not valid now"
                return None
            current = candidate
            break
        else:
            return f"no trusted root issued {current.subject.rfc4514_string()!r} " \
                   f"(issuer {current.issuer.rfc4514_string()!r})"
    return "certificate chain too long"


def is_ek_certificate(cert: x509.Certificate) -> bool:
    """TCG EK Credential Profile: an end-entity certificate with EKU tcg-kp-EKCertificate."""
    if _is_ca(cert):
        return False
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return TCG_KP_EK_CERTIFICATE in list(usages)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def kdfa(hash_alg: int, key: bytes, label: bytes, context_u: bytes, context_v: bytes,
         bits: int) -> bytes:
    """TPM 2.0 KDFa (Part 1, 11.4.10.2): SP 800-108 counter mode with HMAC."""
    hfn = ts.HASHES[hash_alg][0]
    out, counter = b"", 0
    while len(out) * 8 < bits:
        counter += 1
        out += hmac.new(key, struct.pack(">I", counter) + label + b"\x00" + context_u
                        + context_v + struct.pack(">I", bits), hfn).digest()
    return out[:(bits + 7) // 8]


def make_credential(ek: ts.Public, ak_name: bytes, credential: bytes) -> tuple[bytes, bytes]:
    """TPM2_MakeCredential in software for an RSA EK -> (TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET)."""
    if ek.type != ts.ALG_RSA or ek.name_alg not in ts.HASHES:
        raise LaminateError("enrollment: only RSA endorsement keys with SHA-2 names are supported")
    hfn, halg = ts.HASHES[ek.name_alg]
    seed = os.urandom(hfn().digest_size)
    secret = ek.public_key().encrypt(seed, padding.OAEP(padding.MGF1(halg()), halg(), b"IDENTITY\x00"))
    sym_bits = 128 if ek.symmetric == ts.ALG_NULL else _sym_bits(ek)
    sym_key = kdfa(ek.name_alg, seed, b"STORAGE", ak_name, b"", sym_bits)
    encryptor = Cipher(algorithms.AES(sym_key), CFB(b"\x00" * 16)).encryptor()
    enc_identity = encryptor.update(struct.pack(">H", len(credential)) + credential) + encryptor.finalize()
    hmac_key = kdfa(ek.name_alg, seed, b"INTEGRITY", b"", b"", hfn().digest_size * 8)
    outer = hmac.new(hmac_key, enc_identity + ak_name, hfn).digest()
    blob = struct.pack(">H", len(outer)) + outer + enc_identity
    return struct.pack(">H", len(blob)) + blob, struct.pack(">H", len(secret)) + secret


def _sym_bits(ek: ts.Public) -> int:
    # TPMT_SYM_DEF_OBJECT keyBits sits right after the algorithm in the parameters.
    offset = 2 + 2 + 4 + 2 + len(ek.auth_policy) + 2
    return struct.unpack(">H", ek.raw[offset:offset + 2])[0]


@dataclass
class Challenge:
    """What the registrar sends to the TPM host, plus what it keeps to check the answer."""
    credential_blob: bytes
    encrypted_secret: bytes
    expected: bytes
    ak_public: bytes
    ek_certificate: bytes


class Registrar:
    """Enrolls AKs: checks the EK certificate, challenges the TPM, issues AK certificates."""

    def __init__(self, ca_key, ca_cert: x509.Certificate, ek_roots, *, validity_days: int = 3650):
        self.ca_key, self.ca_cert = ca_key, ca_cert
        self.ek_roots = [x509.load_pem_x509_certificate(p) if isinstance(p, bytes) else p
                         for p in ek_roots]
        self.validity = dt.timedelta(days=validity_days)

    @classmethod
    def create(cls, ek_roots, name: str = "laminate registrar CA") -> Registrar:
        """A fresh registrar CA (P-256, self-signed)."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                               critical=True)
                .sign(key, hashes.SHA256()))
        return cls(key, cert, ek_roots)

    @property
    def ca_pem(self) -> bytes:
        """The registrar CA certificate as PEM: the root a policy trusts for AK certificates."""
        return self.ca_cert.public_bytes(serialization.Encoding.PEM)

    def challenge(self, ek_chain: list[bytes], ek_public: bytes, ak_public: bytes) -> Challenge:
        """Check the EK certificate and the AK's attributes, then encrypt a fresh secret."""
        ek_cert = x509.load_der_x509_certificate(ek_chain[0])
        if not is_ek_certificate(ek_cert):
            raise LaminateError("enrollment: the first certificate is not an EK certificate")
        reason = verify_chain(ek_cert, [x509.load_der_x509_certificate(d) for d in ek_chain[1:]],
                              self.ek_roots)
        if reason:
            raise LaminateError(f"enrollment: EK certificate: {reason}")
        ek = ts.parse_public(ek_public, "enrollment.ek_public")
        if spki_sha256(ek.public_key()) != spki_sha256(ek_cert.public_key()):
            raise LaminateError("enrollment: EK public area does not match the EK certificate")
        ak = ts.parse_public(ak_public, "enrollment.ak_public")
        if ak.attributes & AK_REQUIRED_ATTRS != AK_REQUIRED_ATTRS or ak.attributes & ts.TPMA_DECRYPT:
            raise LaminateError("enrollment: AK must be a fixedTPM restricted signing key")
        expected = os.urandom(32)
        blob, secret = make_credential(ek, ak.name, expected)
        return Challenge(blob, secret, expected, ak_public, ek_chain[0])

    def complete(self, challenge: Challenge, answer: bytes) -> bytes:
        """Issue the AK certificate (DER) if the TPM recovered the secret."""
        if not hmac.compare_digest(answer, challenge.expected):
            raise LaminateError("enrollment: the TPM did not recover the credential; "
                                "the AK and EK are not in the same TPM")
        ak = ts.parse_public(challenge.ak_public, "enrollment.ak_public")
        ek_cert = x509.load_der_x509_certificate(challenge.ek_certificate)
        subject = x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, AK_SUBJECT_CN),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, EK_REF_PREFIX + spki_sha256(ek_cert.public_key())),
        ])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.ca_cert.subject)
                .public_key(ak.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + self.validity)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                               critical=True)
                .sign(self.ca_key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.DER)


def check_ak_certificate(ak_cert_der: bytes, chain: list[bytes], ak: ts.Public,
                         ek_cert: x509.Certificate, roots) -> str | None:
    """Why the AK certificate does not bind this AK to this EK under `roots`, or None."""
    try:
        cert = x509.load_der_x509_certificate(ak_cert_der)
        issuers = [x509.load_der_x509_certificate(d) for d in chain]
    except CERTIFICATE_ERRORS as exc:
        return f"AK certificate unreadable: {exc}"
    reason = verify_chain(cert, issuers, roots)
    if reason:
        return f"AK certificate: {reason}"
    if spki_sha256(cert.public_key()) != spki_sha256(ak.public_key()):
        return "AK certificate is for another key than the quoting AK"
    refs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)]
    if refs != [EK_REF_PREFIX + spki_sha256(ek_cert.public_key())]:
        return "AK certificate names another EK than the card's EK certificate"
    return None
