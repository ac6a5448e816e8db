"""Verifier for Intel TDX evidence: DCAP quotes v4/v5 (ECDSA P-256) with their collateral.

The certificate and collateral logic - PCK chain and CRLs, the QE report signed by the
PCK, the attestation key bound by the QE report, TCB Info and QE Identity signed by
Intel's TCB signing key, the TCB level match - is the maintained `dcap-qvl` verifier's;
what is written here is the mapping of its verdict and of the TD report onto laminate's
named checks, and the checks dcap-qvl leaves to the caller (reference values, debug,
collateral age, the card's own chain). Without the `tee` extra the checks say so.

The card carries the quote split where the signature data starts: `quote` = header +
TD report body (the bytes the attestation key signs), `signature` = the signature data
(signature, attestation key, QE report, PCK chain); `cert_chain` = the PCK chain
(DER); `extra.collateral` = the dcap-qvl QuoteCollateralV3 fields (TCB Info and QE
Identity as Intel signed them, CRLs as hex DER, issuer chains as PEM).

What a TDX quote proves: the TD's initial image (MRTD), the boot measurements in
RTMR0-2 and whatever software extended into RTMR3, on a TDX module at the reported TCB.
It says nothing about devices outside the TD such as a GPU.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import struct

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from cards.errors import CardFormatError
from cards.tee_layout import HEADER, TD15_BODY, split_tdx_quote
from verifier import gpu_evidence, tee_common, tpm_trust
from verifier.evidence import CERTIFICATE_ERRORS, Quoted
from verifier.result import AFFIRMING, CONTRAINDICATED, SKIPPED, WARNING, Check

MAX_SIGNATURE_DATA = 64 << 10
TD_DEBUG = 1          # TDATTRIBUTES bit 0: the TD is debuggable by the host
COLLATERAL_KEYS = ("pck_crl_issuer_chain", "root_ca_crl", "pck_crl", "tcb_info_issuer_chain",
                   "tcb_info", "tcb_info_signature", "qe_identity_issuer_chain",
                   "qe_identity", "qe_identity_signature")
MAX_COLLATERAL = 256 << 10
Q = "evidence.quote"
_DER = Encoding.DER
C = "evidence.extra.collateral"
# dcap-qvl reports a failure as text; these fragments say which of our checks it is.
_DCAP_REASONS = (("tee_debug", ("debug",)),
                 ("tee_tcb", ("tcb level", "tcb status")),
                 ("collateral", ("expired", "in the future", "fmspc mismatch", "tcb info",
                                 "tcbinfo", "qe identity", "crl", "collateral")),
                 ("cert_chain", ("pck", "certificate", "cert chain", "revoked")))


def _dcap():
    try:
        import dcap_qvl
    except ImportError:
        return None
    return dcap_qvl


def check_evidence(evidence: dict, policy) -> tuple[list, Quoted | None]:
    dcap = _dcap()
    if dcap is None:
        return [Check("quote_signature", CONTRAINDICATED, "evidence.backend",
                      "verifier lacks the tee extra (pip install 'laminate[tee]'): "
                      "cannot check TDX quotes")], None
    quote, signature, extra = (evidence.get(k) for k in ("quote", "signature", "extra"))
    try:
        if not isinstance(extra, dict):
            raise CardFormatError("evidence.extra", "expected a map")
        if not isinstance(quote, bytes) or not isinstance(signature, bytes) \
                or len(quote) > HEADER + 6 + TD15_BODY or len(signature) > MAX_SIGNATURE_DATA:
            raise CardFormatError(Q, "expected the signed header+body and the signature data "
                                     "as byte strings of a TDX quote's sizes")
        raw = quote + struct.pack("<I", len(signature)) + signature
        split_tdx_quote(raw)
        certs = tee_common.load_certificates(evidence.get("cert_chain"), "evidence.cert_chain")
    except CardFormatError as exc:
        return [Check("cert_chain" if "cert_chain" in exc.field else "quote_signature",
                      CONTRAINDICATED, exc.field, exc.reason)], None
    checks, body = check_quote(raw, extra.get("collateral"), certs, policy, dcap)
    if body is None:
        return checks, None
    if "rtmr" in extra:
        checks.append(_rtmr_replay(extra["rtmr"], evidence.get("event_log"), body))
    try:
        quoted = tee_common.quoted_from_report_data(
            body.report_data, extra, "tdx:" + hashlib.sha256(certs[0].public_bytes(
                _DER)).hexdigest()[:32], {})
    except CardFormatError as exc:
        checks.append(Check("quote_signature", CONTRAINDICATED, exc.field, exc.reason))
        return checks, None
    if "gpu" in extra:
        checks += gpu_evidence.check_gpus(extra["gpu"], policy, quoted.qualifying_data)
    return checks, quoted


def check_quote(raw: bytes, collateral, certs, policy, dcap=None):
    """The named checks for one quote, its collateral and its PCK chain under `policy`;
    returns (checks, TD report or None when the quote cannot be trusted)."""
    dcap = dcap or _dcap()
    at = tee_common.verification_time(policy)
    checks = []
    try:
        parsed = dcap.parse_quote(raw)
        embedded = x509.load_pem_x509_certificates(parsed.cert_chain_pem_bytes() or b"")
    except (ValueError, *CERTIFICATE_ERRORS):
        return [Check("quote_signature", CONTRAINDICATED, Q, "not a parsable DCAP quote")], None
    if not embedded:
        return [Check("quote_signature", CONTRAINDICATED, "evidence.signature",
                      "the quote's certification data carries no PCK certificate chain")], None
    checks.append(_chain_check(certs, embedded, policy, at))
    collateral_check, dcap_collateral = _collateral_check(collateral, policy, at, dcap)
    checks.append(collateral_check)
    if collateral_check.status != AFFIRMING:
        checks.append(Check("quote_signature", SKIPPED, "evidence.signature",
                            "not checked: the collateral is not usable now"))
        return checks, None
    root = _issuing_root(embedded[-1], policy.root_certificates)
    if root is None:
        checks.append(Check("quote_signature", SKIPPED, "evidence.signature",
                            "not checked: the policy trusts no root for this PCK chain"))
        return checks, None
    try:
        verdict = dcap.verify_with_root_ca(raw, dcap_collateral, root.public_bytes(_DER),
                                           int(at.timestamp()))
    except ValueError as exc:
        checks.append(_dcap_failure(str(exc)))
        return checks, None
    checks.append(Check("quote_signature", AFFIRMING, "evidence.signature",
                        f"TDX quote v{parsed.header.version} signed by an attestation key the "
                        "Intel-certified quoting enclave vouches for (dcap-qvl)"))
    body = parsed.report
    checks.append(tee_common.tcb_check(verdict.status, list(verdict.advisory_ids), policy,
                                       f"{C}.tcb_info", "TDX"))
    checks.append(_measurements(body, policy))
    checks.append(debug_check(body.td_attributes))
    return checks, body


def debug_check(td_attributes: bytes) -> Check:
    if int.from_bytes(td_attributes, "little") & TD_DEBUG:
        return Check("tee_debug", CONTRAINDICATED, f"{Q}.td_attributes",
                     "TD is debuggable (TDATTRIBUTES.DEBUG): the host can read and "
                     "change its memory and registers")
    return Check("tee_debug", AFFIRMING, f"{Q}.td_attributes",
                 f"debugging disabled (TDATTRIBUTES {td_attributes.hex()})")


def _issuing_root(last, roots):
    """The trusted root that is, or signed, the chain's last certificate (a test root may
    share the Intel root's name; only the signature tells them apart)."""
    for root in roots:
        if root == last:
            return root
        try:
            if root.subject == last.issuer:
                last.verify_directly_issued_by(root)
                return root
        except (InvalidSignature, *CERTIFICATE_ERRORS):
            continue
    return None


def _measurements(body, policy) -> Check:
    ref = policy.reference_values.tdx
    check = tee_common.measurement_check("MRTD", body.mr_td, ref.mrtd, policy, f"{Q}.mr_td")
    if check.status != AFFIRMING:
        return check
    for index, pinned in ref.rtmr.items():
        value = getattr(body, f"rt_mr{index}")
        check = tee_common.measurement_check(f"RTMR{index}", value, pinned, policy,
                                             f"{Q}.rtmr{index}")
        if check.status != AFFIRMING:
            return check
    names = "MRTD" + "".join(f", RTMR{i}" for i in ref.rtmr)
    return Check("tee_measurement", AFFIRMING, f"{Q}.mr_td",
                 f"{names} are reference values of policy {policy.policy_id}")


def _chain_check(certs, embedded, policy, at) -> Check:
    field = "evidence.cert_chain"
    if [c.public_bytes(_DER) for c in certs] != [c.public_bytes(_DER) for c in embedded]:
        return Check("cert_chain", CONTRAINDICATED, field,
                     "differs from the PCK chain in the quote's certification data")
    reason = tpm_trust.verify_chain(certs[0], certs[1:], policy.root_certificates, at=at)
    if reason:
        return Check("cert_chain", CONTRAINDICATED, field, f"PCK certificate: {reason} "
                     f"(policy {policy.policy_id})")
    return Check("cert_chain", AFFIRMING, field,
                 f"PCK certificate chains to an Intel root trusted by policy {policy.policy_id}")


def _collateral_check(collateral, policy, at, dcap):
    """Structure, freshness and age of the collateral -> (check, dcap collateral | None)."""
    if not isinstance(collateral, dict) or set(collateral) != set(COLLATERAL_KEYS) \
            or not all(isinstance(v, str) for v in collateral.values()) \
            or sum(map(len, collateral.values())) > MAX_COLLATERAL:
        return Check("collateral", CONTRAINDICATED, C,
                     f"expected a map of {len(COLLATERAL_KEYS)} strings "
                     f"({', '.join(COLLATERAL_KEYS)})"), None
    try:
        dated = [(f"{C}.{k}", json.loads(collateral[k])) for k in ("tcb_info", "qe_identity")]
        dated = [(f, _time(d["issueDate"]), _time(d["nextUpdate"])) for f, d in dated]
        for k in ("pck_crl", "root_ca_crl"):
            crl = x509.load_der_x509_crl(bytes.fromhex(collateral[k]))
            dated.append((f"{C}.{k}", crl.last_update_utc, crl.next_update_utc))
        converted = dcap.QuoteCollateralV3.from_json(json.dumps(collateral))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return Check("collateral", CONTRAINDICATED, C,
                     f"unreadable collateral ({type(exc).__name__})"), None
    max_age = policy.tee.max_collateral_age_days
    for field, issued, next_update in dated:
        if next_update is None or at > next_update:
            return Check("collateral", CONTRAINDICATED, field,
                         f"expired: next update was due {next_update:%Y-%m-%dT%H:%M:%SZ}, "
                         f"verification time is {at:%Y-%m-%dT%H:%M:%SZ}"), converted
        if at < issued:
            return Check("collateral", CONTRAINDICATED, field,
                         f"issued {issued:%Y-%m-%dT%H:%M:%SZ}, after the verification time"), converted
        if max_age is not None and at - issued > dt.timedelta(days=max_age):
            return Check("collateral", CONTRAINDICATED, field,
                         f"issued {issued:%Y-%m-%d}, older than the {max_age:g} days policy "
                         f"{policy.policy_id} accepts"), converted
    return Check("collateral", AFFIRMING, C,
                 f"TCB Info, QE Identity and CRLs current at {at:%Y-%m-%dT%H:%M:%SZ}"), converted


def _dcap_failure(message: str) -> Check:
    text = " ".join(message.split())[:300]
    lower = text.lower()
    for name, fragments in _DCAP_REASONS:
        if any(f in lower for f in fragments):
            field = {"tee_debug": f"{Q}.td_attributes", "tee_tcb": f"{C}.tcb_info",
                     "collateral": C, "cert_chain": "evidence.cert_chain"}[name]
            return Check(name, CONTRAINDICATED, field, f"dcap-qvl: {text}")
    return Check("quote_signature", CONTRAINDICATED, "evidence.signature", f"dcap-qvl: {text}")


def _rtmr_replay(rtmr, log, body) -> Check:
    """Replay the event digests into an RTMR: RTMR = SHA-384(RTMR || digest padded to 48)."""
    field = "evidence.extra.rtmr"
    if not isinstance(rtmr, dict) or rtmr.get("index") not in (2, 3) \
            or not isinstance(rtmr.get("base"), bytes) or len(rtmr["base"]) != 48 \
            or not isinstance(log, list):
        return Check("rtmr_replay", CONTRAINDICATED, field,
                     "expected {index: 2 or 3, base: 48 bytes} and an event log")
    value = rtmr["base"]
    for event in log:
        digest = event.get("digest") if isinstance(event, dict) else None
        if not isinstance(digest, bytes):
            return Check("rtmr_replay", CONTRAINDICATED, "evidence.event_log", "event without digest")
        value = hashlib.sha384(value + digest.ljust(48, b"\0")).digest()
    if value != getattr(body, f"rt_mr{rtmr['index']}"):
        return Check("rtmr_replay", CONTRAINDICATED, f"{Q}.rtmr{rtmr['index']}",
                     f"replaying {len(log)} events from the recorded base does not reproduce "
                     f"RTMR{rtmr['index']}")
    return Check("rtmr_replay", AFFIRMING, f"{Q}.rtmr{rtmr['index']}",
                 f"{len(log)} events replay into RTMR{rtmr['index']}")


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))

__all__ = ["WARNING", "check_evidence", "check_quote"]
