"""Errors a user can cause: the CLI prints them on one line and exits 2."""


class LaminateError(Exception):
    """A user-facing error (bad file, bad field, bad option), never a bug."""


class CardFormatError(LaminateError):
    """A card or card-related input that does not follow FORMAT.md; names the field."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)
