"""Backend dispatch for hardware evidence: each backend's verifier turns its evidence
into the same `Quoted` facts, so the rest of the appraisal is backend independent.

`check_evidence(evidence, policy)` returns the backend's checks (cert_chain,
quote_signature, and whatever else the backend needs) and the signed quote's facts, or
None for the facts when the quote cannot be trusted to say anything (bad signature,
malformed quote); checks that depend on it are then reported as not checked.
"""
from __future__ import annotations

import importlib
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from verifier.result import CONTRAINDICATED, Check

_BACKEND_MODULES = {"sim": "verifier.sim_evidence", "tpm": "verifier.tpm_evidence",
                    "tdx": "verifier.tdx_evidence", "snp": "verifier.snp_evidence"}
# What `cryptography` raises, often lazily on first use of a field, for certificate bytes
# it cannot read: malformed DER, an unknown version, key or signature algorithm, a
# duplicated extension. Evidence certificates are attacker input until a chain checks out.
CERTIFICATE_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion,
                      x509.DuplicateExtension, x509.UnsupportedGeneralNameType)


class Quoted(NamedTuple):
    """What a verified quote says, the same for every backend."""
    registers: list            # register (PCR) indices the quote covers, ascending
    register_digest: bytes     # H(concatenation of those registers' values, ascending)
    qualifying_data: bytes     # the nonce the prover bound: H(dcbor(claims))
    device: str                # device identity as the evidence names it
    clock: dict                # the device's counters at quote time, as it names them


def check_evidence(evidence: dict, policy) -> tuple[list, Quoted | None]:
    """Dispatch ``evidence`` (a card's evidence map) to its backend's verifier and
    return (checks, Quoted or None). An unknown backend, or one this installation cannot
    load, is a contraindicated quote_signature check, never an exception."""
    backend = evidence.get("backend")
    name = _BACKEND_MODULES.get(backend) if isinstance(backend, str) else None
    if name is None:
        return [Check("quote_signature", CONTRAINDICATED, "evidence.backend",
                      f"no verifier for backend {backend!r}")], None
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return [Check("quote_signature", CONTRAINDICATED, "evidence.backend",
                      f"this installation cannot check {backend} evidence")], None
    return module.check_evidence(evidence, policy)
