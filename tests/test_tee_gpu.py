"""NVIDIA GPU evidence (SPDM measurements) on recorded real H100 evidence: chain to the
NVIDIA Device Identity CA, signature, and the nonce that binds it to a card's claims."""
import base64
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tee_vectors import VECTORS, case, hex_file, pem_ders, policy, statuses
from verifier import gpu_evidence
from verifier.result import AFFIRMING, CONTRAINDICATED, WARNING

ROOT = VECTORS / "nvidia" / "nvidia_device_identity_ca.pem"


def _check(evidence, chain, nonce, at="2025-03-01T00:00:00Z", roots=(ROOT,)):
    gpu = {"arch": "HOPPER", "evidence": evidence, "cert_chain": chain}
    return statuses(gpu_evidence.check_gpu(gpu, "evidence.extra.gpu[0]", policy(at, roots),
                                           bytes.fromhex(nonce)))


@pytest.mark.parametrize("case_id", ["nvtrust_hopper_2023", "nvtrust_hopper_2025"])
def test_recorded_gpu_evidence_verifies(case_id):
    c = case("nvidia_gpu", case_id)
    evidence = hex_file(c["report"])
    checks = _check(evidence, pem_ders(c["cert_chain"]), c["nonce"], at=c["verify_at"])
    for name in ("gpu_cert_chain", "gpu_signature", "gpu_nonce"):
        assert checks[name].status == AFFIRMING, checks[name]
    assert checks["gpu_measurement"].status == WARNING
    assert gpu_evidence.parse(evidence, "f")[1] == c["expect"]["measurement_blocks"]


def test_ppcie_evidence_of_eight_gpus():
    c = case("nvidia_gpu", "nvtrust_ppcie_gpu_evidence")
    entries = json.loads((VECTORS / c["evidence_json"]).read_text())
    assert len(entries) == c["expect"]["entries"]
    for entry in entries:
        chain = [x.public_bytes(Encoding.DER) for x in
                 x509.load_pem_x509_certificates(base64.b64decode(entry["certificate"]))]
        checks = _check(base64.b64decode(entry["evidence"]), chain, c["nonce"], at=c["verify_at"])
        assert {checks[n].status for n in ("gpu_cert_chain", "gpu_signature", "gpu_nonce")} \
            == {AFFIRMING}


C = case("nvidia_gpu", "nvtrust_hopper_2023")


def _flip(data, i):
    return data[:i] + bytes([data[i] ^ 1]) + data[i + 1:]


def test_signature_byte_changed():
    checks = _check(_flip(hex_file(C["report"]), -5), pem_ders(C["cert_chain"]), C["nonce"])
    assert checks["gpu_signature"].status == CONTRAINDICATED
    assert checks["gpu_signature"].field == "evidence.extra.gpu[0].evidence"


def test_measurement_byte_changed():
    checks = _check(_flip(hex_file(C["report"]), 37 + 8 + 20), pem_ders(C["cert_chain"]), C["nonce"])
    assert checks["gpu_signature"].status == CONTRAINDICATED


def test_evidence_for_another_nonce():
    checks = _check(hex_file(C["report"]), pem_ders(C["cert_chain"]), "00" * 32)
    assert checks["gpu_signature"].status == AFFIRMING
    assert checks["gpu_nonce"].status == CONTRAINDICATED
    assert checks["gpu_nonce"].field == "evidence.extra.gpu[0].evidence.nonce"


def test_another_gpus_certificate():
    other = case("nvidia_gpu", "nvtrust_hopper_2025")
    checks = _check(hex_file(C["report"]), pem_ders(other["cert_chain"]), C["nonce"])
    assert checks["gpu_cert_chain"].status == AFFIRMING
    assert checks["gpu_signature"].status == CONTRAINDICATED


def test_certificate_byte_changed_or_root_untrusted():
    chain = pem_ders(C["cert_chain"])
    flipped = _check(hex_file(C["report"]), [_flip(chain[0], len(chain[0]) - 8), *chain[1:]],
                     C["nonce"])
    assert flipped["gpu_cert_chain"].status == CONTRAINDICATED
    untrusted = _check(hex_file(C["report"]), chain, C["nonce"], roots=[VECTORS / "tdx" / "intel_sgx_root_ca.pem"])
    assert untrusted["gpu_cert_chain"].status == CONTRAINDICATED
    assert "no trusted root issued" in untrusted["gpu_cert_chain"].reason


def test_unsigned_request_is_a_format_error():
    evidence = bytearray(hex_file(C["report"]))
    evidence[2] = 0
    checks = _check(bytes(evidence), pem_ders(C["cert_chain"]), C["nonce"])
    assert checks["gpu_signature"].status == CONTRAINDICATED
    assert "did not ask for a signature" in checks["gpu_signature"].reason
