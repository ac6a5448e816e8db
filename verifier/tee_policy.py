"""Policy keys for confidential-computing evidence (TDX, SEV-SNP).

    verification_time: 2025-07-01T00:00:00Z    # fixed "now" (offline; default: the clock)
    reference_values:
      tdx: {mrtd: [hex96...], rtmr: {0: [hex96...], 1: [...], 2: [...]}}
      snp: {measurement: [hex96...], min_tcb: {bootloader: 3, tee: 0, snp: 8, microcode: 115}}
    tee:
      allowed_tcb_status: [UpToDate, SWHardeningNeeded]   # default: UpToDate and the
                                                          # three "needs hardening/config"
      max_collateral_age_days: 30    # TCB Info / QE Identity issued at most this long ago

Statuses that mean the platform is known to be vulnerable (OutOfDate, Revoked) cannot be
allowed: a policy that wanted them would not be attesting anything.
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

from verifier.tee_common import TCB_REFUSED, TCB_STATUSES, TCB_WARNING, UP_TO_DATE

TDX_KEYS = {"mrtd", "rtmr"}
SNP_KEYS = {"measurement", "min_tcb"}
TEE_KEYS = {"allowed_tcb_status", "max_collateral_age_days"}
SNP_TCB_PARTS = ("bootloader", "tee", "snp", "microcode")


@dataclass(frozen=True)
class TdxReference:
    mrtd: tuple = ()
    rtmr: dict = field(default_factory=dict)    # index 0-3 -> tuple of hex digests


@dataclass(frozen=True)
class SnpReference:
    measurement: tuple = ()
    min_tcb: dict = field(default_factory=dict)  # part name -> minimum SVN


@dataclass(frozen=True)
class TeeSettings:
    allowed_tcb_status: tuple = (UP_TO_DATE, *TCB_WARNING)
    max_collateral_age_days: float | None = None


def parse_time(value, err) -> dt.datetime | None:
    """`verification_time`: ISO 8601 text or a YAML timestamp; naive means UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise err("verification_time", f"expected an ISO 8601 time, got {value!r}") from None
    if not isinstance(value, dt.datetime):
        raise err("verification_time", "expected an ISO 8601 time such as 2025-07-01T00:00:00Z")
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _digests(value, name, err, length=48) -> tuple:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise err(name, "expected a list of hex strings")
    out = []
    for i, text in enumerate(value):
        digest = text.lower()
        if len(digest) != 2 * length or any(c not in "0123456789abcdef" for c in digest):
            raise err(f"{name}[{i}]", f"expected {2 * length} hex digits (a {length}-byte register)")
        out.append(digest)
    return tuple(out)


def _section(doc, name, known, err) -> dict:
    value = doc.get(name) or {}
    if not isinstance(value, dict):
        raise err(name, "expected a mapping")
    for key in value:
        if key not in known:
            raise err(f"{name}.{key}", f"unknown policy key (known: {', '.join(sorted(known))})")
    return value


def parse_references(ref: dict, err) -> tuple[TdxReference, SnpReference]:
    tdx = _section(ref, "tdx", TDX_KEYS, lambda f, r: err(f"reference_values.{f}", r))
    snp = _section(ref, "snp", SNP_KEYS, lambda f, r: err(f"reference_values.{f}", r))
    rtmr = tdx.get("rtmr") or {}
    if not isinstance(rtmr, dict) or not all(type(k) is int and 0 <= k <= 3 for k in rtmr):
        raise err("reference_values.tdx.rtmr", "expected a mapping from RTMR index 0-3 to digests")
    min_tcb = snp.get("min_tcb") or {}
    if not isinstance(min_tcb, dict) or not all(
            k in SNP_TCB_PARTS and type(v) is int and 0 <= v <= 255 for k, v in min_tcb.items()):
        raise err("reference_values.snp.min_tcb",
                  f"expected {{part: SVN 0-255}} with parts {', '.join(SNP_TCB_PARTS)}")
    return (TdxReference(mrtd=_digests(tdx.get("mrtd", []), "reference_values.tdx.mrtd", err),
                         rtmr={k: _digests(v, f"reference_values.tdx.rtmr.{k}", err)
                               for k, v in sorted(rtmr.items())}),
            SnpReference(measurement=_digests(snp.get("measurement", []),
                                              "reference_values.snp.measurement", err),
                         min_tcb=dict(min_tcb)))


def parse_tee(doc, err) -> TeeSettings:
    tee = _section(doc, "tee", TEE_KEYS, err)
    allowed = tee.get("allowed_tcb_status", list(TeeSettings.allowed_tcb_status))
    if not isinstance(allowed, list) or not all(isinstance(s, str) for s in allowed):
        raise err("tee.allowed_tcb_status", "expected a list of TCB statuses")
    for status in allowed:
        if status not in TCB_STATUSES:
            raise err("tee.allowed_tcb_status", f"unknown TCB status {status!r} "
                      f"(known: {', '.join(TCB_STATUSES)})")
        if status in TCB_REFUSED:
            raise err("tee.allowed_tcb_status", f"{status} means a known-vulnerable platform "
                      "and cannot be allowed")
    age = tee.get("max_collateral_age_days")
    if age is not None and (isinstance(age, bool) or not isinstance(age, (int, float))
                            or not math.isfinite(age) or age <= 0):
        raise err("tee.max_collateral_age_days", f"expected a positive number of days, got {age!r}")
    return TeeSettings(allowed_tcb_status=tuple(allowed),
                       max_collateral_age_days=None if age is None else float(age))
