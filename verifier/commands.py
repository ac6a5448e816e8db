"""Registers the verifier-side subcommands (verify, show, ownership)."""
from verifier import cli_ownership, cli_verify


def register(sub) -> None:
    cli_verify.register(sub)
    cli_ownership.register(sub)
