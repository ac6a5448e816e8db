"""Registers the subcommands that combine rooms: quickstart, redteam, tpm, and the service's."""
from laminate import api_redteam, quickstart, tpm_commands
from redteam import run as redteam
from registry import cli as registry_cli
from serving import cli as serving_cli
from verifier import cli_inference, exports


def register(sub) -> None:
    quickstart.register(sub)
    redteam.register(sub)
    api_redteam.extend(sub)
    tpm_commands.register(sub)
    exports.register(sub)


def register_service(sub) -> None:
    """serve, log, dispute: after the verifier's commands, as `laminate --help` lists them;
    then the prediction server and its receipts' check."""
    registry_cli.register(sub)
    serving_cli.register(sub)
    cli_inference.register(sub)
