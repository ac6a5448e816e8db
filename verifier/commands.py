"""Registers the verifier-side subcommands (verify, show, ownership, adversarial)."""
from verifier import cli_adversarial, cli_ownership, cli_verify


def register(sub) -> None:
    """Add every verifier subcommand (verify, show, ownership, adversarial) to ``sub``."""
    cli_verify.register(sub)
    cli_ownership.register(sub)
    cli_adversarial.register(sub)
