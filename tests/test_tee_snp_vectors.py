"""SEV-SNP verification on recorded real reports (tests/vectors/tee/snp, with sources):
each verifies at its case's fixed time, and each single change is rejected by the check
responsible for it (name and field)."""
import pytest

from tee_vectors import CASES, ark_pem, case, hex_file, pem_ders, policy, statuses
from verifier import snp_evidence, tee_common
from verifier.result import AFFIRMING, CONTRAINDICATED

REPORT_CASES = [c for c in CASES["amd_snp"] if "report" in c and c["expect"]["chain_valid"]]


def _chain(c):
    return pem_ders(c["vcek"]) + pem_ders(c["ask_ark"])


def _check(c, raw=None, chain=None, at=None, roots=None, **doc):
    raw = raw if raw is not None else hex_file(c["report"])
    certs = tee_common.load_certificates(chain or _chain(c), "evidence.cert_chain")
    pol = policy(at or c["verify_at"], roots or [ark_pem(c["ask_ark"])], **doc)
    checks, report = snp_evidence.check_report(raw, certs, pol)
    return statuses(checks), report


def _pinned(c):
    measurement = snp_evidence.parse_report(hex_file(c["report"])).measurement.hex()
    return {"reference_values": {"snp": {"measurement": [measurement]}}}


@pytest.mark.parametrize("c", REPORT_CASES, ids=lambda c: c["id"])
def test_recorded_report_verifies_at_its_time(c):
    checks, report = _check(c, **_pinned(c))
    expect = c["expect"]
    assert checks["quote_signature"].status == AFFIRMING
    assert checks["cert_chain"].status == AFFIRMING, checks["cert_chain"]
    assert report.version == expect["version"]
    assert snp_evidence.SIGNING_KEYS[report.signing_key] == expect["signing_key"]
    assert report.report_data.hex().startswith(expect.get("report_data_prefix", ""))
    assert report.vmpl == expect.get("vmpl", report.vmpl)
    assert checks["tee_tcb"].status == AFFIRMING, checks["tee_tcb"]
    assert checks["tee_measurement"].status == AFFIRMING


def test_only_the_debug_guest_is_refused_for_debug():
    # go-sev-guest's sample runs with guest policy 0xB0000: bit 19, DEBUG, is set.
    debug, _ = _check(case("amd_snp", "google_milan_v2"))
    assert debug["tee_debug"].status == CONTRAINDICATED
    assert debug["tee_debug"].field == "evidence.quote.policy"
    clean, _ = _check(case("amd_snp", "virtee_milan_v2"))
    assert clean["tee_debug"].status == AFFIRMING


def test_turin_vcek_chains_to_turin_ark():
    c = case("amd_snp", "virtee_turin_chain_only")
    pol = policy(c["verify_at"], [ark_pem(c["ask_ark"])])
    certs = tee_common.load_certificates(_chain(c), "evidence.cert_chain")
    assert snp_evidence._chain_check(certs, pol).status == AFFIRMING


C = case("amd_snp", "virtee_milan_v2")


def _flip(raw, offset):
    raw = bytearray(raw)
    raw[offset] ^= 1
    return bytes(raw)


@pytest.mark.parametrize("offset,what", [(0x2A0, "signature r"), (0x2E8 + 5, "signature s"),
                                         (0x50, "report data"), (0x90, "measurement"),
                                         (0x08 + 2, "guest policy (DEBUG byte)"),
                                         (0x180, "reported TCB")])
def test_signed_field_changed_breaks_the_signature(offset, what):
    checks, report = _check(C, raw=_flip(hex_file(C["report"]), offset))
    assert report is None, what
    assert checks["quote_signature"].status == CONTRAINDICATED
    assert checks["quote_signature"].field == "evidence.signature"
    assert "does not verify with the VCEK" in checks["quote_signature"].reason


def test_measurement_not_pinned_or_other():
    unpinned, _ = _check(C)
    assert unpinned["tee_measurement"].status == CONTRAINDICATED
    assert "pins no MEASUREMENT" in unpinned["tee_measurement"].reason
    other, _ = _check(C, reference_values={"snp": {"measurement": ["ab" * 48]}})
    assert other["tee_measurement"].field == "evidence.quote.measurement"
    assert "is not a reference value" in other["tee_measurement"].reason


def test_tcb_below_policy_minimum_is_out_of_date():
    checks, _ = _check(C, reference_values={"snp": {"min_tcb": {"snp": 9}}})
    assert checks["tee_tcb"].status == CONTRAINDICATED
    assert checks["tee_tcb"].field == "evidence.quote.reported_tcb"
    assert "snp 8 < 9" in checks["tee_tcb"].reason and "OutOfDate" in checks["tee_tcb"].reason


def test_other_products_chain_is_not_trusted():
    c = case("amd_snp", "wrong_product_chain")
    checks, _ = _check(c, roots=[ark_pem(c["ask_ark"])])
    assert checks["cert_chain"].status == CONTRAINDICATED
    assert "no trusted root issued" in checks["cert_chain"].reason


def test_certificate_byte_changed():
    chain = _chain(C)
    vcek = bytearray(chain[0])
    vcek[-10] ^= 1          # inside the ASK's signature over the VCEK
    checks, _ = _check(C, chain=[bytes(vcek), *chain[1:]])
    assert checks["cert_chain"].status == CONTRAINDICATED
    assert checks["cert_chain"].field == "evidence.cert_chain"


def test_another_chips_vcek_does_not_verify_the_report():
    other = case("amd_snp", "google_milan_v2")
    checks, _ = _check(C, chain=_chain(other))
    assert checks["cert_chain"].status == AFFIRMING
    assert checks["quote_signature"].status == CONTRAINDICATED


def test_vcek_expired_at_verification_time():
    checks, _ = _check(C, at="2031-01-01T00:00:00Z")
    assert checks["cert_chain"].status == CONTRAINDICATED
    assert "is not valid now" in checks["cert_chain"].reason


def test_card_evidence_must_be_split_at_the_signature():
    raw = hex_file(C["report"])
    evidence = {"backend": "snp", "quote": raw, "signature": b"x", "cert_chain": _chain(C),
                "extra": {"registers": [16, 23]}}
    checks, quoted = snp_evidence.check_evidence(evidence, policy(C["verify_at"], []))
    assert quoted is None
    assert checks[0].check == "quote_signature" and checks[0].field == "evidence.quote"
