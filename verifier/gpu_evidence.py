"""NVIDIA confidential-computing GPU evidence, an optional section of TDX/SNP cards.

A Hopper-class GPU in CC mode answers an SPDM 1.1 GET_MEASUREMENTS request with its
measurement blocks, signed (ECDSA P-384, r||s big-endian) over request || response by
its attestation key, whose certificate chains to the NVIDIA Device Identity CA. The
request's 32-byte nonce is the caller's: laminate sets it to H(dcbor(claims)), the same
digest the CPU report binds, so the GPU evidence belongs to this card and no other.

    extra.gpu = [{"arch": str, "evidence": bstr (request || response), "cert_chain": [DER]}]

Checks per GPU i: gpu_cert_chain, gpu_signature, gpu_nonce, and gpu_measurement, which
is a warning: the blocks are not yet compared with NVIDIA's signed reference manifests
(RIMs), so the evidence shows a genuine GPU in CC mode bound to the claims, not which
firmware it runs.
"""
from __future__ import annotations

import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from cards.errors import CardFormatError
from verifier import tee_common, tpm_trust
from verifier.result import AFFIRMING, CONTRAINDICATED, WARNING, Check

MAX_GPUS = 8
MAX_EVIDENCE = 32 << 10
REQUEST_SIZE = 37          # version, code 0xE0, param1, param2, nonce[32], slot id
SIGNATURE_SIZE = 96


def parse(evidence, field: str) -> tuple[bytes, int]:
    """-> (request nonce, number of measurement blocks); checks the SPDM framing."""
    if not isinstance(evidence, bytes) or not REQUEST_SIZE + 8 + 32 + 2 + SIGNATURE_SIZE \
            <= len(evidence) <= MAX_EVIDENCE:
        raise CardFormatError(field, "expected an SPDM GET_MEASUREMENTS request and response")
    request, response = evidence[:REQUEST_SIZE], evidence[REQUEST_SIZE:]
    if request[1] != 0xE0 or response[1] != 0x60 or request[0] != response[0]:
        raise CardFormatError(field, "not an SPDM GET_MEASUREMENTS / MEASUREMENTS exchange")
    if not request[2] & 1:
        raise CardFormatError(field, "the request did not ask for a signature")
    blocks = response[4]
    record = int.from_bytes(response[5:8], "little")
    opaque_at = 8 + record + 32
    if opaque_at + 2 > len(response):
        raise CardFormatError(field, "measurement record runs past the end")
    opaque = struct.unpack_from("<H", response, opaque_at)[0]
    if opaque_at + 2 + opaque + SIGNATURE_SIZE != len(response):
        raise CardFormatError(field, "response length does not match its fields")
    return request[4:36], blocks


def check_gpus(gpus, policy, claims_digest: bytes) -> list[Check]:
    if not isinstance(gpus, list) or not 1 <= len(gpus) <= MAX_GPUS:
        return [Check("gpu_signature", CONTRAINDICATED, "evidence.extra.gpu",
                      f"expected 1 to {MAX_GPUS} GPU evidence entries")]
    checks = []
    for i, gpu in enumerate(gpus):
        checks += check_gpu(gpu, f"evidence.extra.gpu[{i}]", policy, claims_digest)
    return checks


def check_gpu(gpu, field: str, policy, nonce: bytes) -> list[Check]:
    try:
        if not isinstance(gpu, dict):
            raise CardFormatError(field, "expected {arch, evidence, cert_chain}")
        certs = tee_common.load_certificates(gpu.get("cert_chain"), f"{field}.cert_chain")
        request_nonce, blocks = parse(gpu.get("evidence"), f"{field}.evidence")
    except CardFormatError as exc:
        name = "gpu_cert_chain" if exc.field.endswith("cert_chain") or "cert_chain[" in exc.field \
            else "gpu_signature"
        return [Check(name, CONTRAINDICATED, exc.field, exc.reason)]
    at = tee_common.verification_time(policy)
    reason = tpm_trust.verify_chain(certs[0], certs[1:], policy.root_certificates, at=at)
    checks = [Check("gpu_cert_chain", CONTRAINDICATED, f"{field}.cert_chain",
                    f"GPU attestation certificate: {reason}") if reason else
              Check("gpu_cert_chain", AFFIRMING, f"{field}.cert_chain",
                    f"{certs[0].subject.rfc4514_string()} chains to a root trusted by policy "
                    f"{policy.policy_id}")]
    evidence, key = gpu["evidence"], certs[0].public_key()
    r = int.from_bytes(evidence[-SIGNATURE_SIZE:-SIGNATURE_SIZE // 2], "big")
    s = int.from_bytes(evidence[-SIGNATURE_SIZE // 2:], "big")
    try:
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
            raise InvalidSignature
        key.verify(encode_dss_signature(r, s), evidence[:-SIGNATURE_SIZE], ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        checks.append(Check("gpu_signature", CONTRAINDICATED, f"{field}.evidence",
                            "the SPDM measurements signature does not verify with the GPU's "
                            "attestation key"))
        return checks
    checks.append(Check("gpu_signature", AFFIRMING, f"{field}.evidence",
                        f"{blocks} measurement blocks signed by the GPU's attestation key"))
    if request_nonce != nonce:
        checks.append(Check("gpu_nonce", CONTRAINDICATED, f"{field}.evidence.nonce",
                            "the GPU was asked for evidence with another nonce than H(claims): "
                            "this evidence is not bound to these claims"))
    else:
        checks.append(Check("gpu_nonce", AFFIRMING, f"{field}.evidence.nonce",
                            "GPU evidence bound to H(claims)"))
    checks.append(Check("gpu_measurement", WARNING, f"{field}.evidence",
                        "GPU measurements are not compared with NVIDIA's reference manifests "
                        "(RIMs): the firmware version is not attested"))
    return checks
