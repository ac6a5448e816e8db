"""The recorded public TEE evidence in tests/vectors/tee (sources and licenses there)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from verifier.policy import Policy

VECTORS = Path(__file__).resolve().parent / "vectors" / "tee"
CASES = json.loads((VECTORS / "cases.json").read_text())
INTEL_ROOT = VECTORS / "tdx" / "intel_sgx_root_ca.pem"


def case(group: str, case_id: str) -> dict:
    return next(c for c in CASES[group] if c["id"] == case_id)


def hex_file(rel: str) -> bytes:
    return bytes.fromhex((VECTORS / rel).read_text())


def pem_ders(rel: str) -> list[bytes]:
    with warnings.catch_warnings():   # AMD VCEKs have serial number 0
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        certs = x509.load_pem_x509_certificates((VECTORS / rel).read_bytes())
    return [c.public_bytes(Encoding.DER) for c in certs]


def policy(at: str, roots, **doc) -> Policy:
    """A policy trusting `roots` (PEM paths or PEM text) at the fixed time `at`."""
    body = {"policy_id": "vectors", "allow_backends": ["tdx", "snp"], "verification_time": at,
            "trusted_roots": [str(r) if isinstance(r, Path) else r for r in roots], **doc}
    return Policy.from_mapping(body, source="vectors-policy")


def ark_pem(rel: str) -> str:
    """The ARK (last certificate) of an AMD ask_ark bundle, as PEM text."""
    last = x509.load_pem_x509_certificates((VECTORS / rel).read_bytes())[-1]
    return last.public_bytes(Encoding.PEM).decode()


def statuses(checks) -> dict:
    return {c.check: c for c in checks}
