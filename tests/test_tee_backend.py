"""The `snp` and `tdx` backends against a fake configfs-tsm tree, and the tamper matrix
on the cards they seal.

The fake kernel signs SEV-SNP-shaped reports with a test chain made in the test, so an
attacker's every move can be played: change one thing, re-sign where the attacker could
(release key) or where only the chip could (the VCEK: played here to show that the
check behind the signature catches it too).
"""
import json
import os
import struct

import pytest
import yaml

import cardkit
from attest.tsm_backend import TsmBackend, parse_cert_table
from cards.errors import LaminateError
from tee_fake import MEASUREMENT, FakeAmdChain, FakeKernel
from tee_vectors import INTEL_ROOT, VECTORS, case, hex_file
from verifier.appraise import appraise
from verifier.policy import Policy
from verifier.result import AFFIRMING


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("snp")
    saved = os.environ.get("LAMINATE_TSM_REPORT")
    with FakeKernel(root / "tsm") as kernel:
        os.environ["LAMINATE_TSM_REPORT"] = str(kernel.report_dir)
        try:
            kit = cardkit.make_card(root / "kit", backend="snp")
        finally:
            os.environ.pop("LAMINATE_TSM_REPORT")
            if saved is not None:
                os.environ["LAMINATE_TSM_REPORT"] = saved
    kit.chain = kernel.chain
    (root / "kit" / "test-ark.pem").write_bytes(kernel.chain.ark_pem)
    return kit


def _policy(kit, **changes):
    doc = yaml.safe_load(kit.policy_path.read_text())
    doc["trusted_roots"] = ["test-ark.pem"]
    doc["reference_values"]["snp"] = {"measurement": [MEASUREMENT.hex()]}
    doc.update(changes)
    return Policy.from_mapping(doc, base_dir=kit.policy_path.parent, source="tee-policy")


def _appraise(kit, card_bytes=None, policy=None):
    return appraise(card_bytes or kit.card_bytes, policy=policy or _policy(kit),
                    model_path=kit.model_path)


def _rejected_by(result, name, field, reason_part):
    failed = {c.check: c for c in result.failed()}
    assert name in failed, result.to_table()
    assert failed[name].field == field, failed[name]
    assert reason_part in failed[name].reason, failed[name]
    return failed


def _resigned(kit, edit):
    """Evidence whose report `edit` changed and the (test) VCEK signed again."""
    def mutate(evidence):
        raw = bytearray(evidence["quote"] + evidence["signature"])
        edit(raw)
        raw = kit.chain.sign(bytes(raw))
        evidence["quote"], evidence["signature"] = raw[:0x2A0], raw[0x2A0:]
    return cardkit.forge(kit, mutate_evidence=mutate)


def test_snp_card_verifies_with_test_chain_and_pinned_measurement(kit):
    result = _appraise(kit)
    assert result.exit_code == 0 and result.status == AFFIRMING, result.to_table()
    assert result.backend == "snp" and not result.simulated
    for name in ("cert_chain", "quote_signature", "tee_tcb", "tee_measurement", "tee_debug",
                 "qualifying_data", "log_replay", "claims_in_log"):
        assert result.get(name).status == AFFIRMING, name
    assert len(kit.evidence["cert_chain"]) == 3


def test_default_policy_refuses_it(kit):
    result = _appraise(kit, policy=Policy.default())
    _rejected_by(result, "backend", "evidence.backend", "backend snp is not allowed")
    # an untrusted release key ends appraisal: the evidence is not worth checking
    _rejected_by(result, "release_signature", "card.kid", "is not trusted by policy default")


def test_claims_changed_after_attestation(kit):
    def edit(claims):
        claims["evaluation"]["accuracy"] = 0.99
    result = _appraise(kit, cardkit.forge(kit, mutate_claims=edit))
    _rejected_by(result, "qualifying_data", "claims", "claims were changed after attestation")


def test_report_data_changed(kit):
    result = _appraise(kit, _resigned(kit, lambda raw: raw.__setitem__(0x50, raw[0x50] ^ 1)))
    _rejected_by(result, "qualifying_data", "claims", "claims were changed after attestation")
    assert result.get("quote_signature").status == AFFIRMING


def test_event_log_changed(kit):
    def edit(log):
        log[2]["data"] = dict(log[2]["data"], name="other-train")
    result = _appraise(kit, cardkit.forge(kit, mutate_events=edit))
    _rejected_by(result, "log_replay", "evidence.event_log", "does not reproduce")


def test_measurement_changed(kit):
    result = _appraise(kit, _resigned(kit, lambda raw: raw.__setitem__(0x90, raw[0x90] ^ 1)))
    _rejected_by(result, "tee_measurement", "evidence.quote.measurement", "not a reference value")


def test_debug_bit_set(kit):
    result = _appraise(kit, _resigned(kit, lambda raw: raw.__setitem__(0x0A, raw[0x0A] | 0x08)))
    _rejected_by(result, "tee_debug", "evidence.quote.policy", "allows debugging (bit 19)")


def test_tcb_level_changed(kit):
    result = _appraise(kit, _resigned(kit, lambda raw: raw.__setitem__(0x186, 9)))
    _rejected_by(result, "tee_tcb", "evidence.quote.reported_tcb",
                 "reported snp SVN 9, but the VCEK was issued for 8")


def test_tcb_below_policy_minimum(kit):
    result = _appraise(kit, policy=_policy(kit, reference_values={
        "code": [kit.code_sha256], "snp": {"measurement": [MEASUREMENT.hex()],
                                          "min_tcb": {"microcode": 120}}}))
    _rejected_by(result, "tee_tcb", "evidence.quote.reported_tcb", "microcode 115 < 120")


def test_chip_id_changed(kit):
    result = _appraise(kit, _resigned(kit, lambda raw: raw.__setitem__(0x1A0, raw[0x1A0] ^ 1)))
    _rejected_by(result, "quote_signature", "evidence.quote.chip_id", "not the chip the VCEK")


def test_signature_byte_changed(kit):
    def edit(evidence):
        sig = bytearray(evidence["signature"])
        sig[3] ^= 1
        evidence["signature"] = bytes(sig)
    result = _appraise(kit, cardkit.forge(kit, mutate_evidence=edit))
    _rejected_by(result, "quote_signature", "evidence.signature", "does not verify with the VCEK")
    assert result.get("qualifying_data").status == "skipped"


def test_certificate_from_another_chain(kit):
    other = FakeAmdChain()
    def edit(evidence):
        evidence["cert_chain"] = [other.der(other.vcek), other.der(other.ask), other.der(other.ark)]
    result = _appraise(kit, cardkit.forge(kit, mutate_evidence=edit))
    _rejected_by(result, "cert_chain", "evidence.cert_chain", "no trusted root issued")
    _rejected_by(result, "quote_signature", "evidence.signature", "does not verify")


def test_vcek_expired_at_policy_time(kit):
    result = _appraise(kit, policy=_policy(kit, verification_time="2099-01-01T00:00:00Z"))
    _rejected_by(result, "cert_chain", "evidence.cert_chain", "is not valid now")


# -- the backend itself ----------------------------------------------------------------


def test_snp_backend_request_and_cleanup(tmp_path):
    with FakeKernel(tmp_path) as kernel:
        backend = TsmBackend("snp", report_dir=kernel.report_dir)
        backend.start([16, 23])
        backend.extend({"register": 16, "digest": bytes(32)})
        evidence = backend.quote(b"\x11" * 32)
    raw = evidence["quote"] + evidence["signature"]
    assert raw[0x50:0x70] == b"\x11" * 32 and len(raw) == 0x4A0
    assert evidence["extra"]["registers"] == [16, 23]
    assert list(kernel.report_dir.iterdir()) == []          # the entry was removed
    assert set(parse_cert_table(kernel.chain.cert_table())) == {"vcek", "ask", "ark"}


def test_wrong_provider_is_refused(tmp_path):
    with FakeKernel(tmp_path, provider="tdx_guest") as kernel:
        backend = TsmBackend("snp", report_dir=kernel.report_dir)
        backend.start([16, 23])
        with pytest.raises(LaminateError, match="provider is 'tdx_guest', not sev_guest"):
            backend.quote(bytes(32))


def test_no_configfs_tsm(tmp_path):
    with pytest.raises(LaminateError, match="no configfs-tsm report interface"):
        TsmBackend("tdx", report_dir=tmp_path / "absent")


def test_tdx_backend_with_a_recorded_quote(tmp_path, monkeypatch):
    """A real quote in the fake tree: everything Intel signed verifies, but its report
    data is not this card's - a replayed quote is refused for exactly that."""
    pytest.importorskip("dcap_qvl")
    c = case("intel", "phala_tdx_v4")
    measurements = tmp_path / "mr"
    measurements.mkdir()
    (measurements / "rtmr3:sha384").write_bytes(bytes(48))
    monkeypatch.setenv("LAMINATE_TDX_COLLATERAL", str(VECTORS / c["collateral"]))
    monkeypatch.setenv("LAMINATE_TDX_MEASUREMENTS", str(measurements))
    recorded = hex_file(c["quote"])
    with FakeKernel(tmp_path / "tsm", provider="tdx_guest", tdx_quote=lambda _: recorded) as k:
        monkeypatch.setenv("LAMINATE_TSM_REPORT", str(k.report_dir))
        kit = cardkit.make_card(tmp_path / "kit", backend="tdx")
    assert kit.evidence["extra"]["rtmr"] == {"index": 3, "base": bytes(48)}
    doc = yaml.safe_load(kit.policy_path.read_text())
    doc.update(trusted_roots=[str(INTEL_ROOT)], verification_time=c["verify_at"])
    result = appraise(kit.card_bytes, policy=Policy.from_mapping(doc, base_dir=kit.tmp_path),
                      model_path=kit.model_path)
    for name in ("cert_chain", "collateral", "quote_signature", "tee_tcb", "tee_debug"):
        assert result.get(name).status == AFFIRMING, result.to_table()
    _rejected_by(result, "qualifying_data", "claims", "claims were changed after attestation")
    _rejected_by(result, "rtmr_replay", "evidence.quote.rtmr3", "does not reproduce RTMR3")
    assert json.loads(json.dumps(kit.evidence["extra"]["collateral"]))["tcb_info"]
    assert struct.unpack_from("<H", kit.evidence["quote"])[0] == 4


def test_ask_in_place_of_the_vcek(kit):
    def edit(evidence):
        evidence["cert_chain"] = evidence["cert_chain"][1:]
    result = _appraise(kit, cardkit.forge(kit, mutate_evidence=edit))
    _rejected_by(result, "cert_chain", "evidence.cert_chain[0]", "is a CA, not the VCEK")


def test_gpu_evidence_for_other_claims_is_refused(kit):
    """Real H100 evidence, but requested with nvtrust's nonce, not this card's H(claims)."""
    from tee_vectors import pem_ders
    c = case("nvidia_gpu", "nvtrust_hopper_2023")
    def edit(evidence):
        evidence["extra"]["gpu"] = [{"arch": "HOPPER", "evidence": hex_file(c["report"]),
                                     "cert_chain": pem_ders(c["cert_chain"])}]
    doc_roots = ["test-ark.pem", str(VECTORS / "nvidia" / "nvidia_device_identity_ca.pem")]
    result = _appraise(kit, cardkit.forge(kit, mutate_evidence=edit),
                       policy=_policy(kit, trusted_roots=doc_roots))
    assert result.get("gpu_cert_chain").status == AFFIRMING
    assert result.get("gpu_signature").status == AFFIRMING
    _rejected_by(result, "gpu_nonce", "evidence.extra.gpu[0].evidence.nonce",
                 "not bound to these claims")
    assert result.get("qualifying_data").status == AFFIRMING


def test_gpu_evidence_bound_to_the_claims(kit, tmp_path):
    from cards import schema
    from tee_fake import FakeGpu
    gpu = FakeGpu()
    (kit.tmp_path / "gpu-root.pem").write_bytes(gpu.root_pem)
    digest = schema.claims_digest(kit.claims)
    def edit(evidence):
        evidence["extra"]["gpu"] = [{"arch": "TEST", "evidence": gpu.measurements(digest),
                                     "cert_chain": gpu.chain}]
    policy = _policy(kit, trusted_roots=["test-ark.pem", "gpu-root.pem"])
    result = _appraise(kit, cardkit.forge(kit, mutate_evidence=edit), policy=policy)
    for name in ("gpu_cert_chain", "gpu_signature", "gpu_nonce", "qualifying_data"):
        assert result.get(name).status == AFFIRMING, result.to_table()
    assert result.get("gpu_measurement").status == "warning" and result.exit_code == 0


def test_snp_chain_from_a_file_when_the_host_gives_none(tmp_path, monkeypatch):
    from cryptography.hazmat.primitives.serialization import Encoding
    with FakeKernel(tmp_path / "tsm", auxblob=False) as kernel:
        backend = TsmBackend("snp", report_dir=kernel.report_dir)
        backend.start([16, 23])
        monkeypatch.delenv("LAMINATE_SNP_CHAIN", raising=False)
        with pytest.raises(LaminateError, match="set LAMINATE_SNP_CHAIN"):
            backend.quote(bytes(32))
        chain = kernel.chain
        pem = b"".join(c.public_bytes(Encoding.PEM) for c in (chain.vcek, chain.ask, chain.ark))
        (tmp_path / "chain.pem").write_bytes(pem)
        monkeypatch.setenv("LAMINATE_SNP_CHAIN", str(tmp_path / "chain.pem"))
        evidence = backend.quote(bytes(32))
    assert evidence["cert_chain"] == [chain.der(chain.vcek), chain.der(chain.ask),
                                      chain.der(chain.ark)]
