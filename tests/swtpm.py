"""A real software TPM for tests: `swtpm socket` on loopback with its own state and CA.

Each `Swtpm` is manufactured by `swtpm_setup` with an EK certificate and a platform
certificate issued by a local CA kept in a directory the caller chooses, so several
TPMs can share one CA (one "manufacturer") or each have their own. It listens on two
consecutive free loopback ports (command, control) and is stopped by `stop()`.

Tests skip with the reason from `missing_reason()` when swtpm is not installed, except
under CI=true, where a missing swtpm is a failure: CI must exercise real TPM code.
"""
import os
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

TOOLS = ("swtpm", "swtpm_setup", "swtpm_localca")


def missing_reason() -> str | None:
    """Why real-TPM tests cannot run here, or None when they can."""
    absent = [t for t in TOOLS if shutil.which(t) is None]
    if absent:
        return f"swtpm not installed ({', '.join(absent)} missing; apt-get install swtpm swtpm-tools)"
    try:
        import tpm2_pytss  # noqa: F401
    except ImportError as exc:  # the library needs libtss2 at import time
        return f"tpm2-pytss unusable: {exc}"
    return None


def require_swtpm() -> None:
    """Skip (locally) or fail (CI=true) when swtpm cannot run."""
    reason = missing_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the TPM tests: {reason}")
    pytest.skip(reason, allow_module_level=True)


def _free_port_pair() -> int:
    """A port P such that P and P+1 are free on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no two consecutive free loopback ports")


class Swtpm:
    """One manufactured swtpm instance; `tcti` is the TCTI string for tpm2-pytss/tools."""

    def __init__(self, workdir: Path, ca_dir: Path | None = None):
        self.workdir = Path(workdir)
        self.state = self.workdir / "state"
        self.ca_dir = Path(ca_dir) if ca_dir else self.workdir / "ca"
        self.state.mkdir(parents=True, exist_ok=True)
        self.ca_dir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self._proc = None
        self._manufacture()
        self.start()

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    @property
    def root_pem(self) -> bytes:
        """The local CA's self-signed root (the 'manufacturer root' a policy trusts)."""
        return (self.ca_dir / "swtpm-localca-rootca-cert.pem").read_bytes()

    @property
    def issuer_pem(self) -> bytes:
        """The intermediate that signed the EK certificate."""
        return (self.ca_dir / "issuercert.pem").read_bytes()

    def _manufacture(self) -> None:
        conf = self.workdir / "localca.conf"
        conf.write_text(
            f"statedir = {self.ca_dir}\n"
            f"signingkey = {self.ca_dir / 'signkey.pem'}\n"
            f"issuercert = {self.ca_dir / 'issuercert.pem'}\n"
            f"certserial = {self.ca_dir / 'certserial'}\n"
        )
        opts = self.workdir / "localca.options"
        opts.write_text("--platform-manufacturer laminate-tests\n--platform-version 2.1\n"
                        "--platform-model swtpm\n")
        setup = self.workdir / "swtpm_setup.conf"
        setup.write_text(
            f"create_certs_tool = {shutil.which('swtpm_localca')}\n"
            f"create_certs_tool_config = {conf}\n"
            f"create_certs_tool_options = {opts}\n"
            "active_pcr_banks = sha256\n"
        )
        subprocess.run(
            ["swtpm_setup", "--tpm2", "--tpm-state", str(self.state), "--create-ek-cert",
             "--create-platform-cert", "--config", str(setup), "--overwrite",
             "--logfile", str(self.workdir / "setup.log")],
            check=True, capture_output=True, timeout=120,
        )

    def start(self) -> None:
        """Start (or restart) the TPM process on fresh ports; its state survives restarts."""
        for _ in range(5):
            port = _free_port_pair()
            proc = subprocess.Popen(
                ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.state}",
                 "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                 "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
                 "--flags", "not-need-init,startup-clear",
                 "--log", f"file={self.workdir / 'swtpm.log'}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            if self._wait_listening(proc, port):
                self._proc, self.port = proc, port
                return
            proc.kill()
            proc.wait()
        raise RuntimeError(f"swtpm did not start; see {self.workdir / 'swtpm.log'}")

    @staticmethod
    def _wait_listening(proc, port: int) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self, orderly: bool = True) -> None:
        """Stop the TPM; orderly sends TPM2_Shutdown first, as an OS does at power-off, so
        the next start keeps the clock `safe` (a plain kill makes it unsafe)."""
        if self._proc is not None:
            if orderly:
                self._shutdown()
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def _shutdown(self) -> None:
        command = struct.pack(">HIIH", 0x8001, 12, 0x145, 0x0000)  # TPM2_Shutdown(CLEAR)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
                conn.sendall(command)
                conn.recv(10)
        except OSError:
            pass  # a client still holds the connection: stop anyway

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def issuer_der(tpm: Swtpm) -> bytes:
    """The EK issuer (intermediate) certificate as DER, for the card's cert_chain."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    return x509.load_pem_x509_certificate(tpm.issuer_pem).public_bytes(Encoding.DER)


def enrolled_backend(tpm: Swtpm, registrar, state_dir: Path):
    """A TpmBackend on `tpm` whose AK `registrar` enrolled (record kept in state_dir)."""
    from attest.tpm_backend import TpmBackend, enroll
    backend = TpmBackend(tpm.tcti, state_dir=state_dir, require_enrollment=False)
    enroll(backend, registrar, [issuer_der(tpm)])
    backend.require_enrollment = True
    return backend


def trusting_policy(tpm: Swtpm, registrar, **extra):
    """A policy trusting the swtpm CA (EK root) and the registrar CA (AK certificates)."""
    from verifier.policy import Policy
    doc = {"policy_id": "swtpm-test", "allow_backends": ["tpm"],
           "trusted_roots": [tpm.root_pem.decode(), registrar.ca_pem.decode()], **extra}
    return Policy.from_mapping(doc, source="swtpm-test")
