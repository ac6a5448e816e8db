"""The simulator as an attestation backend: full pipeline, no hardware guarantee."""
from cards.errors import LaminateError
from enclave_sim.device import SimDevice, SimDeviceError


class SimBackend:
    """Backend over a `SimDevice`; evidence says `backend: sim` so no one mistakes it."""

    name = "sim"

    def __init__(self, sim_dir=None, *, random_seed: bytes | None = None):
        """`random_seed`: reproducible randomness for experiments only (see `SimDevice`)."""
        try:
            self.device = SimDevice(sim_dir, random_seed=random_seed)
        except SimDeviceError as exc:
            raise LaminateError(str(exc)) from None
        self._registers = None

    def start(self, registers: list) -> None:
        try:
            self.device.reset_registers(registers)
        except SimDeviceError as exc:
            raise LaminateError(f"sim backend: {exc}") from None
        self._registers = sorted(set(registers))

    def extend(self, event: dict) -> None:
        if self._registers is None:
            raise LaminateError("sim backend: extend before start")
        if event["register"] not in self._registers:
            raise LaminateError(f"sim backend: register {event['register']} is not one this "
                                f"session quotes ({self._registers})")
        try:
            self.device.extend(event["register"], event["digest"])
        except SimDeviceError as exc:
            raise LaminateError(f"sim backend: {exc}") from None

    def quote(self, qualifying_data: bytes) -> dict:
        if self._registers is None:
            raise LaminateError("sim backend: quote before start")
        try:
            quote, signature = self.device.quote(self._registers, qualifying_data)
        except SimDeviceError as exc:
            raise LaminateError(f"sim backend: {exc}") from None
        return {"backend": "sim", "quote": quote, "signature": signature,
                "cert_chain": self.device.certificate_chain(), "extra": {}}

    def random(self, n: int) -> bytes:
        try:
            return self.device.random(n)
        except SimDeviceError as exc:
            raise LaminateError(f"sim backend: {exc}") from None

    def close(self) -> None:
        self._registers = None
