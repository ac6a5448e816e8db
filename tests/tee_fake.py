"""A fake configfs-tsm tree and a fake "kernel" that answers report requests in it with
SEV-SNP-shaped reports signed by a TEST chain made here (ARK -> ASK -> VCEK, RSA-PSS
links, P-384 VCEK), laid out as the SEV-SNP ABI's ATTESTATION_REPORT, or with TDX
quotes (tee_fake_tdx.FakeDcap re-issues a real one under a test DCAP chain).
"""
from __future__ import annotations

import datetime as dt
import struct
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

AMD = "1.3.6.1.4.1.3704.1."
MEASUREMENT = bytes(range(48))
CHIP_ID = bytes(range(64, 128))
TCB = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
GUEST_POLICY = 0x30000
DEBUG = 1 << 19


def _pss():
    return padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def _cert(subject, issuer_name, key, issuer_key, *, ca, extensions=()):
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1))
               .not_valid_after(now + dt.timedelta(days=365))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(issuer_key, hashes.SHA384(), rsa_padding=_pss())


@dataclass
class FakeAmdChain:
    """ARK -> ASK -> VCEK, as AMD's KDS issues them (names are test names)."""
    tcb: dict = field(default_factory=lambda: dict(TCB))
    chip_id: bytes = CHIP_ID

    def __post_init__(self):
        self.ark_key = rsa.generate_private_key(65537, 2048)
        self.ask_key = rsa.generate_private_key(65537, 2048)
        self.vcek_key = ec.generate_private_key(ec.SECP384R1())
        self.ark = _cert("TEST-ARK", "TEST-ARK", self.ark_key, self.ark_key, ca=True)
        self.ask = _cert("TEST-ASK", "TEST-ARK", self.ask_key, self.ark_key, ca=True)
        spl = {"bootloader": "3.1", "tee": "3.2", "snp": "3.3", "microcode": "3.8"}
        exts = [x509.UnrecognizedExtension(x509.ObjectIdentifier(AMD + spl[k]),
                                           bytes([2, 1, v])) for k, v in self.tcb.items()]
        exts.append(x509.UnrecognizedExtension(x509.ObjectIdentifier(AMD + "4"),
                                               b"\x04\x40" + self.chip_id))
        self.vcek = _cert("TEST-VCEK", "TEST-ASK", self.vcek_key, self.ask_key, ca=False,
                          extensions=exts)

    def der(self, cert) -> bytes:
        return cert.public_bytes(serialization.Encoding.DER)

    @property
    def ark_pem(self) -> bytes:
        return self.ark.public_bytes(serialization.Encoding.PEM)

    def report(self, report_data: bytes, *, measurement=MEASUREMENT, guest_policy=GUEST_POLICY,
               tcb=None) -> bytes:
        """A signed version-2 attestation report (0x4A0 bytes)."""
        t = tcb or self.tcb
        raw = bytearray(0x4A0)
        struct.pack_into("<IIQ", raw, 0, 2, 0, guest_policy)
        struct.pack_into("<II", raw, 0x30, 0, 1)                 # VMPL 0, ECDSA P-384
        assert len(report_data) == 64
        raw[0x50:0x90] = report_data
        raw[0x90:0xC0] = measurement
        raw[0x180:0x188] = bytes([t["bootloader"], t["tee"], 0, 0, 0, 0, t["snp"], t["microcode"]])
        raw[0x1A0:0x1E0] = self.chip_id
        return self.sign(bytes(raw))

    def sign(self, raw: bytes) -> bytes:
        """(Re-)sign bytes 0..0x29F with the VCEK, r and s little-endian."""
        raw = bytearray(raw)
        r, s = decode_dss_signature(self.vcek_key.sign(bytes(raw[:0x2A0]), ec.ECDSA(hashes.SHA384())))
        raw[0x2A0:0x330] = r.to_bytes(72, "little") + s.to_bytes(72, "little")
        return bytes(raw)

    def cert_table(self) -> bytes:
        entries = [("63da758d-e664-4564-adc5-f4b93be8accd", self.der(self.vcek)),
                   ("4ab7b379-bbac-4fe4-a02f-05aef327c782", self.der(self.ask)),
                   ("c0b406a4-a803-4952-9743-3fb6014cd0ae", self.der(self.ark))]
        offset, table, blobs = 24 * (len(entries) + 1), b"", b""
        for guid, der in entries:
            table += uuid.UUID(guid).bytes_le + struct.pack("<II", offset + len(blobs), len(der))
            blobs += der
        return table + bytes(24) + blobs


class FakeKernel:
    """Answers requests under `root/report` until stopped (a thread; tests run the
    prover in-process or as a `laminate train` subprocess against the same tree)."""

    def __init__(self, root: Path, chain: FakeAmdChain | None = None, *, provider="sev_guest",
                 tdx_quote=None, auxblob=True):
        """tdx_quote: report data -> TDX quote (a FakeDcap's `quote`, or a recorded one)."""
        self.report_dir = Path(root) / "report"
        self.report_dir.mkdir(parents=True, exist_ok=True)
        self.chain = chain or FakeAmdChain()
        self.provider, self.tdx_quote, self.auxblob = provider, tdx_quote, auxblob
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.answered = 0

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

    def _loop(self):
        while not self._stop.wait(0.01):
            for entry in list(self.report_dir.iterdir()):
                inblob = entry / "inblob"
                if inblob.is_file() and not (entry / "outblob").exists():
                    try:
                        data = inblob.read_bytes()
                        if len(data) == 64:      # the prover's write may be under way
                            self._answer(entry, data)
                    except OSError:      # the prover removed the entry meanwhile
                        pass

    def _answer(self, entry, report_data):
        if self.tdx_quote is not None:
            out = self.tdx_quote(report_data)
        else:
            out = self.chain.report(report_data)
            if self.auxblob:
                _write(entry / "auxblob", self.chain.cert_table())
        _write(entry / "provider", self.provider.encode() + b"\n")
        _write(entry / "generation", b"1\n")
        _write(entry / "outblob", out)      # last: the prover reads it first
        self.answered += 1


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


class FakeGpu:
    """A GPU-shaped SPDM 1.1 measurement responder with a test identity chain (P-384)."""

    def __init__(self):
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.key = ec.generate_private_key(ec.SECP384R1())
        now = dt.datetime.now(dt.timezone.utc)

        def cert(name, issuer, key, signer, ca):
            return (x509.CertificateBuilder()
                    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                    .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                    .public_key(key.public_key()).serial_number(x509.random_serial_number())
                    .not_valid_before(now - dt.timedelta(days=1))
                    .not_valid_after(now + dt.timedelta(days=365))
                    .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                    .sign(signer, hashes.SHA384()))
        self.root = cert("TEST GPU CA", "TEST GPU CA", self.root_key, self.root_key, True)
        self.leaf = cert("TEST GPU AK", "TEST GPU CA", self.key, self.root_key, False)

    @property
    def chain(self) -> list[bytes]:
        return [c.public_bytes(serialization.Encoding.DER) for c in (self.leaf, self.root)]

    @property
    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)

    def measurements(self, nonce: bytes) -> bytes:
        request = bytes([0x11, 0xE0, 0x01, 0xFF]) + nonce + b"\x00"
        value = bytes(48)
        block = bytes([1, 1]) + struct.pack("<H", 3 + len(value)) + b"\x00" \
            + struct.pack("<H", len(value)) + value
        response = bytes([0x11, 0x60, 0, 0, 1]) + len(block).to_bytes(3, "little") + block \
            + bytes(32) + struct.pack("<H", 0)
        r, s = decode_dss_signature(self.key.sign(request + response, ec.ECDSA(hashes.SHA384())))
        return request + response + r.to_bytes(48, "big") + s.to_bytes(48, "big")
