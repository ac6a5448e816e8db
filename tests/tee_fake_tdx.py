"""A TEST DCAP chain for TDX: a recorded real quote and its collateral re-issued under
test keys, so a fake kernel can answer with quotes carrying our report data.

Kept from the real quote: the header, the TD report (except report data), the QE report
(except its report data), the PCK certificate's Intel SGX extension (FMSPC, TCB
components), and the exact TCB Info / QE Identity JSON bodies. Replaced: every key and
signature (root, PCK CA, PCK, TCB signing, attestation key) and both CRLs. Names are
copied so that a verifier sees the same structure; only the root differs, which no
policy but a test's trusts.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import struct

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from cards.tee_layout import split_tdx_quote

SGX_EXTENSION = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
NOT_BEFORE = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
NOT_AFTER = dt.datetime(2035, 1, 1, tzinfo=dt.timezone.utc)
REPORT_DATA = 48 + 520            # v4: header + offset of REPORTDATA in TDREPORT 1.0


def _raw_sig(key, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _pem(cert) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class FakeDcap:
    """Issues TDX v4 quotes for any report data, and their collateral, under test keys."""

    def __init__(self, quote: bytes, collateral: dict):
        self.signed, sig = split_tdx_quote(quote)
        cert_type, _ = struct.unpack_from("<HI", sig, 128)
        assert cert_type == 6, "expected QE report certification data"
        self.qe_report = sig[134:134 + 384]
        auth_size = struct.unpack_from("<H", sig, 582)[0]
        self.qe_auth = sig[584:584 + auth_size]
        pos = 584 + auth_size
        _, size = struct.unpack_from("<HI", sig, pos)
        real = x509.load_pem_x509_certificates(sig[pos + 6:pos + 6 + size])
        self.tcb_info, self.qe_identity = collateral["tcb_info"], collateral["qe_identity"]
        self._issue(real)

    def _cert(self, subject, issuer, key, signer, *, ca, extensions=()):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(NOT_BEFORE).not_valid_after(NOT_AFTER)
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                  critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       signer.public_key()), critical=False))
        for ext in extensions:
            builder = builder.add_extension(ext.value, critical=ext.critical)
        return builder.sign(signer, hashes.SHA256())

    def _issue(self, real):
        leaf, platform_ca, root = real
        new = lambda: ec.generate_private_key(ec.SECP256R1())  # noqa: E731
        self.root_key, self.ca_key, self.pck_key, self.tcb_key, self.att_key = (
            new(), new(), new(), new(), new())
        self.root = self._cert(root.subject, root.subject, self.root_key, self.root_key, ca=True)
        self.ca = self._cert(platform_ca.subject, root.subject, self.ca_key, self.root_key, ca=True)
        self.pck = self._cert(leaf.subject, platform_ca.subject, self.pck_key, self.ca_key, ca=False,
                              extensions=[leaf.extensions.get_extension_for_oid(SGX_EXTENSION)])
        tcb_name = x509.Name.from_rfc4514_string(
            "CN=Intel SGX TCB Signing,O=Intel Corporation,L=Santa Clara,ST=CA,C=US")
        self.tcb_cert = self._cert(tcb_name, root.subject, self.tcb_key, self.root_key, ca=False)

    @property
    def root_pem(self) -> bytes:
        return _pem(self.root).encode()

    def _crl(self, issuer, key, this_update, next_update) -> str:
        crl = (x509.CertificateRevocationListBuilder().issuer_name(issuer.subject)
               .last_update(this_update).next_update(next_update)
               .add_extension(x509.CRLNumber(1), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   key.public_key()), critical=False)
               .sign(key, hashes.SHA256()))
        return crl.public_bytes(serialization.Encoding.DER).hex()

    def collateral(self, tcb_status: str | None = None) -> dict:
        """Collateral in the dcap-qvl QuoteCollateralV3 shape, current when the real
        TCB Info and QE Identity are (their dates are kept: they are signed JSON).
        `tcb_status`: Intel's verdict for the platform's TCB level, re-signed."""
        info = json.loads(self.tcb_info)
        tcb_info = self.tcb_info
        if tcb_status is not None:
            info["tcbLevels"][0]["tcbStatus"] = tcb_status
            info["tcbLevels"][0]["advisoryIDs"] = ["INTEL-SA-00837"]
            tcb_info = json.dumps(info, separators=(",", ":"))
        issued = dt.datetime.fromisoformat(info["issueDate"].replace("Z", "+00:00"))
        window = (issued, issued + dt.timedelta(days=25))
        return {"pck_crl_issuer_chain": _pem(self.ca) + _pem(self.root),
                "root_ca_crl": self._crl(self.root, self.root_key, *window),
                "pck_crl": self._crl(self.ca, self.ca_key, *window),
                "tcb_info_issuer_chain": _pem(self.tcb_cert) + _pem(self.root),
                "tcb_info": tcb_info,
                "tcb_info_signature": _raw_sig(self.tcb_key, tcb_info.encode()).hex(),
                "qe_identity_issuer_chain": _pem(self.tcb_cert) + _pem(self.root),
                "qe_identity": self.qe_identity,
                "qe_identity_signature": _raw_sig(self.tcb_key, self.qe_identity.encode()).hex()}

    def quote(self, report_data: bytes, *, edit=None) -> bytes:
        """A v4 quote over the real TD report with `report_data`; `edit(bytearray)` may
        change the signed header+body first (to play a tampered TD report)."""
        assert len(report_data) == 64
        body = bytearray(self.signed)
        body[REPORT_DATA:REPORT_DATA + 64] = report_data
        if edit is not None:
            edit(body)
        point = self.att_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
        qe = bytearray(self.qe_report)
        qe[320:384] = hashlib.sha256(point + self.qe_auth).digest() + bytes(32)
        chain = (_pem(self.pck) + _pem(self.ca) + _pem(self.root)).encode()
        inner = struct.pack("<HI", 5, len(chain)) + chain
        certification = bytes(qe) + _raw_sig(self.pck_key, bytes(qe)) \
            + struct.pack("<H", len(self.qe_auth)) + self.qe_auth + inner
        signature = _raw_sig(self.att_key, bytes(body)) + point \
            + struct.pack("<HI", 6, len(certification)) + certification
        return bytes(body) + struct.pack("<I", len(signature)) + signature
