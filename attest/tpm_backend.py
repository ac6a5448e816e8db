"""A TPM 2.0 as the attestation backend (ESAPI through tpm2-pytss).

Registers map to PCRs of the SHA-256 bank (default: register 16 -> PCR 16, 23 -> PCR 23,
the two PCRs locality 0 may reset, so a session starts from zeros like the simulator).
Another mapping keeps clear of PCRs a platform's boot chain uses; it must keep the
registers' order and every mapped PCR must read zero after start, because the verifier
replays the log from zeros.

Keys. The endorsement key (EK) is re-created from the TCG EK template (RSA 2048, its
certificate read from NV index 0x01c00002). The attestation key (AK) is a *primary*
restricted signing key of the endorsement hierarchy (ECC P-256/ECDSA-SHA256, RSA 2048
RSASSA-SHA256 where ECC is missing): a primary is re-derived from the hierarchy seed by
its template, so the same AK comes back on every run with nothing stored on disk.

AK to EK binding: credential activation, done once at enrollment with a registrar
(`enroll`), see verifier/tpm_trust.py for why. The EK cannot sign, so no record the
TPM makes alone could tie a quote to the EK certificate; a verifier working offline
from a card therefore trusts the AK only through the registrar's AK certificate, which
the card carries in `extra.binding`. The enrollment record lives in the state directory
($LAMINATE_TPM_DIR, else $LAMINATE_HOME/tpm, else ~/.local/share/laminate/tpm), keyed by
the AK's Name, and survives reboots because the AK does.

Evidence: `quote` = marshalled TPMS_ATTEST, `signature` = marshalled TPMT_SIGNATURE,
`cert_chain` = [EK certificate, its issuers as enrolled], `extra` = {ak_public (TPM2B_PUBLIC),
ak_name, ek_public (TPM2B_PUBLIC), pcr_map [[register, pcr], ...], binding}.
"""
from __future__ import annotations

import os
from pathlib import Path

from cards import cbor
from cards.errors import LaminateError

DEFAULT_PCRS = {16: 16, 23: 23}
DEFAULT_TCTI = "device:/dev/tpmrm0"
EK_CERT_NV_RSA = 0x01C00002


def default_state_dir() -> Path:
    if os.environ.get("LAMINATE_TPM_DIR"):
        return Path(os.environ["LAMINATE_TPM_DIR"])
    if os.environ.get("LAMINATE_HOME"):
        return Path(os.environ["LAMINATE_HOME"]) / "tpm"
    return Path.home() / ".local" / "share" / "laminate" / "tpm"


def _tss():
    """Import tpm2-pytss quietly (the C stack logs every TPM error code to stderr)."""
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    try:
        import tpm2_pytss
        from tpm2_pytss import utils
    except ImportError as exc:
        raise LaminateError(f"tpm backend: tpm2-pytss is not usable ({exc}); "
                            "install the 'tpm' extra and libtss2") from None
    return tpm2_pytss, utils


def _pcr_map(pcrs) -> dict:
    if pcrs is None:
        return dict(DEFAULT_PCRS)
    if isinstance(pcrs, (list, tuple)):
        pcrs = dict(zip(sorted(DEFAULT_PCRS), pcrs))
    mapping = {int(r): int(p) for r, p in dict(pcrs).items()}
    regs = sorted(mapping)
    if any(not 0 <= mapping[r] <= 23 for r in regs):
        raise LaminateError("tpm_pcrs: PCR indices must be 0..23")
    if [mapping[r] for r in regs] != sorted(set(mapping.values())):
        raise LaminateError("tpm_pcrs: the mapping must keep the registers' order and use "
                            "distinct PCRs (the quote digests PCRs in ascending order)")
    return mapping


class TpmBackend:
    """Backend over a TPM 2.0 reached through a TCTI string (swtpm:…, device:…, mssim:…)."""

    name = "tpm"

    def __init__(self, tcti: str | None = None, *, pcrs=None, state_dir=None,
                 require_enrollment: bool = True):
        self._t, self._utils = _tss()
        t = self._t
        self.tcti = tcti or DEFAULT_TCTI
        self.pcr_map = _pcr_map(pcrs)
        self.state_dir = Path(state_dir) if state_dir else default_state_dir()
        self.require_enrollment = require_enrollment
        try:
            self.esapi = t.ESAPI(self.tcti)
        except Exception as exc:  # TCTI load/connect failures come as several types
            raise LaminateError(f"tpm backend: cannot open TPM at {self.tcti!r}: {exc}") from None
        self._registers = None
        try:
            self._load_keys()
        except t.TSS2_Exception as exc:
            self.esapi.close()
            raise LaminateError(f"tpm backend: creating the EK/AK failed: {exc}") from None

    def _load_keys(self) -> None:
        t, e = self._t, self.esapi
        self.ek_cert, self._ek_template = self._utils.create_ek_template(
            "EK-RSA2048", self._utils.NVReadEK(e))
        ek = self._create_ek()
        self.ek_public = bytes(e.read_public(ek)[0].marshal())
        e.flush_context(ek)  # a TPM has few object slots; the EK is only needed to enroll
        attrs = (t.TPMA_OBJECT.RESTRICTED | t.TPMA_OBJECT.SIGN_ENCRYPT | t.TPMA_OBJECT.FIXEDTPM
                 | t.TPMA_OBJECT.FIXEDPARENT | t.TPMA_OBJECT.SENSITIVEDATAORIGIN
                 | t.TPMA_OBJECT.USERWITHAUTH)
        last = None
        for spec in ("ecc256:ecdsa-sha256:null", "rsa2048:rsassa-sha256:null"):
            try:
                tmpl = t.TPM2B_PUBLIC.parse(spec, objectAttributes=attrs)
                self.ak, ak_pub, *_ = e.create_primary(None, tmpl, t.ESYS_TR.ENDORSEMENT)
                break
            except t.TSS2_Exception as exc:
                last = exc
        else:
            raise last
        self.ak_public = bytes(ak_pub.marshal())
        self.ak_name = bytes(e.tr_get_name(self.ak))

    def _create_ek(self):
        return self.esapi.create_primary(None, self._ek_template, self._t.ESYS_TR.ENDORSEMENT)[0]

    # -- enrollment -------------------------------------------------------------------

    @property
    def enrollment_path(self) -> Path:
        return self.state_dir / f"ak-{self.ak_name.hex()}.cbor"

    def enrollment(self) -> dict | None:
        """The stored registrar record for this AK, or None when not enrolled."""
        path = self.enrollment_path
        if not path.is_file():
            return None
        try:
            record = cbor.loads(path.read_bytes())
        except LaminateError as exc:
            raise LaminateError(f"{path}: unreadable enrollment record ({exc})") from None
        return record

    def activate_credential(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """TPM2_ActivateCredential with this AK and EK (the EK needs a PolicySecret session)."""
        t, e = self._t, self.esapi
        blob, _ = t.TPM2B_ID_OBJECT.unmarshal(credential_blob)
        secret, _ = t.TPM2B_ENCRYPTED_SECRET.unmarshal(encrypted_secret)
        ek = self._create_ek()
        session = e.start_auth_session(t.ESYS_TR.NONE, t.ESYS_TR.NONE, t.TPM2_SE.POLICY,
                                       t.TPMT_SYM_DEF(algorithm=t.TPM2_ALG.NULL), t.TPM2_ALG.SHA256)
        try:
            e.policy_secret(t.ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
            return bytes(e.activate_credential(self.ak, ek, blob, secret,
                                               session1=t.ESYS_TR.PASSWORD, session2=session))
        except t.TSS2_Exception as exc:
            raise LaminateError(f"tpm backend: credential activation failed: {exc}") from None
        finally:
            e.flush_context(session)
            e.flush_context(ek)

    def save_enrollment(self, ak_certificate: bytes, registrar_chain=(), ek_issuers=()) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        record = {"method": "credential-activation", "ak_certificate": bytes(ak_certificate),
                  "chain": [bytes(c) for c in registrar_chain],
                  "ek_issuers": [bytes(c) for c in ek_issuers]}
        self.enrollment_path.write_bytes(cbor.dumps(record))
        return self.enrollment_path

    # -- Backend protocol ---------------------------------------------------------------

    def start(self, registers: list) -> None:
        t, e = self._t, self.esapi
        if self.require_enrollment and self.enrollment() is None:
            raise LaminateError(f"tpm backend: the attestation key {self.ak_name.hex()} is not "
                                f"enrolled (no {self.enrollment_path}); enroll it with a registrar first")
        unknown = [r for r in registers if r not in self.pcr_map]
        if unknown:
            raise LaminateError(f"tpm_pcrs: no PCR mapped for register(s) {unknown}")
        regs = sorted(set(registers))
        try:
            for r in regs:
                e.pcr_reset(self._pcr_handle(r))
        except t.TSS2_Exception as exc:
            raise LaminateError(f"tpm_pcrs: cannot reset PCR {self.pcr_map[r]} at locality 0 "
                                f"({exc}); map register {r} to PCR 16 or 23") from None
        for r, value in zip(regs, self._read(regs)):
            if value != bytes(32):
                raise LaminateError(f"tpm_pcrs: PCR {self.pcr_map[r]} is not zero after reset; "
                                    f"map register {r} to a resettable or unused PCR")
        self._registers = regs

    def _pcr_handle(self, register: int):
        return getattr(self._t.ESYS_TR, f"PCR{self.pcr_map[register]}")

    def _selection(self, regs) -> str:
        return "sha256:" + ",".join(str(self.pcr_map[r]) for r in regs)

    def _read(self, regs) -> list[bytes]:
        _, _, values = self.esapi.pcr_read(self._selection(regs))
        return [bytes(d) for d in values]

    def read(self, register: int) -> bytes:
        """Current value of a register's PCR (SHA-256 bank)."""
        return self._read([register])[0]

    def extend(self, event: dict) -> None:
        t = self._t
        if self._registers is None:
            raise LaminateError("tpm backend: extend before start")
        r = event["register"]
        if r not in self._registers:
            raise LaminateError(f"tpm backend: register {r} is not one this session quotes "
                                f"({self._registers})")
        digest = t.TPML_DIGEST_VALUES([t.TPMT_HA(hashAlg=t.TPM2_ALG.SHA256,
                                                 digest=t.TPMU_HA(sha256=bytes(event["digest"])))])
        try:
            self.esapi.pcr_extend(self._pcr_handle(r), digest)
        except t.TSS2_Exception as exc:
            raise LaminateError(f"tpm backend: PCR_Extend of PCR {self.pcr_map[r]} failed: {exc}") from None

    def quote(self, qualifying_data: bytes) -> dict:
        t = self._t
        if self._registers is None:
            raise LaminateError("tpm backend: quote before start")
        try:
            attest, signature = self.esapi.quote(self.ak, self._selection(self._registers),
                                                 bytes(qualifying_data))
        except t.TSS2_Exception as exc:
            raise LaminateError(f"tpm backend: TPM2_Quote failed: {exc}") from None
        record = self.enrollment() or {"method": "none"}
        binding = {k: record[k] for k in ("method", "ak_certificate", "chain") if k in record}
        chain = [self.ek_cert] if self.ek_cert else []
        chain += list(record.get("ek_issuers", []))
        return {"backend": "tpm",
                "quote": bytes(attest.marshal())[2:],          # TPM2B_ATTEST -> TPMS_ATTEST
                "signature": bytes(signature.marshal()),
                "cert_chain": [bytes(c) for c in chain],
                "extra": {"ak_public": self.ak_public, "ak_name": self.ak_name,
                          "ek_public": self.ek_public,
                          "pcr_map": [[r, self.pcr_map[r]] for r in self._registers],
                          "binding": binding}}

    def random(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += bytes(self.esapi.get_random(min(32, n - len(out))))
        return out

    def close(self) -> None:
        self._registers = None
        if self.esapi is not None:
            try:
                self.esapi.flush_context(self.ak)
            except self._t.TSS2_Exception:
                pass
            self.esapi.close()
            self.esapi = None


def enroll(backend: TpmBackend, registrar, ek_issuers=()) -> Path:
    """Enroll the backend's AK with `registrar` (challenge/complete, as in verifier.tpm_trust).

    In production the registrar is a separate party reached over the network; the
    exchange is the same three messages: EK certificate + public areas, the encrypted
    credential, the recovered secret.
    """
    ek_issuers = [bytes(c) for c in ek_issuers]
    if not backend.ek_cert:
        raise LaminateError("tpm backend: this TPM has no EK certificate in NV; cannot enroll")
    challenge = registrar.challenge([backend.ek_cert, *ek_issuers], backend.ek_public,
                                    backend.ak_public)
    answer = backend.activate_credential(challenge.credential_blob, challenge.encrypted_secret)
    ak_cert = registrar.complete(challenge, answer)
    return backend.save_enrollment(ak_cert, [], ek_issuers)

