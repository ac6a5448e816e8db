"""Registers the subcommands that combine rooms: quickstart, redteam, tpm, and the service's."""
from laminate import quickstart, tpm_commands
from redteam import run as redteam
from registry import cli as registry_cli
from verifier import exports


def register(sub) -> None:
    quickstart.register(sub)
    redteam.register(sub)
    tpm_commands.register(sub)
    exports.register(sub)


def register_service(sub) -> None:
    """serve, log, dispute: after the verifier's commands, as `laminate --help` lists them."""
    registry_cli.register(sub)
