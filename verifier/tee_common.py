"""What the TDX and SEV-SNP verifiers share: the fixed "now", the report-data binding,
certificate loading and the mapping of a TCB status onto an appraisal status.

Report data. A TEE signs 64 bytes of caller data. laminate's TEE backends put
H(dcbor(claims)) in the first 32 and H(registers) - the digest of the software
registers the event log was replayed into, as in the simulator's quote - in the last
32, so the same qualifying_data and log_replay checks apply as to every other backend.
"""
from __future__ import annotations

import datetime as dt
import warnings

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

from cards.errors import CardFormatError
from verifier.evidence import CERTIFICATE_ERRORS, Quoted
from verifier.result import AFFIRMING, CONTRAINDICATED, WARNING, Check

MAX_CHAIN_CERTS = 6
MAX_CERT_BYTES = 16 << 10

# Intel's TCB statuses (TCB Info v3); AMD has no status service offline, an SNP TCB
# below the policy's minimum is reported as OutOfDate.
UP_TO_DATE = "UpToDate"
TCB_WARNING = ("SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded")
TCB_REFUSED = ("OutOfDate", "OutOfDateConfigurationNeeded", "Revoked")
TCB_STATUSES = (UP_TO_DATE, *TCB_WARNING, *TCB_REFUSED)


def verification_time(policy) -> dt.datetime:
    """The policy's fixed "now" for offline verification, else the clock."""
    at = getattr(policy, "verification_time", None)
    return at if at is not None else dt.datetime.now(dt.timezone.utc)


def load_certificates(chain, field: str) -> list[x509.Certificate]:
    """DER certificates from the card; AMD's VCEKs have serial number 0, which RFC 5280
    forbids and `cryptography` loads with a deprecation warning - accepted here, as
    every AMD part issues them so."""
    if not isinstance(chain, list) or not 1 <= len(chain) <= MAX_CHAIN_CERTS \
            or not all(isinstance(c, bytes) and len(c) <= MAX_CERT_BYTES for c in chain):
        raise CardFormatError(field, f"expected 1 to {MAX_CHAIN_CERTS} DER certificates")
    certs = []
    for i, der in enumerate(chain):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                cert = x509.load_der_x509_certificate(der)
                cert.public_key()
        except CERTIFICATE_ERRORS:
            raise CardFormatError(f"{field}[{i}]", "not a DER X.509 certificate") from None
        certs.append(cert)
    return certs


def tcb_check(status: str, advisories, policy, field: str, source: str) -> Check:
    """Map a TCB status onto affirming / warning / contraindicated under the policy."""
    allowed = policy.tee.allowed_tcb_status
    notes = f" (advisories: {', '.join(advisories)})" if advisories else ""
    if status == UP_TO_DATE and status in allowed:
        return Check("tee_tcb", AFFIRMING, field, f"{source}: TCB status UpToDate{notes}")
    if status in TCB_WARNING and status in allowed:
        return Check("tee_tcb", WARNING, field,
                     f"{source}: TCB status {status}{notes}: allowed by policy "
                     f"{policy.policy_id}, but the platform needs an update or configuration")
    return Check("tee_tcb", CONTRAINDICATED, field,
                 f"{source}: TCB status {status}{notes} is not allowed by policy {policy.policy_id}")


def measurement_check(name: str, value: bytes, pinned: tuple, policy, field: str) -> Check:
    """A measurement register against the policy's reference values (hex, lower case)."""
    got = value.hex()
    if got in pinned:
        return Check("tee_measurement", AFFIRMING, field,
                     f"{name} {got[:16]}... is a reference value of policy {policy.policy_id}")
    if not pinned:
        return Check("tee_measurement", CONTRAINDICATED, field,
                     f"policy {policy.policy_id} pins no {name} reference values; "
                     f"{name} {got[:16]}... is unknown")
    return Check("tee_measurement", CONTRAINDICATED, field,
                 f"{name} {got[:16]}... is not a reference value of policy {policy.policy_id}")


def quoted_from_report_data(report_data: bytes, extra: dict, device: str, clock: dict) -> Quoted:
    """The backend-independent facts: report_data = H(claims) || H(registers)."""
    registers = extra.get("registers")
    if not (isinstance(registers, list) and registers
            and all(type(r) is int and 0 <= r <= 23 for r in registers)
            and registers == sorted(set(registers))):
        raise CardFormatError("evidence.extra.registers",
                              "expected distinct register indices 0-23 in ascending order")
    if len(report_data) != 64:
        raise CardFormatError("evidence.quote.report_data", "must be 64 bytes")
    return Quoted(registers=list(registers), register_digest=report_data[32:],
                  qualifying_data=report_data[:32], device=device, clock=clock)
