"""A software attestation device: the test and demo stand-in for a TPM or TEE.

It behaves like the real thing where a verifier can tell (persistent identity certified
by a manufacturer root, extend-only registers, signed quotes with a monotonic counter)
so the whole pipeline runs without hardware. It protects nothing: its root key sits in
the state directory, which is why its root says SIMULATED and policies refuse `sim`
unless they opt in.

Registers are volatile per `SimDevice` object (one object is one "boot"), so two
processes sharing a state directory never clobber each other's measurements; the
identity, the quote counter and the reset count are persisted under a file lock.
"""
import datetime
import fcntl
import hashlib
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

REGISTER_COUNT = 24
DIGEST_SIZE = 32
QUOTE_VERSION = 1
MAX_QUALIFYING_DATA = 64
ROOT_COMMON_NAME = "laminate SIMULATED root - not hardware"

_ROOT_KEY, _ROOT_CERT = "root-key.pem", "root-cert.pem"
_AK_KEY, _AK_CERT = "ak-key.pem", "ak-cert.pem"
_IDENTITY, _STATE, _LOCK = "device.json", "state.json", "lock"


class SimDeviceError(ValueError):
    """A bad request to the simulated device or an unusable state directory."""


def default_state_dir() -> Path:
    """Where the simulated device lives unless told otherwise: $LAMINATE_SIM_DIR."""
    env = os.environ.get("LAMINATE_SIM_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".local" / "share" / "laminate" / "sim"


class SeededRandom:
    """A reproducible byte source: draw i is SHAKE-256(domain || seed || i), n bytes long.

    Exists so red-team and benchmark runs can be repeated bit for bit. Anyone who knows
    the seed knows every byte it will ever give, so it is for experiments only.
    """

    _DOMAIN = b"laminate-sim-random-v1\0"

    def __init__(self, seed: bytes):
        if not isinstance(seed, (bytes, bytearray)) or not seed:
            raise SimDeviceError("random_seed must be non-empty bytes")
        self._seed = bytes(seed)
        self._draws = 0

    def __call__(self, n: int) -> bytes:
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise SimDeviceError("random: n must be a non-negative int")
        shake = hashlib.shake_256(self._DOMAIN + self._seed + self._draws.to_bytes(8, "big"))
        self._draws += 1
        return shake.digest(n)


class SimDevice:
    """One simulated device, identified by its state directory.

    `random_seed` (opt-in, default None = the host's CSPRNG) makes `random()` a
    `SeededRandom` stream so an experiment (`laminate redteam --seed`) can be rerun with
    the very same watermark seed and salt. It makes that seed predictable to anyone who
    knows the random_seed, and a predictable watermark seed lets anyone regenerate the
    triggers, so a model trained this way must never be released. The simulator is never
    trusted by a verifier anyway; the mode exists only here, not on real hardware.
    """

    def __init__(self, state_dir=None, random_seed: bytes | None = None):
        self._seeded = None if random_seed is None else SeededRandom(random_seed)
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self._prepare_dir()
        with self._locked():
            if not (self.state_dir / _IDENTITY).exists():
                self._provision()
            self._load_identity()
        self._registers = [bytes(DIGEST_SIZE)] * REGISTER_COUNT
        self._log = []

    # -- identity ---------------------------------------------------------------

    def _prepare_dir(self) -> None:
        if self.state_dir.exists() and not self.state_dir.is_dir():
            raise SimDeviceError(f"{self.state_dir}: simulator state path is not a directory")
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise SimDeviceError(f"{self.state_dir}: cannot create simulator state: {exc.strerror}") \
                from None

    @contextmanager
    def _locked(self):
        """Serialise identity creation and counter updates across processes."""
        try:
            fd = os.open(self.state_dir / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SimDeviceError(f"{self.state_dir}: cannot lock simulator state: {exc.strerror}") \
                from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, name: str, data: bytes, mode: int = 0o600) -> None:
        """Write-then-rename so a reader never sees half a file."""
        path = self.state_dir / name
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _provision(self) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        root_key = ec.generate_private_key(ec.SECP256R1())
        ak_key = ec.generate_private_key(ec.SECP256R1())
        ak_spki = ak_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        device_id = "sim-" + hashlib.sha256(ak_spki).hexdigest()[:16]
        root_name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "laminate simulator"),
            x509.NameAttribute(NameOID.COMMON_NAME, ROOT_COMMON_NAME),
        ])
        root_cert = (
            x509.CertificateBuilder()
            .subject_name(root_name).issuer_name(root_name)
            .public_key(root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()),
                           critical=False)
            .sign(root_key, hashes.SHA256())
        )
        ak_cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "laminate simulator"),
                x509.NameAttribute(NameOID.COMMON_NAME,
                                   f"laminate SIMULATED attestation key {device_id}"),
            ]))
            .issuer_name(root_name)
            .public_key(ak_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256())
        )
        self._write(_ROOT_KEY, _private_pem(root_key))
        self._write(_AK_KEY, _private_pem(ak_key))
        self._write(_ROOT_CERT, root_cert.public_bytes(serialization.Encoding.PEM), 0o644)
        self._write(_AK_CERT, ak_cert.public_bytes(serialization.Encoding.PEM), 0o644)
        self._write(_STATE, _state_json({"counter": 0, "reset_count": 0, "clock_ms": 0}))
        created_ms = int(time.time() * 1000)
        # Written last: its presence means the identity is complete.
        self._write(_IDENTITY, json.dumps(
            {"device_id": device_id, "created_ms": created_ms}, indent=1).encode(), 0o644)

    def _load_identity(self) -> None:
        try:
            identity = json.loads((self.state_dir / _IDENTITY).read_bytes())
            self.device_id = identity["device_id"]
            self._created_ms = int(identity["created_ms"])
            self._ak_key = serialization.load_pem_private_key(
                (self.state_dir / _AK_KEY).read_bytes(), password=None)
            self._ak_cert = x509.load_pem_x509_certificate((self.state_dir / _AK_CERT).read_bytes())
            self._root_cert = x509.load_pem_x509_certificate(
                (self.state_dir / _ROOT_CERT).read_bytes())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SimDeviceError(f"{self.state_dir}: simulator state is damaged ({exc}); "
                                 "move it away to provision a new device") from None
        if not isinstance(self._ak_key, ec.EllipticCurvePrivateKey):
            raise SimDeviceError(f"{self.state_dir / _AK_KEY}: attestation key is not P-256")

    def _read_state(self) -> dict:
        try:
            state = json.loads((self.state_dir / _STATE).read_bytes())
            return {k: int(state[k]) for k in ("counter", "reset_count", "clock_ms")}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SimDeviceError(f"{self.state_dir / _STATE}: simulator state is damaged ({exc})") from None

    # -- registers --------------------------------------------------------------

    def extend(self, register: int, digest: bytes) -> bytes:
        """new = H(old || digest); returns the new value."""
        _check_register(register)
        if not isinstance(digest, (bytes, bytearray)) or len(digest) != DIGEST_SIZE:
            raise SimDeviceError(f"extend: digest must be {DIGEST_SIZE} bytes")
        value = hashlib.sha256(self._registers[register] + bytes(digest)).digest()
        self._registers[register] = value
        self._log.append({"register": register, "digest": bytes(digest)})
        return value

    def read(self, register: int) -> bytes:
        _check_register(register)
        return self._registers[register]

    def event_log(self) -> list:
        """Every extend and reset since this object was created, in order (a copy)."""
        return [dict(entry) for entry in self._log]

    def reset_registers(self, registers=None) -> None:
        """Zero the given registers (all when None); identity survives, reset_count grows."""
        selected = list(range(REGISTER_COUNT)) if registers is None else _selection(registers)
        with self._locked():
            state = self._read_state()
            state["reset_count"] += 1
            self._write(_STATE, _state_json(state))
        for register in selected:
            self._registers[register] = bytes(DIGEST_SIZE)
        self._log.append({"reset": selected})

    # -- attestation ------------------------------------------------------------

    def quote(self, registers, qualifying_data: bytes):
        """Sign the selected registers and the caller's nonce; returns (quote, r||s)."""
        selected = _selection(registers)
        if not isinstance(qualifying_data, (bytes, bytearray)):
            raise SimDeviceError("quote: qualifying_data must be bytes")
        if len(qualifying_data) > MAX_QUALIFYING_DATA:
            raise SimDeviceError(f"quote: qualifying_data longer than {MAX_QUALIFYING_DATA} bytes")
        with self._locked():
            state = self._read_state()
            state["counter"] += 1
            now_ms = max(int(time.time() * 1000) - self._created_ms, 0)
            state["clock_ms"] = max(state["clock_ms"], now_ms)
            self._write(_STATE, _state_json(state))
        info = {
            "version": QUOTE_VERSION,
            "backend": "sim",
            "device_id": self.device_id,
            "registers": selected,
            "register_digest": hashlib.sha256(
                b"".join(self._registers[r] for r in selected)).digest(),
            "qualifying_data": bytes(qualifying_data),
            "counter": state["counter"],
            "reset_count": state["reset_count"],
            "clock_ms": state["clock_ms"],
        }
        quote = cbor2.dumps(info, canonical=True)
        der = self._ak_key.sign(quote, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return quote, r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def certificate_chain(self) -> list:
        """[AK certificate DER, root certificate DER], leaf first."""
        return [self._ak_cert.public_bytes(serialization.Encoding.DER),
                self._root_cert.public_bytes(serialization.Encoding.DER)]

    def root_certificate_pem(self) -> bytes:
        return self._root_cert.public_bytes(serialization.Encoding.PEM)

    def random(self, n: int) -> bytes:
        """The device's randomness: the host's CSPRNG (a simulator has no other), or the
        seeded stream when the device was opened with `random_seed`."""
        if self._seeded is not None:
            return self._seeded(n)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise SimDeviceError("random: n must be a non-negative int")
        return os.urandom(n)


def _check_register(register) -> None:
    if not isinstance(register, int) or isinstance(register, bool) or not (
            0 <= register < REGISTER_COUNT):
        raise SimDeviceError(f"register {register!r} is not in 0..{REGISTER_COUNT - 1}")


def _selection(registers) -> list:
    registers = list(registers)
    for register in registers:
        _check_register(register)
    if not registers:
        raise SimDeviceError("register selection is empty")
    return sorted(set(registers))


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def _private_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _state_json(state: dict) -> bytes:
    return json.dumps(state, sort_keys=True).encode()
