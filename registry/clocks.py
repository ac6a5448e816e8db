"""The TPM clock rule across registered cards: per attesting device, resetCount and
restartCount never go back and the clock never runs backwards from one registered quote
to the next (the rule Keylime applies to a TPM's quotes).

One card carries one quote, so the rule needs the service's memory of each device's
latest quote; ``verifier.tpm_evidence.check_clock_sequence`` is the rule itself.
"""
from __future__ import annotations

from verifier.evidence import Quoted, check_evidence
from verifier.result import CONTRAINDICATED
from verifier.tpm_evidence import check_clock_sequence

from .db import DeviceClockRow

_FIELDS = ("clock", "resetCount", "restartCount")


def quoted_clock(evidence: dict, policy) -> Quoted | None:
    """The card's quote, when it carries a TPM clock; None for other backends."""
    _checks, quoted = check_evidence(evidence, policy)
    if quoted is None or not all(type(quoted.clock.get(k)) is int for k in _FIELDS):
        return None
    return quoted


def check_and_record(session, quoted: Quoted, leaf_index: int) -> str | None:
    """Inside the log's write transaction: why ``quoted`` breaks the clock rule against
    the device's last registered quote, or None after recording it as the latest."""
    row = session.get(DeviceClockRow, quoted.device)
    if row is not None:
        previous = Quoted([], b"", b"", quoted.device,
                          {"clock": row.clock, "resetCount": row.reset_count,
                           "restartCount": row.restart_count})
        for check in check_clock_sequence([previous, quoted]):
            if check.status == CONTRAINDICATED:
                return (f"tpm_clock ({quoted.device}): {check.reason} since the quote "
                        f"registered at log index {row.leaf_index}")
    clock = quoted.clock
    if row is None:
        session.add(DeviceClockRow(device=quoted.device, clock=clock["clock"],
                                   reset_count=clock["resetCount"],
                                   restart_count=clock["restartCount"], leaf_index=leaf_index))
    else:
        row.clock, row.reset_count = clock["clock"], clock["resetCount"]
        row.restart_count, row.leaf_index = clock["restartCount"], leaf_index
    return None
