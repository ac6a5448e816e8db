"""Registers the verifier-side subcommands (verify, show, ownership, serve, log, dispute)."""
from verifier import cli_ownership, cli_service, cli_verify


def register(sub) -> None:
    cli_verify.register(sub)
    cli_ownership.register(sub)
    cli_service.register(sub)
