"""Verifier for AMD SEV-SNP evidence (attest/tsm_backend.py produces it).

The attestation report (SEV-SNP firmware ABI, ATTESTATION_REPORT, 0x4A0 bytes) is
signed by the chip's VCEK (or a cloud's VLEK) with ECDSA P-384/SHA-384 over bytes
0..0x29F; the VCEK chains through the ASK (VLEK: ASVK) to AMD's ARK with RSA-PSS. The
card carries the report split where the signature starts: `quote` = the signed bytes,
`signature` = the signature block, `cert_chain` = [VCEK, ASK, ARK] (DER).

Checks, each on its own line:
- cert_chain: VCEK -> ASK -> a root the policy trusts (an AMD ARK), valid at the
  verification time;
- quote_signature: the report's signature by that VCEK; a VCEK also names the chip
  (hwID), which must be the report's CHIP_ID;
- tee_tcb: REPORTED_TCB is the TCB the VCEK was issued for (a VCEK is derived per TCB),
  and at least the policy's `reference_values.snp.min_tcb`;
- tee_measurement: MEASUREMENT (the launch digest) is pinned by the policy;
- tee_debug: the guest policy's DEBUG bit is clear (a debug guest's memory is open to
  the host, so nothing measured in it can be trusted).
What the report does not show: anything that ran after launch, unless that software
measured it (laminate binds its event log through report data, see tee_common.py).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from cards.errors import CardFormatError
from verifier import gpu_evidence, tee_common, tpm_trust
from verifier.evidence import Quoted
from verifier.result import AFFIRMING, CONTRAINDICATED, SKIPPED, Check

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
POLICY_DEBUG = 1 << 19
SIGNING_KEYS = {0: "VCEK", 1: "VLEK"}
_AMD = "1.3.6.1.4.1.3704.1."
_TCB_OIDS = {"bootloader": _AMD + "3.1", "tee": _AMD + "3.2", "snp": _AMD + "3.3",
             "microcode": _AMD + "3.8", "fmc": _AMD + "3.9"}
_HWID_OID = _AMD + "4"
Q = "evidence.quote"


@dataclass(frozen=True)
class SnpReport:
    version: int
    guest_policy: int
    vmpl: int
    signature_algo: int
    signing_key: int
    mask_chip_id: bool
    report_data: bytes
    measurement: bytes
    reported_tcb: bytes
    cpuid_family: int
    chip_id: bytes
    signed: bytes
    r: int
    s: int

    def tcb(self) -> dict:
        """REPORTED_TCB's SVNs by name (Turin, family 1Ah, added FMC and moved the rest)."""
        b = self.reported_tcb
        if self.cpuid_family == 0x1A:
            return {"fmc": b[0], "bootloader": b[1], "tee": b[2], "snp": b[3], "microcode": b[7]}
        return {"bootloader": b[0], "tee": b[1], "snp": b[6], "microcode": b[7]}


def parse_report(raw) -> SnpReport:
    if not isinstance(raw, bytes) or len(raw) != REPORT_SIZE:
        got = len(raw) if isinstance(raw, bytes) else type(raw).__name__
        raise CardFormatError(Q, f"an SNP attestation report is {REPORT_SIZE} bytes, got {got}")
    version, _, guest_policy = struct.unpack_from("<IIQ", raw, 0)
    vmpl, algo = struct.unpack_from("<II", raw, 0x30)
    flags = struct.unpack_from("<I", raw, 0x48)[0]
    if version < 2:
        raise CardFormatError(f"{Q}.version", f"report version {version} is not supported (2+)")
    return SnpReport(
        version=version, guest_policy=guest_policy, vmpl=vmpl, signature_algo=algo,
        signing_key=(flags >> 2) & 7, mask_chip_id=bool(flags & 2),
        report_data=raw[0x50:0x90], measurement=raw[0x90:0xC0], reported_tcb=raw[0x180:0x188],
        cpuid_family=raw[0x188] if version >= 3 else 0, chip_id=raw[0x1A0:0x1E0],
        signed=raw[:SIGNED_SIZE], r=int.from_bytes(raw[0x2A0:0x2E8], "little"),
        s=int.from_bytes(raw[0x2E8:0x330], "little"))


def check_report(raw: bytes, certs: list, policy) -> tuple[list, SnpReport | None]:
    """The named checks for one report and its [VCEK, ASK, ARK] chain under `policy`."""
    checks = [_chain_check(certs, policy)]
    try:
        report = parse_report(raw)
    except CardFormatError as exc:
        checks.append(Check("quote_signature", CONTRAINDICATED, exc.field, exc.reason))
        return checks, None
    problem = _signature_problem(report, certs[0])
    if problem:
        checks.append(Check("quote_signature", CONTRAINDICATED, *problem))
        return checks, None
    signer = SIGNING_KEYS.get(report.signing_key, "?")
    checks.append(Check("quote_signature", AFFIRMING, "evidence.signature",
                        f"SNP report v{report.version} (VMPL {report.vmpl}) signed by the "
                        f"{signer} in evidence.cert_chain[0]"))
    checks.append(_tcb_check(report, certs[0], policy))
    checks.append(tee_common.measurement_check(
        "MEASUREMENT", report.measurement, policy.reference_values.snp.measurement, policy,
        f"{Q}.measurement"))
    if report.guest_policy & POLICY_DEBUG:
        checks.append(Check("tee_debug", CONTRAINDICATED, f"{Q}.policy",
                            "guest policy allows debugging (bit 19): the host can read and "
                            "change the guest's memory"))
    else:
        checks.append(Check("tee_debug", AFFIRMING, f"{Q}.policy",
                            f"debugging disabled (guest policy 0x{report.guest_policy:x})"))
    return checks, report


def check_evidence(evidence: dict, policy) -> tuple[list, Quoted | None]:
    quote, signature = evidence.get("quote"), evidence.get("signature")
    extra = evidence.get("extra")
    try:
        if not isinstance(extra, dict):
            raise CardFormatError("evidence.extra", "expected a map")
        certs = tee_common.load_certificates(evidence.get("cert_chain"), "evidence.cert_chain")
        if not isinstance(quote, bytes) or not isinstance(signature, bytes) \
                or len(quote) != SIGNED_SIZE or len(signature) != REPORT_SIZE - SIGNED_SIZE:
            raise CardFormatError(Q, f"expected the report's {SIGNED_SIZE} signed bytes in "
                                     f"quote and its {REPORT_SIZE - SIGNED_SIZE}-byte signature block")
    except CardFormatError as exc:
        return [Check("cert_chain" if "cert_chain" in exc.field else "quote_signature",
                      CONTRAINDICATED, exc.field, exc.reason)], None
    checks, report = check_report(quote + signature, certs, policy)
    if report is None:
        return checks, None
    try:
        quoted = tee_common.quoted_from_report_data(
            report.report_data, extra, "snp:" + report.chip_id[:16].hex(), {})
    except CardFormatError as exc:
        checks.append(Check("quote_signature", CONTRAINDICATED, exc.field, exc.reason))
        return checks, None
    if "gpu" in extra:
        checks += gpu_evidence.check_gpus(extra["gpu"], policy, quoted.qualifying_data)
    return checks, quoted


def _chain_check(certs, policy) -> Check:
    field = "evidence.cert_chain"
    if tpm_trust._is_ca(certs[0]):     # the ASK in first place would sign nothing
        return Check("cert_chain", CONTRAINDICATED, field + "[0]",
                     "the first certificate is a CA, not the VCEK/VLEK that signs reports")
    reason = tpm_trust.verify_chain(certs[0], certs[1:], policy.root_certificates,
                                    at=tee_common.verification_time(policy))
    if reason:
        return Check("cert_chain", CONTRAINDICATED, field,
                     f"VCEK: {reason} (policy {policy.policy_id})")
    return Check("cert_chain", AFFIRMING, field,
                 f"{certs[0].subject.rfc4514_string()} chains to an AMD root trusted by "
                 f"policy {policy.policy_id}")


def _signature_problem(report: SnpReport, vcek) -> tuple[str, str] | None:
    if report.signature_algo != 1:
        return f"{Q}.signature_algo", f"algorithm {report.signature_algo} is not ECDSA P-384 (1)"
    key = vcek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        return "evidence.cert_chain[0]", "the VCEK is not an ECDSA P-384 key"
    try:
        key.verify(encode_dss_signature(report.r, report.s), report.signed,
                   ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        return "evidence.signature", "the report signature does not verify with the VCEK"
    if report.signing_key == 0 and not report.mask_chip_id:
        hwid = _extension(vcek, _HWID_OID)
        if hwid is not None and hwid != report.chip_id:
            return f"{Q}.chip_id", "CHIP_ID is not the chip the VCEK was issued to (hwID)"
    return None


def _tcb_check(report: SnpReport, vcek, policy) -> Check:
    field = f"{Q}.reported_tcb"
    reported = report.tcb()
    for part, svn in reported.items():
        certified = _extension(vcek, _TCB_OIDS[part])
        if certified is not None and _der_int(certified) != svn:
            return Check("tee_tcb", CONTRAINDICATED, field,
                         f"reported {part} SVN {svn}, but the VCEK was issued for "
                         f"{_der_int(certified)}: the report and key disagree on the TCB")
    low = [f"{p} {reported.get(p)} < {m}" for p, m in policy.reference_values.snp.min_tcb.items()
           if reported.get(p, 0) < m]
    if low:
        return tee_common.tcb_check("OutOfDate", [], policy, field,
                                    "SNP TCB below the policy minimum (" + ", ".join(low) + ")")
    svns = ", ".join(f"{p} {v}" for p, v in reported.items())
    return tee_common.tcb_check(tee_common.UP_TO_DATE, [], policy, field,
                                f"SNP reported TCB ({svns}) matches the signing key and meets the policy")


def _extension(cert: x509.Certificate, oid: str) -> bytes | None:
    """An AMD extension's value, the outer OCTET STRING of a hwID unwrapped."""
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid)).value
    except x509.ExtensionNotFound:
        return None
    if not isinstance(ext, x509.UnrecognizedExtension):
        return None
    value = ext.value
    if oid == _HWID_OID and len(value) == 66 and value[:2] == b"\x04\x40":
        return value[2:]
    return value


def _der_int(value: bytes) -> int:
    """A small DER INTEGER (tag 2, short length) as AMD encodes the SPL extensions."""
    if len(value) >= 3 and value[0] == 2 and value[1] == len(value) - 2:
        return int.from_bytes(value[2:], "big", signed=True)
    return -1


__all__ = ["SKIPPED", "check_evidence", "check_report", "parse_report"]
