"""Errors a user can cause: the CLI prints them on one line and exits 2."""


class LaminateError(Exception):
    """A user-facing error (bad file, bad field, bad option), never a bug."""


class CardFormatError(LaminateError):
    """A card or card-related input that does not follow FORMAT.md; names the field."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


def printable(text: str) -> str:
    """``text`` with every non-printable character but the newline escaped (``\\x1b``,
    ``\\u202e``), so a reason quoting a card's or a file's bytes cannot move the cursor,
    recolour or reorder what a terminal shows."""
    return "".join(c if c.isprintable() or c == "\n" else ascii(c)[1:-1] for c in text)
