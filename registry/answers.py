"""Reading a service's answers in the command-line clients.

The service may be hostile or broken (a client pins its key precisely because it does
not trust the server), so every answer is bounded in size and depth, every field is
checked for presence and type before use, and text from the answer is stripped of
control characters before it reaches the terminal. Each problem is one LaminateError
naming the answer and field.
"""
from __future__ import annotations

import base64
import binascii
import json

from cards.errors import LaminateError

MAX_ANSWER = 64 << 20
MAX_TEXT = 300


def parse(raw: bytes, where: str):
    """JSON from ``raw``, or one error naming ``where``."""
    if len(raw) > MAX_ANSWER:
        raise LaminateError(f"{where}: answer larger than {MAX_ANSWER >> 20} MiB")
    try:
        return json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise LaminateError(f"{where}: answer is not JSON (or nested too deeply)") from None


def get(doc, where: str, name: str, *, kind: type):
    """``doc[name]`` if ``doc`` is an object holding a ``kind`` there."""
    if not isinstance(doc, dict):
        raise LaminateError(f"{where}: expected a JSON object")
    value = doc.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise LaminateError(f"{where}.{name}: missing or not a {kind.__name__}")
    return value


def b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise LaminateError(f"{where}: not base64") from None


def hex_bytes(text, where: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except (TypeError, ValueError):
        raise LaminateError(f"{where}: expected hex strings") from None


def clean(text, limit: int = MAX_TEXT) -> str:
    """Printable text only: control characters (ESC sequences included) become '?'."""
    text = str(text)[:limit]
    return "".join(c if c.isprintable() else "?" for c in text)


def verdict_lines(verdict: dict) -> list[str]:
    """A verdict as lines for the terminal; its shape is checked as it is read."""
    where = "verdict"
    suspect = get(verdict, where, "suspect", kind=dict)
    name = suspect.get("sha256") or suspect.get("prediction_url")
    if not isinstance(name, str):
        raise LaminateError(f"{where}.suspect: names neither a model digest nor a URL")
    index = get(suspect, f"{where}.suspect", "leaf_index", kind=int)
    label = "model" if suspect.get("sha256") else "prediction URL"
    lines = [(f"dispute {clean(verdict.get('dispute_id', '?'))}: suspect {label} {clean(name)} "
              f"first seen at log index {index} ({clean(suspect.get('source', '?'))})")]
    for i, claim in enumerate(get(verdict, where, "claims", kind=list)):
        won = get(claim, f"{where}.claims[{i}]", "won", kind=bool)
        card = get(claim, f"{where}.claims[{i}]", "card_id", kind=str)
        reason = get(claim, f"{where}.claims[{i}]", "reason", kind=str)
        evidence = claim.get("evidence")
        kind = f" ({clean(evidence)} evidence)" if isinstance(evidence, str) else ""
        lines.append(f"  {'WON ' if won else 'lost'} card {clean(card)}{kind}: {clean(reason)}")
    winner = verdict.get("winner")
    if winner is not None and not isinstance(winner, str):
        raise LaminateError(f"{where}.winner: expected a card id or null")
    lines.append(f"winner: {clean(winner or 'none')} ({clean(verdict.get('reason', ''))})")
    return lines
