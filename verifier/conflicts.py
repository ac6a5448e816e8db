"""The `conflicts` check: defenses on one card that are known to undermine each other.

The table (conflicts.json beside this module) is data, not code, so a new measured
conflict is one row: the defenses it pairs, the card field that shows the damage, the
threshold below which (or, for a p-value, `undermined_above` which) this model was
undermined, and the published and measured figures it rests on. Each row that applies to a card gives one `conflicts` check naming the
card's own measured value; a card without any listed pair gets no `conflicts` check.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from cards.errors import LaminateError
from verifier.result import AFFIRMING, WARNING, Check

TABLE_PATH = Path(__file__).with_name("conflicts.json")
DEFENSES = ("dp", "watermark", "adversarial", "radioactive")
_ROW_KEYS = {"id", "defenses", "where", "figure", "undermined_below", "effect", "undermined",
             "held", "published", "ours"}


def _field(claims: dict, dotted: str):
    """The value at a dotted claims path, or None where any step is missing or null."""
    value: Any = claims
    for step in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(step)
    return value


def _check_row(i: int, row) -> dict:
    where = f"{TABLE_PATH.name}: conflicts[{i}]"
    if not isinstance(row, dict) or set(row) - {"undermined_above"} != _ROW_KEYS:
        raise LaminateError(f"{where}: expected exactly the keys {sorted(_ROW_KEYS)} "
                            "(and optionally undermined_above)")
    if (not isinstance(row["defenses"], list) or len(row["defenses"]) < 2
            or any(d not in DEFENSES for d in row["defenses"])):
        raise LaminateError(f"{where}.defenses: expected two or more of {', '.join(DEFENSES)}")
    for key in ("undermined_below", "undermined_above"):
        threshold = row.get(key)
        if threshold is not None and not isinstance(threshold, (int, float)):
            raise LaminateError(f"{where}.{key}: expected a number or null")
        if threshold is not None and not row["held"]:
            raise LaminateError(f"{where}.held: a row with a threshold needs the held message")
    if row["undermined_below"] is not None and row.get("undermined_above") is not None:
        raise LaminateError(f"{where}: undermined_below and undermined_above are exclusive")
    return row


@lru_cache(maxsize=4)
def load_table(path: Path = TABLE_PATH) -> tuple:
    """The table's rows, checked; raises LaminateError naming the file and row."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LaminateError(f"{Path(path).name}: cannot read the conflicts table: {exc}") from None
    rows = doc.get("conflicts") if isinstance(doc, dict) else None
    if not isinstance(rows, list):
        raise LaminateError(f"{Path(path).name}: conflicts: expected a list")
    return tuple(_check_row(i, row) for i, row in enumerate(rows))


def applies(row: dict, claims: dict) -> bool:
    """Every defense of the row is on the card, and every `where` field matches."""
    defenses = claims.get("defenses", {})
    return (all(defenses.get(d) is not None for d in row["defenses"])
            and all(_field(claims, k) == v for k, v in row["where"].items()))


def check_conflicts(claims: dict, table: tuple | None = None) -> list[Check]:
    """One `conflicts` check per table row that applies to `claims` (a validated card):
    a warning when the card's measured figure shows the conflict (or the row has no
    threshold), affirming when the figure shows this model escaped it."""
    checks = []
    for row in load_table() if table is None else table:
        if not applies(row, claims):
            continue
        field = f"claims.{row['figure']}"
        value = _field(claims, row["figure"])
        if not isinstance(value, (int, float)):
            checks.append(Check("conflicts", WARNING, field,
                                f"{row['id']}: {row['effect']}; the card measures no "
                                f"{row['figure']}, so the damage cannot be judged"))
            continue
        below, above = row["undermined_below"], row.get("undermined_above")
        threshold = above if above is not None else below
        # `section`: the figure's enclosing claim, so a message can name its other fields
        words = {"value": value, "threshold": threshold,
                 "section": _field(claims, row["figure"].rpartition(".")[0])}
        if threshold is None or (value > above if above is not None else value < below):
            reason = row["undermined"].format(**words)
            checks.append(Check("conflicts", WARNING, field, f"{reason} ({_sources(row)})"))
        else:
            checks.append(Check("conflicts", AFFIRMING, field, row["held"].format(**words)))
    return checks


def _sources(row: dict) -> str:
    parts = []
    for name in ("published", "ours"):
        ref = row[name]
        if ref.get("together") is not None:
            label = "published" if name == "published" else "measured here"
            alone = f"{ref['alone']:g} alone, " if ref.get("alone") is not None else ""
            parts.append(f"{label}: {alone}{ref['together']:g} together")
    return "; ".join(parts) or "no published figure"
