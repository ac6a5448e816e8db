"""TDX verification on recorded real quotes with their collateral (tests/vectors/tee/tdx):
each verifies (or is refused) at its case's fixed time as cases.json records, and each
single change is rejected by the check responsible for it (name and field)."""
import json
import struct

import pytest

pytest.importorskip("dcap_qvl")

from cards.errors import CardFormatError  # noqa: E402
from cards.tee_layout import split_tdx_quote  # noqa: E402
from tee_vectors import CASES, INTEL_ROOT, VECTORS, case, hex_file, policy, statuses  # noqa: E402
from verifier import tdx_evidence, tee_common  # noqa: E402
from verifier.result import AFFIRMING, CONTRAINDICATED, SKIPPED, WARNING  # noqa: E402

TDX_CASES = [c for c in CASES["intel"] if c["quote"].startswith("tdx/")]
C = case("intel", "phala_tdx_v4")
BODY = 48                                  # v4: the TD report follows the 48-byte header
MR_TD, RTMR1, REPORT_DATA, TD_ATTRIBUTES = BODY + 136, BODY + 376, BODY + 520, BODY + 120


def evidence_for(raw, collateral):
    """Card-shaped evidence for a whole quote, as the tdx backend writes it."""
    import dcap_qvl
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    signed, signature = split_tdx_quote(raw)
    chain = x509.load_pem_x509_certificates(dcap_qvl.parse_quote(raw).cert_chain_pem_bytes())
    return {"backend": "tdx", "quote": signed, "signature": signature,
            "cert_chain": [c.public_bytes(Encoding.DER) for c in chain],
            "extra": {"registers": [16, 23], "collateral": collateral}}


def _collateral(c):
    return json.loads((VECTORS / c["collateral"]).read_text())


def _check(c, raw=None, collateral=None, at=None, roots=(INTEL_ROOT,), evidence=None, **doc):
    raw = raw if raw is not None else hex_file(c["quote"])
    evidence = evidence or evidence_for(raw, collateral or _collateral(c))
    checks, quoted = tdx_evidence.check_evidence(evidence, policy(at or c["verify_at"], roots, **doc))
    return statuses(checks), quoted


def _flip(offset, raw=None):
    raw = bytearray(raw if raw is not None else hex_file(C["quote"]))
    raw[offset] ^= 1
    return bytes(raw)


@pytest.mark.parametrize("c", TDX_CASES, ids=lambda c: c["id"])
def test_recorded_quote_as_cases_json_says(c):
    checks, quoted = _check(c)
    expect = c["expect"]
    if expect["ok"]:
        assert checks["cert_chain"].status == AFFIRMING
        assert checks["collateral"].status == AFFIRMING
        assert checks["quote_signature"].status == AFFIRMING
        assert checks["tee_tcb"].status == AFFIRMING and expect["status"] == "UpToDate"
        assert checks["tee_debug"].status == AFFIRMING
        assert quoted is not None and len(quoted.qualifying_data) == 32
    elif expect["error"] == "Fmspc mismatch":
        assert checks["collateral"].status == CONTRAINDICATED and quoted is None
        assert "Fmspc mismatch" in checks["collateral"].reason
    else:
        assert checks["tee_tcb"].status == CONTRAINDICATED and quoted is None
        assert checks["tee_tcb"].field == "evidence.extra.collateral.tcb_info"
        assert expect["error"] in checks["tee_tcb"].reason


def test_v4_and_v5_report_data_become_the_claims_binding():
    _, quoted = _check(C)
    assert quoted.qualifying_data + quoted.register_digest == hex_file(C["quote"])[
        REPORT_DATA:REPORT_DATA + 64]


@pytest.mark.parametrize("at,field,reason", [
    ("2025-06-19T10:32:26Z", "evidence.extra.collateral.qe_identity", "after the verification time"),
    ("2025-07-19T10:00:36Z", "evidence.extra.collateral.pck_crl", "expired: next update was due")])
def test_collateral_outside_its_window(at, field, reason):
    checks, quoted = _check(C, at=at)
    assert quoted is None
    assert checks["collateral"].status == CONTRAINDICATED
    assert checks["collateral"].field == field and reason in checks["collateral"].reason
    assert checks["quote_signature"].status == SKIPPED


def test_collateral_older_than_policy_allows():
    checks, _ = _check(C, tee={"max_collateral_age_days": 5})
    assert checks["collateral"].status == CONTRAINDICATED
    assert checks["collateral"].field == "evidence.extra.collateral.tcb_info"
    assert "older than the 5 days" in checks["collateral"].reason


def test_collateral_signature_changed():
    collateral = _collateral(C)
    sig = collateral["tcb_info_signature"]
    collateral["tcb_info_signature"] = sig[:10] + ("0" if sig[10] != "0" else "1") + sig[11:]
    checks, quoted = _check(C, collateral=collateral)
    assert quoted is None and checks["collateral"].status == CONTRAINDICATED
    assert checks["collateral"].reason.startswith("dcap-qvl:")


@pytest.mark.parametrize("offset,what", [(REPORT_DATA, "report data"), (MR_TD, "MRTD"),
                                         (RTMR1, "RTMR1"), (TD_ATTRIBUTES, "debug bit"),
                                         (BODY + 584 + 4 + 10, "signature byte")])
def test_signed_bytes_changed(offset, what):
    checks, quoted = _check(C, raw=_flip(offset))
    assert quoted is None, what
    assert checks["quote_signature"].status == CONTRAINDICATED, what
    assert checks["quote_signature"].field == "evidence.signature"


def test_measurements_against_reference_values():
    body = hex_file(C["quote"])
    mrtd, rtmr1 = body[MR_TD:MR_TD + 48].hex(), body[RTMR1:RTMR1 + 48].hex()
    good, _ = _check(C, reference_values={"tdx": {"mrtd": [mrtd], "rtmr": {1: [rtmr1]}}})
    assert good["tee_measurement"].status == AFFIRMING, good["tee_measurement"]
    other_mrtd, _ = _check(C, reference_values={"tdx": {"mrtd": ["00" * 48]}})
    assert other_mrtd["tee_measurement"].status == CONTRAINDICATED
    assert other_mrtd["tee_measurement"].field == "evidence.quote.mr_td"
    other_rtmr, _ = _check(C, reference_values={"tdx": {"mrtd": [mrtd], "rtmr": {1: ["00" * 48]}}})
    assert other_rtmr["tee_measurement"].status == CONTRAINDICATED
    assert other_rtmr["tee_measurement"].field == "evidence.quote.rtmr1"


def test_debug_bit_is_refused():
    # Every recorded quote is a production TD; the bit itself is covered by the
    # signature (test_signed_bytes_changed), so the mapping is checked on its own here.
    attributes = bytes.fromhex("0000001000000000")
    assert tdx_evidence.debug_check(attributes).status == AFFIRMING
    refused = tdx_evidence.debug_check(bytes([attributes[0] | 1]) + attributes[1:])
    assert refused.status == CONTRAINDICATED and refused.field == "evidence.quote.td_attributes"


def test_card_chain_must_be_the_quotes_chain():
    near = evidence_for(hex_file("tdx/phala_tdx_v4_near.quote.hex"), {})
    evidence = evidence_for(hex_file(C["quote"]), _collateral(C))
    evidence["cert_chain"] = near["cert_chain"]
    checks, _ = _check(C, evidence=evidence)
    assert checks["cert_chain"].status == CONTRAINDICATED
    assert "differs from the PCK chain" in checks["cert_chain"].reason


def test_untrusted_root():
    amd = (VECTORS / "snp" / "amd_ask_ark_milan.pem").read_text().split("-----END CERTIFICATE-----")
    ark = amd[1].strip() + "\n-----END CERTIFICATE-----\n"
    checks, quoted = _check(C, roots=[ark])
    assert quoted is None
    assert checks["cert_chain"].status == CONTRAINDICATED
    assert "no trusted root issued" in checks["cert_chain"].reason


def test_sgx_quote_is_not_tdx_evidence():
    raw = hex_file("sgx/phala_sgx_v3.quote.hex")
    evidence = {"backend": "tdx", "quote": raw[:432], "signature": raw[436:],
                "cert_chain": [b"x"], "extra": {}}
    checks, quoted = tdx_evidence.check_evidence(evidence, policy(C["verify_at"], [INTEL_ROOT]))
    assert quoted is None
    assert checks[0].check == "quote_signature" and checks[0].field == "evidence.quote.header"
    assert "not a TDX quote v4/v5 (version 3, TEE type 0x0)" in checks[0].reason


@pytest.mark.parametrize("status,allowed,expected", [
    ("UpToDate", None, AFFIRMING), ("SWHardeningNeeded", None, WARNING),
    ("ConfigurationNeeded", ["UpToDate"], CONTRAINDICATED), ("OutOfDate", None, CONTRAINDICATED),
    ("Revoked", None, CONTRAINDICATED)])
def test_tcb_status_mapping(status, allowed, expected):
    doc = {"tee": {"allowed_tcb_status": allowed}} if allowed else {}
    check = tee_common.tcb_check(status, ["INTEL-SA-00615"], policy(C["verify_at"], [], **doc),
                                 "f", "TDX")
    assert check.status == expected and check.check == "tee_tcb"
    assert "INTEL-SA-00615" in check.reason


def test_verifier_without_the_tee_extra(monkeypatch):
    monkeypatch.setattr(tdx_evidence, "_dcap", lambda: None)
    checks, quoted = _check(C)
    assert quoted is None
    assert checks["quote_signature"].status == CONTRAINDICATED
    assert "verifier lacks the tee extra" in checks["quote_signature"].reason


def test_truncated_signature_data_is_a_format_error():
    evidence = evidence_for(hex_file(C["quote"]), _collateral(C))
    raw = evidence["quote"] + struct.pack("<I", len(evidence["signature"]) + 9) + evidence["signature"]
    with pytest.raises(CardFormatError, match="runs past"):
        split_tdx_quote(raw)
