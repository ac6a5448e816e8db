"""Registers the verifier-side subcommands (verify, show, ownership)."""
from verifier import cli_ownership, cli_verify


def register(sub) -> None:
    """Add every verifier subcommand (verify, show, ownership) to ``sub``."""
    cli_verify.register(sub)
    cli_ownership.register(sub)
