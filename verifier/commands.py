"""Registers the verifier-side subcommands (verify, show, ownership, adversarial,
radioactive, dataset-inference)."""
from verifier import (
    cli_adversarial,
    cli_dataset_inference,
    cli_ownership,
    cli_radioactive,
    cli_verify,
)


def register(sub) -> None:
    """Add every verifier subcommand to ``sub``."""
    cli_verify.register(sub)
    cli_ownership.register(sub)
    cli_adversarial.register(sub)
    cli_radioactive.register(sub)
    cli_dataset_inference.register(sub)
