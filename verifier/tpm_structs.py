"""TPM 2.0 structures the verifier reads, unmarshalled by hand (TPM 2.0 Part 2).

A deployer verifies a TPM card without the TPM software stack, so the few structures a
quote needs (TPMS_ATTEST, TPMT_SIGNATURE, TPM2B_PUBLIC/TPMT_PUBLIC) are parsed here with
`struct`, strictly: every length is checked, trailing bytes are refused, and only the
algorithms an attestation key can use (RSA and ECC, SHA-256/384/512) are accepted.
Malformed input raises CardFormatError naming the field.
"""
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from cards.errors import CardFormatError

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018

ALG_RSA = 0x0001
ALG_SHA1 = 0x0004
ALG_SHA256 = 0x000B
ALG_SHA384 = 0x000C
ALG_SHA512 = 0x000D
ALG_NULL = 0x0010
ALG_RSASSA = 0x0014
ALG_RSAES = 0x0015
ALG_RSAPSS = 0x0016
ALG_OAEP = 0x0017
ALG_ECDSA = 0x0018
ALG_ECDAA = 0x001A
ALG_ECC = 0x0023

TPMA_FIXEDTPM = 0x00000002
TPMA_FIXEDPARENT = 0x00000010
TPMA_SENSITIVEDATAORIGIN = 0x00000020
TPMA_RESTRICTED = 0x00010000
TPMA_DECRYPT = 0x00020000
TPMA_SIGN_ENCRYPT = 0x00040000

HASHES = {
    ALG_SHA256: (hashlib.sha256, hashes.SHA256),
    ALG_SHA384: (hashlib.sha384, hashes.SHA384),
    ALG_SHA512: (hashlib.sha512, hashes.SHA512),
}
CURVES = {0x0003: ec.SECP256R1, 0x0004: ec.SECP384R1, 0x0005: ec.SECP521R1}


class _Reader:
    """Big-endian cursor over one structure; errors name `field` plus the member read."""

    def __init__(self, data: object, field: str):
        if not isinstance(data, (bytes, bytearray)):
            raise CardFormatError(field, f"expected bytes, got {type(data).__name__}")
        self.data, self.pos, self.field = bytes(data), 0, field

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise CardFormatError(f"{self.field}.{what}", "truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self, what): return self.take(1, what)[0]
    def u16(self, what): return struct.unpack(">H", self.take(2, what))[0]
    def u32(self, what): return struct.unpack(">I", self.take(4, what))[0]
    def u64(self, what): return struct.unpack(">Q", self.take(8, what))[0]

    def tpm2b(self, what: str) -> bytes:
        return self.take(self.u16(what), what)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise CardFormatError(self.field, f"{len(self.data) - self.pos} trailing bytes")


@dataclass(frozen=True)
class PcrSelection:
    """One TPMS_PCR_SELECTION: a hash bank and the PCR indices selected in it."""
    hash_alg: int
    pcrs: tuple[int, ...]


@dataclass(frozen=True)
class Attest:
    """TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE (the only type a card carries)."""
    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: int
    firmware_version: int
    pcr_select: tuple[PcrSelection, ...]
    pcr_digest: bytes

    def clock_info(self) -> dict:
        """The TPMS_CLOCK_INFO fields under the TPM specification's names."""
        return {"clock": self.clock, "resetCount": self.reset_count,
                "restartCount": self.restart_count, "safe": self.safe}


def _pcr_selection(r: _Reader) -> tuple[PcrSelection, ...]:
    count = r.u32("pcrSelect.count")
    if count > 16:
        raise CardFormatError(f"{r.field}.pcrSelect.count", f"{count} banks is not plausible")
    banks = []
    for i in range(count):
        alg = r.u16(f"pcrSelect[{i}].hash")
        size = r.u8(f"pcrSelect[{i}].sizeofSelect")
        bits = r.take(size, f"pcrSelect[{i}].pcrSelect")
        pcrs = tuple(8 * byte + bit for byte, b in enumerate(bits) for bit in range(8) if b >> bit & 1)
        banks.append(PcrSelection(alg, pcrs))
    return tuple(banks)


def parse_attest(data: object, field: str = "evidence.quote") -> Attest:
    """Unmarshal a TPMS_ATTEST that must be a quote; magic and type are returned, not judged."""
    r = _Reader(data, field)
    magic = r.u32("magic")
    typ = r.u16("type")
    signer = r.tpm2b("qualifiedSigner")
    extra = r.tpm2b("extraData")
    clock, reset, restart, safe = r.u64("clockInfo.clock"), r.u32("clockInfo.resetCount"), \
        r.u32("clockInfo.restartCount"), r.u8("clockInfo.safe")
    firmware = r.u64("firmwareVersion")
    if typ != TPM_ST_ATTEST_QUOTE:
        raise CardFormatError(f"{field}.type", f"0x{typ:04x} is not TPM_ST_ATTEST_QUOTE (0x8018)")
    selection = _pcr_selection(r)
    digest = r.tpm2b("attested.quote.pcrDigest")
    r.end()
    return Attest(magic, typ, signer, extra, clock, reset, restart, safe, firmware,
                  selection, digest)


@dataclass(frozen=True)
class Signature:
    """TPMT_SIGNATURE: RSA schemes carry `sig`, ECDSA carries `r` and `s`."""
    alg: int
    hash_alg: int
    sig: bytes = b""
    r: bytes = b""
    s: bytes = b""


def parse_signature(data: object, field: str = "evidence.signature") -> Signature:
    """Unmarshal a TPMT_SIGNATURE (RSASSA, RSAPSS or ECDSA); raises CardFormatError
    naming ``field`` and the member when the bytes are malformed or the scheme unknown."""
    r = _Reader(data, field)
    alg = r.u16("sigAlg")
    if alg in (ALG_RSASSA, ALG_RSAPSS):
        out = Signature(alg, r.u16("hash"), sig=r.tpm2b("sig"))
    elif alg == ALG_ECDSA:
        out = Signature(alg, r.u16("hash"), r=r.tpm2b("signatureR"), s=r.tpm2b("signatureS"))
    else:
        raise CardFormatError(f"{field}.sigAlg", f"0x{alg:04x} is not RSASSA, RSAPSS or ECDSA")
    r.end()
    return out


@dataclass(frozen=True)
class Public:
    """TPMT_PUBLIC of an RSA or ECC key, plus its raw bytes (the Name is hashed over them)."""
    raw: bytes
    type: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    symmetric: int
    scheme: int
    scheme_hash: int
    key_bits: int = 0
    exponent: int = 0
    curve: int = 0
    unique: tuple = ()

    @property
    def name(self) -> bytes:
        """TPM Name: nameAlg || H_nameAlg(TPMT_PUBLIC)."""
        if self.name_alg not in HASHES:
            raise CardFormatError("evidence.extra.ak_public.nameAlg",
                                  f"0x{self.name_alg:04x} is not SHA-256/384/512")
        return struct.pack(">H", self.name_alg) + HASHES[self.name_alg][0](self.raw).digest()

    def public_key(self):
        """The key as a `cryptography` public key."""
        if self.type == ALG_RSA:
            try:
                return rsa.RSAPublicNumbers(self.exponent or 65537,
                                            int.from_bytes(self.unique[0], "big")).public_key()
            except ValueError as exc:
                raise CardFormatError("evidence.extra.ak_public.unique",
                                      f"not an RSA public key: {exc}") from None
        curve = CURVES.get(self.curve)
        if curve is None:
            raise CardFormatError("evidence.extra.ak_public.curveID", f"unsupported curve 0x{self.curve:04x}")
        x, y = (int.from_bytes(v, "big") for v in self.unique)
        try:
            return ec.EllipticCurvePublicNumbers(x, y, curve()).public_key()
        except ValueError as exc:
            raise CardFormatError("evidence.extra.ak_public.unique",
                                  f"not a point on the curve: {exc}") from None


def _scheme(r: _Reader) -> tuple[int, int]:
    scheme = r.u16("scheme")
    if scheme in (ALG_NULL, ALG_RSAES):
        return scheme, ALG_NULL
    hash_alg = r.u16("scheme.hashAlg")
    if scheme == ALG_ECDAA:
        r.u16("scheme.count")
    return scheme, hash_alg


def parse_public(data: object, field: str = "evidence.extra.ak_public") -> Public:
    """Unmarshal a TPM2B_PUBLIC (size-prefixed TPMT_PUBLIC) of an RSA or ECC key."""
    outer = _Reader(data, field)
    raw = outer.tpm2b("size")
    outer.end()
    r = _Reader(raw, field)
    typ = r.u16("type")
    name_alg = r.u16("nameAlg")
    attrs = r.u32("objectAttributes")
    policy = r.tpm2b("authPolicy")
    sym = r.u16("symmetric.algorithm")
    if sym != ALG_NULL:
        r.u16("symmetric.keyBits")
        r.u16("symmetric.mode")
    if typ == ALG_RSA:
        scheme, scheme_hash = _scheme(r)
        bits, exponent = r.u16("keyBits"), r.u32("exponent")
        out = Public(raw, typ, name_alg, attrs, policy, sym, scheme, scheme_hash,
                     key_bits=bits, exponent=exponent, unique=(r.tpm2b("unique.rsa"),))
    elif typ == ALG_ECC:
        scheme, scheme_hash = _scheme(r)
        curve = r.u16("curveID")
        if r.u16("kdf.scheme") != ALG_NULL:
            r.u16("kdf.hashAlg")
        out = Public(raw, typ, name_alg, attrs, policy, sym, scheme, scheme_hash, curve=curve,
                     unique=(r.tpm2b("unique.ecc.x"), r.tpm2b("unique.ecc.y")))
    else:
        raise CardFormatError(f"{field}.type", f"0x{typ:04x} is not RSA or ECC")
    r.end()
    return out


def verify_signature(public: Public, sig: Signature, message: bytes) -> bool:
    """Check a TPMT_SIGNATURE by `public` over `message` (the TPMS_ATTEST bytes)."""
    if sig.hash_alg not in HASHES:
        return False
    algo = HASHES[sig.hash_alg][1]()
    key = public.public_key()
    try:
        if sig.alg == ALG_ECDSA and isinstance(key, ec.EllipticCurvePublicKey):
            der = encode_dss_signature(int.from_bytes(sig.r, "big"), int.from_bytes(sig.s, "big"))
            key.verify(der, message, ec.ECDSA(algo))
        elif sig.alg == ALG_RSASSA and isinstance(key, rsa.RSAPublicKey):
            key.verify(sig.sig, message, padding.PKCS1v15(), algo)
        elif sig.alg == ALG_RSAPSS and isinstance(key, rsa.RSAPublicKey):
            key.verify(sig.sig, message, padding.PSS(padding.MGF1(algo), padding.PSS.AUTO), algo)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def pcr_digest(values: list[bytes], hash_alg: int = ALG_SHA256) -> bytes:
    """The quote's pcrDigest: H(PCR values concatenated in selection order)."""
    return HASHES[hash_alg][0](b"".join(values)).digest()
