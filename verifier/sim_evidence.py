"""Verifier for the software simulator's evidence (FORMAT.md, QuoteInfo).

The simulator's root CA is a test root: this code checks the evidence exactly as it
would check real hardware, and the trust decision is left to the policy (which must
both allow backend `sim` and list the simulator's root).
"""
from __future__ import annotations

import datetime
import hashlib
import operator
from dataclasses import dataclass
from functools import lru_cache

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cards import cbor, cose
from cards.errors import CardFormatError
from verifier.evidence import CERTIFICATE_ERRORS, Quoted
from verifier.result import AFFIRMING, CONTRAINDICATED, SKIPPED, Check

_QUOTE_FIELDS = {"version": int, "backend": str, "device_id": str, "registers": list,
                 "register_digest": bytes, "qualifying_data": bytes, "counter": int,
                 "reset_count": int, "clock_ms": int}
_QUOTE_TYPES = tuple(_QUOTE_FIELDS.values())
_INT_ONLY = frozenset({int})
_REGISTER_COUNT = 24


def check_evidence(evidence: dict, policy) -> tuple[list, Quoted | None]:
    """Check the simulator's evidence: the certificate chain to a trusted root, then
    the quote's P-256 signature by the certified attestation key, then the quote's fields.
    Returns (checks, Quoted) or (checks, None) when the quote cannot be trusted; every
    problem is a check, never an exception."""
    chain = evidence.get("cert_chain") or []
    chain_check, ak = _check_chain(chain, policy)
    checks = [chain_check]
    if ak is None:
        checks.append(Check("quote_signature", SKIPPED, "evidence.signature",
                            "not checked: no usable attestation key certificate"))
        return checks, None
    quote, signature = evidence.get("quote", b""), evidence.get("signature", b"")
    problem = _verify_quote_signature(ak.key, quote, signature)
    if problem:
        checks.append(Check("quote_signature", CONTRAINDICATED, "evidence.signature", problem))
        return checks, None
    try:
        quoted = _parse_quote(quote)
    except CardFormatError as exc:
        checks.append(Check("quote_signature", CONTRAINDICATED, exc.field, exc.reason))
        return checks, None
    if quoted.device != ak.device_id:
        checks.append(Check("quote_signature", CONTRAINDICATED, "evidence.quote.device_id",
                            f"quote names device {quoted.device} but is signed by the key of "
                            f"device {ak.device_id}"))
        return checks, None
    checks.append(Check("quote_signature", AFFIRMING, "evidence.signature",
                        f"quote signed by the attestation key of sim device {quoted.device}"))
    return checks, quoted


@dataclass(frozen=True)
class _AK:
    cert: x509.Certificate
    key: ec.EllipticCurvePublicKey
    device_id: str      # the simulator names a device "sim-" + H(AK SPKI)[:16 hex]


@lru_cache(maxsize=256)
def _load_ak(ak_der: bytes) -> _AK | str:
    """Parse an AK certificate once per distinct DER (a service sees few devices)."""
    try:
        cert = x509.load_der_x509_certificate(ak_der)
        key = cert.public_key()
    except UnsupportedAlgorithm:
        return "attestation key is not an ECDSA P-256 key"
    except CERTIFICATE_ERRORS:
        return "attestation key certificate is not valid DER X.509"
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        return "attestation key is not an ECDSA P-256 key"
    spki = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return _AK(cert, key, "sim-" + hashlib.sha256(spki).hexdigest()[:16])


def _check_chain(chain, policy):
    """Return (cert_chain check, AK or None). The AK is returned even when the chain is
    untrusted, so the quote signature is still reported on its own."""
    field = "evidence.cert_chain"
    if len(chain) != 2 or not all(isinstance(c, bytes) for c in chain):
        return Check("cert_chain", CONTRAINDICATED, field,
                     f"expected [AK certificate, root certificate], got {len(chain)} entries"), None
    ak_der, root_der = chain
    ak = _load_ak(ak_der)
    if isinstance(ak, str):
        return Check("cert_chain", CONTRAINDICATED, field + "[0]", ak), None
    now = datetime.datetime.now(datetime.timezone.utc)
    cached = policy.cache.get(("sim_chain", ak_der, root_der))
    if cached is not None and now <= cached[1]:
        return cached[0], ak
    check = _validate_chain(ak.cert, root_der, policy, now)
    if check.status == AFFIRMING:  # a success holds until the first certificate expires
        root = x509.load_der_x509_certificate(root_der)
        until = min(ak.cert.not_valid_after_utc, root.not_valid_after_utc)
        policy.cache[("sim_chain", ak_der, root_der)] = (check, until)
    return check, ak


def _validate_chain(ak, root_der, policy, now) -> Check:
    field = "evidence.cert_chain"
    if root_der not in policy.root_ders:
        return Check("cert_chain", CONTRAINDICATED, field + "[1]",
                     f"root certificate is not trusted by policy {policy.policy_id}")
    root = x509.load_der_x509_certificate(root_der)
    try:
        ak.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        return Check("cert_chain", CONTRAINDICATED, field + "[0]",
                     "attestation key certificate is not issued by the trusted root")
    for index, cert in ((0, ak), (1, root)):
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return Check("cert_chain", CONTRAINDICATED, f"{field}[{index}]",
                         f"certificate not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d}"
                         f" to {cert.not_valid_after_utc:%Y-%m-%d})")
    subject = ak.subject.rfc4514_string()
    return Check("cert_chain", AFFIRMING, field,
                 f"attestation key certificate ({subject}) issued by a root trusted by "
                 f"policy {policy.policy_id}")


def _verify_quote_signature(ak_key, quote, signature) -> str | None:
    if not isinstance(quote, bytes) or not isinstance(signature, bytes):
        return "quote and signature must be byte strings"
    if len(signature) != 64:
        return f"ES256 signature must be 64 bytes (raw r||s), got {len(signature)}"
    if not cose.verify_bytes(ak_key, cose.ALG_ES256, quote, signature):
        return "quote signature does not verify with the attestation key"
    return None


def _parse_quote(quote: bytes) -> Quoted:
    info = cbor.loads(quote, deterministic=True, field="evidence.quote")
    if not isinstance(info, dict):
        raise CardFormatError("evidence.quote", "signed quote is not a map")
    if tuple(map(type, map(info.get, _QUOTE_FIELDS))) != _QUOTE_TYPES:  # name the first
        for key, kind in _QUOTE_FIELDS.items():
            value = info.get(key)
            if type(value) is not kind:
                raise CardFormatError(f"evidence.quote.{key}",
                                      f"expected {kind.__name__}, got {type(value).__name__}")
    if len(info) != len(_QUOTE_FIELDS):
        extra = set(info) - set(_QUOTE_FIELDS)
        raise CardFormatError("evidence.quote", f"unknown field {sorted(map(str, extra))[0]}")
    if info["version"] != 1 or info["backend"] != "sim":
        raise CardFormatError("evidence.quote", "not a version 1 sim quote")
    regs = info["registers"]
    if not (regs and _INT_ONLY.issuperset(map(type, regs)) and regs[0] >= 0
            and regs[-1] < _REGISTER_COUNT and all(map(operator.lt, regs, regs[1:]))):
        raise CardFormatError("evidence.quote.registers",
                              "must be distinct register indices 0-23 in ascending order")
    for key in ("register_digest", "qualifying_data"):
        if len(info[key]) != 32:
            raise CardFormatError(f"evidence.quote.{key}", "must be 32 bytes")
    return Quoted(registers=list(regs), register_digest=info["register_digest"],
                  qualifying_data=info["qualifying_data"], device=info["device_id"],
                  clock={"counter": info["counter"], "reset_count": info["reset_count"],
                         "clock_ms": info["clock_ms"]})
