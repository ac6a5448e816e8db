"""Confidential VMs (Intel TDX, AMD SEV-SNP) as attestation backends, through the Linux
configfs-tsm report interface.

The kernel offers one directory per report request under /sys/kernel/config/tsm/report
(6.7+): `mkdir` an entry, write 64 bytes of report data to `inblob`, read `outblob`
(the SNP attestation report or the TDX quote), `provider` (sev_guest / tdx_guest),
`auxblob` (SNP: the host's certificate table, VCEK/ASK/ARK) and `generation`, which
counts writes so a concurrent writer is noticed. `rmdir` frees it.

Registers. The session's registers are kept in software (SHA-256 extends from zero,
as in the simulator) and bound into the report data: report_data = H(claims) ||
H(registers), see verifier/tee_common.py. On TDX the kernel (6.16+) also lets user
space extend RTMR2/RTMR3 through /sys/class/misc/tdx_guest/measurements/rtmr3:sha384;
when that file exists each event digest (zero-padded to 48 bytes) is also extended into
RTMR3, and the evidence records RTMR3's value at start, so a verifier can replay the log
into the hardware register too. SEV-SNP has no runtime registers: the report data is
the only binding, made by software inside the measured VM.

Paths: $LAMINATE_TSM_REPORT (default the kernel's) and $LAMINATE_TDX_MEASUREMENTS
(default the kernel's); tests point them at a fake tree. When the host supplies no SNP
certificate table, $LAMINATE_SNP_CHAIN names a PEM file with the VCEK, ASK and ARK. TDX collateral (Intel PCS TCB
Info, QE Identity, CRLs; a dcap-qvl QuoteCollateralV3 JSON) comes from
$LAMINATE_TDX_COLLATERAL: the guest cannot produce it, it is fetched from Intel.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import time
import uuid
from pathlib import Path

from cards.errors import CardFormatError, LaminateError
from cards.tee_layout import split_tdx_quote

TSM_REPORT = "/sys/kernel/config/tsm/report"
TDX_MEASUREMENTS = "/sys/class/misc/tdx_guest/measurements"
PROVIDERS = {"snp": "sev_guest", "tdx": "tdx_guest"}
MAX_BLOB = 64 << 10
WAIT_S = 10.0      # a real configfs answers on read; a test double fills files asynchronously
# The SEV-SNP extended-report certificate table: GUID, offset, length; zero GUID ends it.
CERT_GUIDS = {"63da758d-e664-4564-adc5-f4b93be8accd": "vcek",
              "a8074bc2-a25a-483e-aae6-39c045a0b8a1": "vlek",
              "4ab7b379-bbac-4fe4-a02f-05aef327c782": "ask",
              "c0b406a4-a803-4952-9743-3fb6014cd0ae": "ark"}
_ZERO = bytes(32)


def parse_cert_table(blob: bytes) -> dict:
    """The certificate table -> {vcek|vlek|ask|ark: DER}."""
    certs, pos = {}, 0
    while pos + 24 <= len(blob):
        guid, offset, length = blob[pos:pos + 16], *struct.unpack_from("<II", blob, pos + 16)
        if guid == bytes(16):
            return certs
        if offset + length > len(blob):
            raise LaminateError("snp backend: auxblob certificate entry runs past its end")
        name = CERT_GUIDS.get(str(uuid.UUID(bytes_le=guid)))
        if name:
            certs[name] = blob[offset:offset + length]
        pos += 24
    raise LaminateError("snp backend: auxblob certificate table is not terminated")


class TsmBackend:
    """Backend `tdx` or `snp` over configfs-tsm."""

    def __init__(self, name: str, *, report_dir=None, measurements_dir=None):
        if name not in PROVIDERS:
            raise LaminateError(f"tsm backend: unknown TEE {name!r}")
        self.name = name
        self.report_dir = Path(report_dir or os.environ.get("LAMINATE_TSM_REPORT") or TSM_REPORT)
        if not self.report_dir.is_dir():
            raise LaminateError(f"{name} backend: no configfs-tsm report interface at "
                                f"{self.report_dir} (not a confidential VM, or configfs not mounted)")
        mr = Path(measurements_dir or os.environ.get("LAMINATE_TDX_MEASUREMENTS") or TDX_MEASUREMENTS)
        self.rtmr = mr / "rtmr3:sha384" if name == "tdx" and (mr / "rtmr3:sha384").is_file() else None
        self._registers = None
        self._values = {}
        self._rtmr_base = None

    def start(self, registers: list) -> None:
        self._registers = sorted(set(registers))
        self._values = {r: _ZERO for r in self._registers}
        if self.rtmr is not None:
            self._rtmr_base = self.rtmr.read_bytes()
            if len(self._rtmr_base) != 48:
                raise LaminateError(f"tdx backend: {self.rtmr} did not read as 48 bytes")

    def extend(self, event: dict) -> None:
        if self._registers is None:
            raise LaminateError(f"{self.name} backend: extend before start")
        r = event["register"]
        if r not in self._values:
            raise LaminateError(f"{self.name} backend: register {r} is not one this session "
                                f"quotes ({self._registers})")
        digest = bytes(event["digest"])
        self._values[r] = hashlib.sha256(self._values[r] + digest).digest()
        if self.rtmr is not None:
            try:
                self.rtmr.write_bytes(digest.ljust(48, b"\0"))
            except OSError as exc:
                raise LaminateError(f"tdx backend: extending {self.rtmr} failed: "
                                    f"{exc.strerror}") from None

    def quote(self, qualifying_data: bytes) -> dict:
        if self._registers is None:
            raise LaminateError(f"{self.name} backend: quote before start")
        registers = hashlib.sha256(b"".join(self._values[r] for r in self._registers)).digest()
        if len(qualifying_data) != 32:
            raise LaminateError(f"{self.name} backend: qualifying data must be 32 bytes (H(claims))")
        report_data = bytes(qualifying_data) + registers
        outblob, auxblob = self._request(report_data)
        extra = {"registers": list(self._registers), "provider": PROVIDERS[self.name]}
        if self.name == "snp":
            return self._snp_evidence(outblob, auxblob, extra)
        return self._tdx_evidence(outblob, extra)

    def _request(self, report_data: bytes) -> tuple[bytes, bytes | None]:
        entry = self.report_dir / f"laminate-{os.getpid()}-{time.monotonic_ns()}"
        try:
            entry.mkdir()
        except OSError as exc:
            raise LaminateError(f"{self.name} backend: cannot create {entry}: {exc.strerror}") from None
        try:
            (entry / "inblob").write_bytes(report_data)
            outblob = _read(entry / "outblob", self.name)
            provider = _read(entry / "provider", self.name).decode(errors="replace").strip()
            generation = _read(entry / "generation", self.name).decode(errors="replace").strip()
            if provider != PROVIDERS[self.name]:
                raise LaminateError(f"{self.name} backend: configfs-tsm provider is {provider!r}, "
                                    f"not {PROVIDERS[self.name]} (wrong TEE?)")
            if generation != "1":
                raise LaminateError(f"{self.name} backend: report entry written {generation} "
                                    "times: another writer raced this request")
            aux = entry / "auxblob"
            auxblob = aux.read_bytes()[:MAX_BLOB] if aux.is_file() else None
            return outblob, auxblob
        finally:
            # configfs removes an entry's attributes with it; a plain directory (a test
            # double) needs them gone first.
            for child in entry.iterdir():
                try:
                    child.unlink()
                except OSError:
                    pass
            try:
                entry.rmdir()
            except OSError:
                pass

    def _snp_evidence(self, report: bytes, auxblob, extra) -> dict:
        if len(report) != 0x4A0:
            raise LaminateError(f"snp backend: outblob is {len(report)} bytes, not an SNP report")
        certs = parse_cert_table(auxblob) if auxblob else {}
        signer = certs.get("vcek") or certs.get("vlek")
        if signer and "ask" in certs and "ark" in certs:
            chain = [signer, certs["ask"], certs["ark"]]
        else:
            chain = _chain_file(os.environ.get("LAMINATE_SNP_CHAIN"))
        return {"backend": "snp", "quote": report[:0x2A0], "signature": report[0x2A0:],
                "cert_chain": chain, "extra": extra}

    def _tdx_evidence(self, quote: bytes, extra) -> dict:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding
        try:
            signed, signature = split_tdx_quote(quote, "outblob")
        except CardFormatError as exc:
            raise LaminateError(f"tdx backend: outblob: {exc.reason}") from None
        pem_start = signature.find(b"-----BEGIN CERTIFICATE-----")
        chain = x509.load_pem_x509_certificates(signature[pem_start:].rstrip(b"\0")) \
            if pem_start >= 0 else []
        if not chain:
            raise LaminateError("tdx backend: the quote carries no PCK certificate chain")
        path = os.environ.get("LAMINATE_TDX_COLLATERAL")
        if not path:
            raise LaminateError("tdx backend: set LAMINATE_TDX_COLLATERAL to the quote's "
                                "collateral (dcap-qvl QuoteCollateralV3 JSON from Intel PCS)")
        try:
            extra["collateral"] = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LaminateError(f"{path}: unreadable collateral ({exc})") from None
        if self.rtmr is not None:
            extra["rtmr"] = {"index": 3, "base": self._rtmr_base}
        return {"backend": "tdx", "quote": signed, "signature": signature,
                "cert_chain": [c.public_bytes(Encoding.DER) for c in chain], "extra": extra}

    def random(self, n: int) -> bytes:
        return os.urandom(n)     # the guest kernel's CSPRNG, seeded inside the TEE

    def close(self) -> None:
        self._registers = None


def _chain_file(path) -> list[bytes]:
    """[VCEK, ASK, ARK] as DER from a PEM file (from AMD's KDS: the chip's VCEK for its
    reported TCB, then the product's cert_chain), for hosts that supply no auxblob."""
    if not path:
        raise LaminateError("snp backend: the host supplied no VCEK/ASK/ARK certificates "
                            "(auxblob); set LAMINATE_SNP_CHAIN to a PEM file with the VCEK, "
                            "ASK and ARK from AMD's key distribution service")
    import warnings

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    try:
        with warnings.catch_warnings():      # AMD VCEKs have serial number 0
            warnings.simplefilter("ignore")
            certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise LaminateError(f"{path}: not a PEM certificate chain ({exc})") from None
    if len(certs) != 3:
        raise LaminateError(f"{path}: expected 3 certificates (VCEK, ASK, ARK), got {len(certs)}")
    return [c.public_bytes(Encoding.DER) for c in certs]


def _read(path: Path, name: str) -> bytes:
    deadline = time.monotonic() + WAIT_S
    while not path.is_file():
        if time.monotonic() > deadline:
            raise LaminateError(f"{name} backend: {path} was not produced")
        time.sleep(0.01)
    data = path.read_bytes()
    if len(data) > MAX_BLOB:
        raise LaminateError(f"{name} backend: {path} larger than {MAX_BLOB} bytes")
    return data

