"""Registers the subcommands that combine prover and verifier: quickstart and redteam."""
from laminate import quickstart, redteam


def register(sub) -> None:
    quickstart.register(sub)
    redteam.register(sub)
