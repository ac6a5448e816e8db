"""Registers the subcommands that combine prover and verifier: quickstart, redteam, tpm."""
from laminate import quickstart, redteam, tpm_commands


def register(sub) -> None:
    quickstart.register(sub)
    redteam.register(sub)
    tpm_commands.register(sub)
