"""Where a TDX quote is split into the card's `quote` (signed bytes) and `signature`
(signature data), shared by the prover that writes it and the verifier that rejoins it."""
import struct

from cards.errors import CardFormatError

HEADER = 48
TD10_BODY, TD15_BODY = 584, 648


def split_tdx_quote(raw: bytes, field: str = "evidence.quote") -> tuple[bytes, bytes]:
    """A DCAP TDX quote v4/v5 -> (header + body, signature data); trailing bytes dropped."""
    if len(raw) < HEADER + TD10_BODY + 4:
        raise CardFormatError(field, "too short for a TDX quote")
    version, _, tee_type = struct.unpack_from("<HHI", raw, 0)
    if tee_type != 0x81 or version not in (4, 5):
        raise CardFormatError(f"{field}.header", f"not a TDX quote v4/v5 (version {version}, "
                                                 f"TEE type 0x{tee_type:x})")
    end = HEADER + TD10_BODY
    if version == 5:
        _, size = struct.unpack_from("<HI", raw, HEADER)
        if size not in (TD10_BODY, TD15_BODY):
            raise CardFormatError(f"{field}.body_size", f"unknown TD report size {size}")
        end = HEADER + 6 + size
    length = struct.unpack_from("<I", raw, end)[0]
    if end + 4 + length > len(raw):
        raise CardFormatError(field, "signature data runs past the end of the quote")
    return raw[:end], raw[end + 4:end + 4 + length]
