"""The `tdx` backend end to end against a fake configfs tree whose "kernel" issues quotes
under a test DCAP chain (tee_fake_tdx), and the tamper matrix on its cards: each change
is rejected by its own check and field. Changes to the TD report are re-signed with
the test attestation key, playing a forger who could - so the check behind the
signature is the one that must catch them."""
import json
import os

import pytest
import yaml

pytest.importorskip("dcap_qvl")

import cardkit  # noqa: E402
from cards.tee_layout import split_tdx_quote  # noqa: E402
from tee_fake import FakeKernel  # noqa: E402
from tee_fake_tdx import REPORT_DATA, FakeDcap  # noqa: E402
from tee_vectors import INTEL_ROOT, VECTORS, case, hex_file  # noqa: E402
from verifier.appraise import appraise  # noqa: E402
from verifier.policy import Policy  # noqa: E402
from verifier.result import AFFIRMING, CONTRAINDICATED  # noqa: E402

CASE = case("intel", "phala_tdx_v4")
BODY = 48
MR_TD, RTMR0, RTMR3, TD_ATTRIBUTES = BODY + 136, BODY + 328, BODY + 472, BODY + 120


def fake_dcap() -> FakeDcap:
    return FakeDcap(hex_file(CASE["quote"]), json.loads((VECTORS / CASE["collateral"]).read_text()))


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("tdx")
    dcap = fake_dcap()
    (root / "collateral.json").write_text(json.dumps(dcap.collateral()))
    saved = {k: os.environ.get(k) for k in ("LAMINATE_TSM_REPORT", "LAMINATE_TDX_COLLATERAL")}
    with FakeKernel(root / "tsm", provider="tdx_guest", tdx_quote=dcap.quote) as kernel:
        os.environ.update(LAMINATE_TSM_REPORT=str(kernel.report_dir),
                          LAMINATE_TDX_COLLATERAL=str(root / "collateral.json"))
        try:
            kit = cardkit.make_card(root / "kit", backend="tdx")
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    kit.dcap = dcap
    (root / "kit" / "test-dcap-root.pem").write_bytes(dcap.root_pem)
    return kit


def _quote_bytes(kit):
    return hex_file(CASE["quote"])


def _policy(kit, **changes):
    raw = _quote_bytes(kit)
    doc = yaml.safe_load(kit.policy_path.read_text())
    doc.update(trusted_roots=["test-dcap-root.pem"], verification_time=CASE["verify_at"])
    doc["reference_values"]["tdx"] = {"mrtd": [raw[MR_TD:MR_TD + 48].hex()],
                                      "rtmr": {0: [raw[RTMR0:RTMR0 + 48].hex()]}}
    doc.update(changes)
    return Policy.from_mapping(doc, base_dir=kit.policy_path.parent, source="tdx-policy")


def _appraise(kit, card_bytes=None, policy=None):
    return appraise(card_bytes or kit.card_bytes, policy=policy or _policy(kit),
                    model_path=kit.model_path)


def _rejected_by(result, name, field, reason_part):
    failed = {c.check: c for c in result.failed()}
    assert name in failed, result.to_table()
    assert failed[name].field == field, failed[name]
    assert reason_part in failed[name].reason, failed[name]


def _requoted(kit, edit):
    """The card with its TD report changed by `edit` and signed again (test keys)."""
    def mutate(evidence):
        report_data = evidence["quote"][REPORT_DATA:REPORT_DATA + 64]
        evidence["quote"], evidence["signature"] = split_tdx_quote(
            kit.dcap.quote(report_data, edit=edit))
    return cardkit.forge(kit, mutate_evidence=mutate)


def _flip(offset):
    def edit(body):
        body[offset] ^= 1
    return edit


def test_tdx_card_verifies_with_test_dcap_chain(kit):
    result = _appraise(kit)
    assert result.exit_code == 0 and result.status == AFFIRMING, result.to_table()
    for name in ("cert_chain", "collateral", "quote_signature", "tee_tcb", "tee_measurement",
                 "tee_debug", "qualifying_data", "log_replay", "claims_in_log"):
        assert result.get(name).status == AFFIRMING, name


def test_default_policy_refuses_it(kit):
    result = _appraise(kit, policy=Policy.default())
    _rejected_by(result, "backend", "evidence.backend", "backend tdx is not allowed")
    # an untrusted release key ends appraisal: the evidence is not worth checking
    _rejected_by(result, "release_signature", "card.kid", "is not trusted by policy default")


def test_intel_root_does_not_accept_the_test_chain(kit):
    result = _appraise(kit, policy=_policy(kit, trusted_roots=[str(INTEL_ROOT)]))
    _rejected_by(result, "cert_chain", "evidence.cert_chain", "no trusted root issued")


def test_claims_changed(kit):
    def edit(claims):
        claims["evaluation"]["accuracy"] = 0.99
    result = _appraise(kit, cardkit.forge(kit, mutate_claims=edit))
    _rejected_by(result, "qualifying_data", "claims", "claims were changed after attestation")


def test_report_data_changed(kit):
    result = _appraise(kit, _requoted(kit, _flip(REPORT_DATA + 40)))
    assert result.get("quote_signature").status == AFFIRMING
    _rejected_by(result, "log_replay", "evidence.event_log", "does not reproduce")


def test_mrtd_changed(kit):
    result = _appraise(kit, _requoted(kit, _flip(MR_TD)))
    _rejected_by(result, "tee_measurement", "evidence.quote.mr_td", "not a reference value")


def test_rtmr_changed(kit):
    result = _appraise(kit, _requoted(kit, _flip(RTMR0 + 47)))
    _rejected_by(result, "tee_measurement", "evidence.quote.rtmr0", "not a reference value")


def test_debug_bit_set(kit):
    result = _appraise(kit, _requoted(kit, _flip(TD_ATTRIBUTES)))
    _rejected_by(result, "tee_debug", "evidence.quote.td_attributes", "Debug mode is enabled")


def test_tcb_level_lowered(kit):
    def edit(body):
        body[BODY] = 0       # TEE_TCB_SVN[0]: the TDX module's SVN below every TCB level
    result = _appraise(kit, _requoted(kit, edit))
    _rejected_by(result, "tee_tcb", "evidence.extra.collateral.tcb_info",
                 "TDX module ISVSVN 0 is below minimum")


def test_signature_byte_changed(kit):
    def edit(evidence):
        sig = bytearray(evidence["signature"])
        sig[5] ^= 1
        evidence["signature"] = bytes(sig)
    result = _appraise(kit, cardkit.forge(kit, mutate_evidence=edit))
    _rejected_by(result, "quote_signature", "evidence.signature", "dcap-qvl")


def test_certificate_changed(kit):
    def edit(evidence):
        pck = bytearray(evidence["cert_chain"][0])
        pck[-6] ^= 1
        evidence["cert_chain"] = [bytes(pck), *evidence["cert_chain"][1:]]
    result = _appraise(kit, cardkit.forge(kit, mutate_evidence=edit))
    _rejected_by(result, "cert_chain", "evidence.cert_chain", "differs from the PCK chain")


def test_collateral_expired(kit):
    result = _appraise(kit, policy=_policy(kit, verification_time="2025-07-30T00:00:00Z"))
    failed = {c.check: c for c in result.failed()}
    assert failed["collateral"].field.startswith("evidence.extra.collateral.")
    assert "expired: next update was due" in failed["collateral"].reason


def test_rtmr_replay_against_the_hardware_register(kit):
    """When the kernel offers RTMR3, the card records its base and RTMR3 must be the
    replay of the log from it (SHA-384, digests padded to 48 bytes)."""
    import hashlib
    base = bytes(range(48))
    value = base
    for event in kit.evidence["event_log"]:
        value = hashlib.sha384(value + event["digest"].ljust(48, b"\0")).digest()

    def set_rtmr3(rtmr3):
        def mutate(evidence):
            report_data = evidence["quote"][REPORT_DATA:REPORT_DATA + 64]
            edit = lambda body: body.__setitem__(slice(RTMR3, RTMR3 + 48), rtmr3)  # noqa: E731
            evidence["quote"], evidence["signature"] = split_tdx_quote(
                kit.dcap.quote(report_data, edit=edit))
            evidence["extra"]["rtmr"] = {"index": 3, "base": base}
        return cardkit.forge(kit, mutate_evidence=mutate)

    good = _appraise(kit, set_rtmr3(value))
    assert good.get("rtmr_replay").status == AFFIRMING, good.to_table()
    bad = _appraise(kit, set_rtmr3(bytes(48)))
    _rejected_by(bad, "rtmr_replay", "evidence.quote.rtmr3", "does not reproduce RTMR3")
    assert bad.get("log_replay").status == AFFIRMING
    assert CONTRAINDICATED not in {c.status for c in good.checks}


def test_test_root_and_intel_root_trusted_together(kit):
    """Both roots are named "Intel SGX Root CA": the one that signed the chain is used."""
    result = _appraise(kit, policy=_policy(kit, trusted_roots=[str(INTEL_ROOT),
                                                               "test-dcap-root.pem"]))
    assert result.exit_code == 0, result.to_table()


@pytest.mark.parametrize("status,expected", [
    ("SWHardeningNeeded", "warning"), ("ConfigurationNeeded", "warning"),
    ("OutOfDate", CONTRAINDICATED), ("Revoked", CONTRAINDICATED)])
def test_intel_tcb_status_mapping(kit, status, expected):
    """Intel's verdict for the platform, as dcap-qvl reads it from (re-signed) TCB Info."""
    def edit(evidence):
        evidence["extra"]["collateral"] = kit.dcap.collateral(tcb_status=status)
    result = _appraise(kit, cardkit.forge(kit, mutate_evidence=edit))
    tcb = result.get("tee_tcb")
    assert tcb is not None, result.to_table()
    assert tcb.status == expected and tcb.field == "evidence.extra.collateral.tcb_info", tcb
    assert status in tcb.reason
    if expected == "warning":
        assert "INTEL-SA-00837" in tcb.reason and result.exit_code == 0


def test_policy_may_refuse_hardening_needed(kit):
    def edit(evidence):
        evidence["extra"]["collateral"] = kit.dcap.collateral(tcb_status="SWHardeningNeeded")
    result = _appraise(kit, cardkit.forge(kit, mutate_evidence=edit),
                       policy=_policy(kit, tee={"allowed_tcb_status": ["UpToDate"]}))
    _rejected_by(result, "tee_tcb", "evidence.extra.collateral.tcb_info",
                 "TCB status SWHardeningNeeded (advisories: INTEL-SA-00837) is not allowed")
