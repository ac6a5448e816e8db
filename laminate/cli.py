"""The `laminate` command: one parser, each job's subcommands registered by its package.

This package is the composition root: it is the only place that sees both the prover
(`attest`) and the verifier, and it imports heavy code (torch) only inside the command
that needs it, so `laminate verify` never loads torch.
"""
import argparse
import sys

from cards.errors import LaminateError, printable

# Optional dependency groups: a command that needs one says which to install.
EXTRAS = {
    **dict.fromkeys(("torch", "opacus", "onnx", "onnxscript", "sklearn", "mlxtend", "scipy"), "train"),
    **dict.fromkeys(("fastapi", "starlette", "anyio", "uvicorn", "sqlalchemy", "psycopg",
                     "multipart", "prometheus_client"), "service"),
}


def build_parser() -> argparse.ArgumentParser:
    from attest import commands as prover
    from laminate import commands as composed
    from verifier import commands as appraiser

    parser = argparse.ArgumentParser(
        prog="laminate",
        description="Hardware-attested ML property cards: train through an attested "
        "wrapper, seal a signed card, verify it before deployment, settle ownership disputes.",
        epilog="Start with `laminate quickstart --out DIR`; `laminate COMMAND --help` explains each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    composed.register(sub)
    prover.register(sub)
    appraiser.register(sub)
    composed.register_service(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LaminateError as exc:
        print(f"laminate: error: {printable(str(exc))}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"laminate: error: `laminate {args.command}` needs the {extra} extra ({exc.name} "
              f"is not installed): pip install -e '.[{extra}]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("laminate: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
