"""The attestation backend interface: what the wrapper needs from a TPM, TEE or simulator.

A backend owns the measurement registers and the signing identity; the session owns the
event log and decides what to measure. Keeping the surface this small is what lets a
real TPM replace the simulator without touching the wrapper.
"""
from typing import Protocol, runtime_checkable

from cards.errors import LaminateError

BACKENDS = ("sim", "tpm", "tdx", "snp")


@runtime_checkable
class Backend(Protocol):
    """An attestation module seen from the prover."""

    name: str

    def start(self, registers: list) -> None:
        """Reset `registers` to zeros and quote exactly these from now on."""

    def extend(self, event: dict) -> None:
        """Extend event["register"] with event["digest"] (event: register, type, digest, data)."""

    def quote(self, qualifying_data: bytes) -> dict:
        """Evidence without the event log: backend, quote, signature, cert_chain, extra."""

    def random(self, n: int) -> bytes:
        """n bytes from the module's randomness (the watermark seed comes from here)."""

    def close(self) -> None:
        """Release the module."""


def open_backend(name: str = "sim", *, sim_dir=None, tcti=None, pcrs=None,
                 sim_random_seed: bytes | None = None) -> Backend:
    """Open the named backend; the TPM stack is imported only when asked for.

    `pcrs`: the TPM's PCRs for registers 16 and 23 (default: PCRs 16 and 23); the
    simulator has its own registers and ignores it. `sim_random_seed`: seeded,
    predictable simulator randomness for reproducible experiments (never for a model
    you release); a TPM draws from its own RNG and refuses it.
    """
    if name == "sim":
        from attest.sim_backend import SimBackend
        return SimBackend(sim_dir, random_seed=sim_random_seed)
    if sim_random_seed is not None:
        raise LaminateError(f"backend: sim_random_seed applies to the simulator only, "
                            f"not to {name!r}")
    if name == "tpm":
        from attest.tpm_backend import TpmBackend
        return TpmBackend(tcti=tcti, pcrs=pcrs)
    if name in ("tdx", "snp"):
        from attest.tsm_backend import TsmBackend
        return TsmBackend(name)
    raise LaminateError(f"backend: unknown attestation backend {name!r} "
                        f"(choose one of {', '.join(BACKENDS)})")
