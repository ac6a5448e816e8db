"""Verifier for TPM 2.0 evidence (attest/tpm_backend.py produces it).

Checks, each reported on its own:
- cert_chain: the EK certificate chains to a root the policy trusts (a manufacturer
  root in production, the swtpm local CA in tests);
- quote_signature: the AK is a fixedTPM restricted signing key, bound to that EK by a
  registrar's AK certificate (credential activation at enrollment, see tpm_trust.py),
  its TPMT_SIGNATURE verifies over the TPMS_ATTEST bytes, and the TPMS_ATTEST says
  TPM_GENERATED_VALUE and TPM_ST_ATTEST_QUOTE. The magic matters: a restricted key only
  signs data starting with it when the TPM itself produced the data;
- pcr_selection: one SHA-256 bank, exactly the PCRs the card's register map names;
- tpm_clock: `safe` = 1 (the TPM never reported a later clock, Keylime's check).
The qualifying data (extraData) and the PCR digest go out in `Quoted` for the
backend-independent qualifying_data and log_replay checks.

Reset and restart counters must never go backwards across quotes of one TPM; a one-shot
verification holds one quote, so `check_clock_sequence` checks a series (the service
keeps the series).
"""
from __future__ import annotations

from cryptography import x509

from cards.errors import CardFormatError
from verifier import tpm_structs as ts
from verifier import tpm_trust
from verifier.evidence import CERTIFICATE_ERRORS, Quoted
from verifier.result import AFFIRMING, CONTRAINDICATED, SKIPPED, Check


def check_evidence(evidence: dict, policy) -> tuple[list, Quoted | None]:
    """Check TPM evidence: the EK chain, the AK's binding to the EK, the quote's
    signature by the AK and its magic value, its PCR selection and clock's safe flag.
    Returns (checks, Quoted) or (checks, None) when the quote cannot be trusted;
    malformed evidence is a check, never an exception."""
    checks: list[Check] = []
    ek_cert = _check_ek_chain(evidence.get("cert_chain"), policy, checks)
    extra = evidence.get("extra")
    try:
        if not isinstance(extra, dict):
            raise CardFormatError("evidence.extra", "expected a map")
        ak = _check_ak(extra)
        attest = ts.parse_attest(evidence.get("quote"))
        signature = ts.parse_signature(evidence.get("signature"))
        registers = _register_map(extra.get("pcr_map"))
    except CardFormatError as exc:
        checks.append(Check("quote_signature", CONTRAINDICATED, exc.field, exc.reason))
        return checks, None

    problem = _binding_problem(extra.get("binding"), ak, ek_cert, policy)
    if problem:
        checks.append(Check("quote_signature", CONTRAINDICATED, *problem))
        return checks, None
    if not ts.verify_signature(ak, signature, evidence["quote"]):
        checks.append(Check("quote_signature", CONTRAINDICATED, "evidence.signature",
                            "TPMT_SIGNATURE does not verify with the attestation key over "
                            "the TPMS_ATTEST bytes"))
        return checks, None
    if attest.magic != ts.TPM_GENERATED_VALUE:
        checks.append(Check("quote_signature", CONTRAINDICATED, "evidence.quote.magic",
                            f"0x{attest.magic:08x} is not TPM_GENERATED_VALUE: the TPM did "
                            "not produce this structure"))
        return checks, None
    checks.append(Check("quote_signature", AFFIRMING, "evidence.signature",
                        f"TPM quote signed by attestation key {ak.name.hex()[:20]}…, "
                        "enrolled for this EK by a trusted registrar"))

    pcrs = [pcr for _, pcr in registers]
    if len(attest.pcr_select) != 1 or attest.pcr_select[0].hash_alg != ts.ALG_SHA256 \
            or list(attest.pcr_select[0].pcrs) != pcrs:
        got = [(f"0x{b.hash_alg:04x}", list(b.pcrs)) for b in attest.pcr_select]
        checks.append(Check("pcr_selection", CONTRAINDICATED, "evidence.quote.pcrSelect",
                            f"quote selects {got}, the card's register map needs sha256 PCRs {pcrs}"))
        return checks, None
    checks.append(Check("pcr_selection", AFFIRMING, "evidence.quote.pcrSelect",
                        f"SHA-256 PCRs {pcrs} for registers {[r for r, _ in registers]}"))
    if attest.safe != 1:
        checks.append(Check("tpm_clock", CONTRAINDICATED, "evidence.quote.clockInfo.safe",
                            "safe = 0: the TPM may have reported a later clock before"))
    else:
        checks.append(Check("tpm_clock", AFFIRMING, "evidence.quote.clockInfo",
                            f"safe = 1, resetCount {attest.reset_count}, restartCount "
                            f"{attest.restart_count}"))
    device = "tpm:" + tpm_trust.spki_sha256(ek_cert.public_key()) if ek_cert else "tpm:unknown-ek"
    return checks, Quoted(registers=[r for r, _ in registers], register_digest=attest.pcr_digest,
                          qualifying_data=attest.extra_data, device=device,
                          clock=attest.clock_info())


def _check_ek_chain(chain, policy, checks) -> x509.Certificate | None:
    """Append the cert_chain check; return the EK certificate when it is readable."""
    field = "evidence.cert_chain"
    if not isinstance(chain, list) or not chain or not all(isinstance(c, bytes) for c in chain):
        checks.append(Check("cert_chain", CONTRAINDICATED, field,
                            "expected [EK certificate, issuers...] as DER byte strings"))
        return None
    try:
        certs = [x509.load_der_x509_certificate(c) for c in chain]
        certs[0].public_key()  # the device is named by its hash
        is_ek = tpm_trust.is_ek_certificate(certs[0])
    except CERTIFICATE_ERRORS:
        checks.append(Check("cert_chain", CONTRAINDICATED, field, "not DER X.509 certificates"))
        return None
    if not is_ek:
        checks.append(Check("cert_chain", CONTRAINDICATED, field + "[0]",
                            "first certificate is not an EK certificate (must be a non-CA "
                            "certificate with the tcg-kp-EKCertificate extended key usage)"))
        return None
    key = ("tpm_chain", tuple(chain))
    cached = policy.cache.get(key)
    if cached is None:
        reason = tpm_trust.verify_chain(certs[0], certs[1:], policy.root_certificates)
        if reason:
            cached = Check("cert_chain", CONTRAINDICATED, field,
                           f"EK certificate: {reason} (policy {policy.policy_id})")
        else:
            cached = Check("cert_chain", AFFIRMING, field,
                           f"EK certificate chains to a root trusted by policy {policy.policy_id}")
            policy.cache[key] = cached
    checks.append(cached)
    return certs[0]


def _check_ak(extra: dict) -> ts.Public:
    ak = ts.parse_public(extra.get("ak_public"), "evidence.extra.ak_public")
    ak.public_key()  # a malformed key or name algorithm is a format error here, not later
    name = ak.name
    attrs = ak.attributes
    if attrs & tpm_trust.AK_REQUIRED_ATTRS != tpm_trust.AK_REQUIRED_ATTRS or attrs & ts.TPMA_DECRYPT:
        raise CardFormatError("evidence.extra.ak_public.objectAttributes",
                              "the AK must be a fixedTPM, restricted signing key")
    if extra.get("ak_name") is not None and extra["ak_name"] != name:
        raise CardFormatError("evidence.extra.ak_name", "does not match the AK public area")
    return ak


def _register_map(value) -> list[tuple[int, int]]:
    field = "evidence.extra.pcr_map"
    ok = isinstance(value, list) and value and all(
        isinstance(p, list) and len(p) == 2 and all(type(v) is int and 0 <= v <= 23 for v in p)
        for p in value)
    if not ok:
        raise CardFormatError(field, "expected [[register, pcr], ...] with indices 0..23")
    pairs = [tuple(p) for p in value]
    regs, pcrs = [r for r, _ in pairs], [p for _, p in pairs]
    if regs != sorted(set(regs)) or pcrs != sorted(set(pcrs)):
        raise CardFormatError(field, "registers and PCRs must both be strictly ascending")
    return pairs


def _binding_problem(binding, ak: ts.Public, ek_cert, policy):
    """(field, reason) when the AK is not bound to the card's EK under this policy."""
    field = "evidence.extra.binding"
    if not isinstance(binding, dict) or binding.get("method") != "credential-activation":
        method = binding.get("method") if isinstance(binding, dict) else None
        return field, (f"AK binding method {method!r}: the AK must be enrolled by credential "
                       "activation with a registrar the policy trusts")
    if ek_cert is None:
        return "evidence.cert_chain", "no readable EK certificate to bind the AK to"
    cert, chain = binding.get("ak_certificate"), binding.get("chain", [])
    if not isinstance(cert, bytes) or not isinstance(chain, list) \
            or not all(isinstance(c, bytes) for c in chain):
        return field, "expected ak_certificate (DER) and chain [DER...]"
    reason = tpm_trust.check_ak_certificate(cert, chain, ak, ek_cert, policy.root_certificates)
    return (field + ".ak_certificate", reason) if reason else None


def check_clock_sequence(quotes: list[Quoted]) -> list[Check]:
    """Keylime's clock rule over quotes of the same TPMs, in the order they were made.

    Per device: resetCount never decreases; within one resetCount, restartCount never
    decreases; the clock never goes back. One check per quote after the first of its device.
    """
    last: dict[str, dict] = {}
    checks: list[Check] = []
    for i, q in enumerate(quotes):
        field = f"quotes[{i}].clock"
        c = q.clock
        if not all(isinstance(c.get(k), int) for k in ("clock", "resetCount", "restartCount")):
            checks.append(Check("tpm_clock", SKIPPED, field, "not a TPM quote's clock info"))
            continue
        prev = last.get(q.device)
        last[q.device] = c
        if prev is None:
            continue
        if c["resetCount"] < prev["resetCount"]:
            reason = f"resetCount went back from {prev['resetCount']} to {c['resetCount']}"
        elif c["resetCount"] == prev["resetCount"] and c["restartCount"] < prev["restartCount"]:
            reason = f"restartCount went back from {prev['restartCount']} to {c['restartCount']}"
        elif c["clock"] < prev["clock"]:
            reason = f"clock went back from {prev['clock']} to {c['clock']}"
        else:
            checks.append(Check("tpm_clock", AFFIRMING, field,
                                f"counters and clock of {q.device} moved forward"))
            continue
        checks.append(Check("tpm_clock", CONTRAINDICATED, field, reason))
    return checks
