"""Appraisal results shaped like EAT Attestation Results (draft-ietf-rats-ear).

Every check reports on its own line so a deployer sees *all* that is wrong with a
card, not only the first thing; the card's overall status is the worst check.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import NamedTuple

from cards.errors import printable

AFFIRMING = "affirming"
WARNING = "warning"
CONTRAINDICATED = "contraindicated"
# A check that could not run because a check it depends on failed; it never makes a
# card pass, and the failed prerequisite already makes the result contraindicated.
SKIPPED = "skipped"

TIERS = {"none": 0, AFFIRMING: 2, WARNING: 32, CONTRAINDICATED: 96}
_RANK = {SKIPPED: 0, AFFIRMING: 1, WARNING: 2, CONTRAINDICATED: 3}


class Check(NamedTuple):
    """One check's outcome (immutable; a tuple, as an appraisal makes a few dozen)."""
    check: str
    status: str
    field: str
    reason: str

    def to_dict(self) -> dict:
        """The check as a JSON object."""
        return {"check": self.check, "status": self.status, "field": self.field,
                "reason": self.reason}


@dataclass
class Result:
    """All checks of one appraisal; the card's status is the worst of them."""
    checks: list = field(default_factory=list)
    policy_id: str = ""
    backend: str = "unknown"
    simulated: bool = False

    @property
    def status(self) -> str:
        """The worst status among the checks that ran; 'none' when none ran."""
        ranked = [c.status for c in self.checks if c.status != SKIPPED]
        if not ranked:
            return "none"
        return max(ranked, key=_RANK.__getitem__)

    @property
    def tier(self) -> int:
        """The EAR tier of the status (0, 2, 32 or 96)."""
        return TIERS[self.status]

    @property
    def exit_code(self) -> int:
        """1 when the card is contraindicated (or nothing was checked), else 0."""
        return 1 if self.status in (CONTRAINDICATED, "none") else 0

    def failed(self) -> list:
        """The contraindicated checks: what a caller shows as 'rejected because'."""
        return [c for c in self.checks if c.status == CONTRAINDICATED]

    def get(self, name: str) -> Check | None:
        """The check named ``name``, or None if it was not reported."""
        return next((c for c in self.checks if c.check == name), None)

    def to_dict(self) -> dict:
        """Status, tier, policy, backend and every check, for JSON."""
        return {"status": self.status, "tier": self.tier, "policy_id": self.policy_id,
                "backend": self.backend, "simulated": self.simulated,
                "checks": [c.to_dict() for c in self.checks]}

    def to_json(self) -> str:
        """to_dict() as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def to_table(self) -> str:
        """A plain-text table, one check per line, under a status line (and the
        simulated-hardware warning when it applies)."""
        lines = [f"card verification: {self.status.upper()} "
                 f"(backend {self.backend}, policy {self.policy_id})"]
        if self.simulated:
            lines.append("SIMULATED HARDWARE: this card's evidence comes from the software "
                         "simulator; it proves nothing about real hardware")
        rows = [("STATUS", "CHECK", "FIELD", "REASON")]
        rows += [(c.status, c.check, printable(c.field or "-"), printable(c.reason))
                 for c in self.checks]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            lines.append("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])
        return "\n".join(lines)
