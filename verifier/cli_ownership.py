"""`laminate ownership`: run the ownership test of a card's watermark against a suspect."""
import argparse
import json
from pathlib import Path

from cards.errors import LaminateError

DESCRIPTION = """\
Test whether a suspect model carries the watermark committed in a card.

The claimant reveals the watermark opening (the secret file written at training time);
it is checked against the commitment in the card, the trigger inputs are regenerated
with the public generator, and the suspect is asked for labels only, one trigger at a
time, until a one-sided binomial test against chance (1/classes) decides at --alpha.
An independent model is declared a copy with probability at most alpha, however early
the test stops.

For an entangled watermark (scheme laminate-ewe-v1) the opening also carries the
watermark records with their Merkle proofs in the card's train split; all of them are
checked, the suspect is asked once on each stamped record (100 by default), and the
exact conditional test over the seed-drawn target classes decides (cards/FORMAT.md,
"EWE ownership null").

This command does not decide whether to trust the card: it only parses it. Verify the
card first (`laminate verify CARD --policy POLICY`) so that the commitment is known to
come from an attested training run.

Exit status: 0 ownership shown; 1 not shown, or the opening does not match the
commitment; 2 usage or input error."""


def register(sub) -> None:
    """Add the `ownership` subcommand to an argparse subparsers object."""
    parser = sub.add_parser(
        "ownership", help="test a suspect model for a card's watermark (labels only)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--card", type=Path, help="the card (card.cbor)")
    parser.add_argument("--opening", type=Path,
                        help="the secret watermark opening (watermark.opening)")
    parser.add_argument("--suspect", required=True, metavar="MODEL.onnx|URL",
                        help="an ONNX file, or an http(s) endpoint that answers "
                        'POST {"inputs": [...]} with {"labels": [...]}')
    parser.add_argument("--alpha", type=float, default=None,
                        help="false-positive rate bound (default: the policy's "
                        "ownership.alpha, else 1e-6)")
    parser.add_argument("--policy", type=Path, default=None,
                        help="take alpha from this policy's ownership.alpha")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    from verifier import dawn_ownership

    dawn_ownership.add_arguments(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    """Run `laminate ownership` for parsed ``args``; returns the exit status (0 shown,
    1 not shown). Input problems (unreadable card or opening, a card without a watermark, an
    alpha outside (0, 1), an unusable suspect) raise LaminateError, which the CLI prints as
    one line with exit 2."""
    from cards.card import open_card
    from cards.ewe import load_opening
    from verifier.ownership import ownership_test
    from verifier.suspect import open_suspect

    alpha = args.alpha
    if alpha is None:
        from verifier.policy import Policy

        alpha = (Policy.load(args.policy) if args.policy else Policy.default()).ownership.alpha
    if not 0.0 < alpha < 1.0:
        raise LaminateError(f"--alpha: must be between 0 and 1, got {alpha}")
    if args.serving_card is not None:
        from verifier import dawn_ownership

        return dawn_ownership.run(args, alpha)
    for name in ("card", "opening"):
        if getattr(args, name) is None:
            raise LaminateError(f"--{name} is required (or --serving-card for DAWN)")
    card = open_card(_read(args.card, "card"))
    if not args.opening.is_file():
        raise LaminateError(f"{args.opening}: watermark opening not found")
    opening = load_opening(args.opening)
    watermark = card.claims["defenses"]["watermark"]
    if watermark is None:
        raise LaminateError(f"{args.card}: claims.defenses.watermark: the card carries "
                            "no watermark, so there is nothing to test ownership against")
    suspect = open_suspect(args.suspect)
    result = ownership_test(opening, watermark, suspect, alpha=alpha)
    if args.json:
        print(json.dumps({"suspect": suspect.name, **result.to_dict()}, indent=2))
    else:
        print(f"suspect: {suspect.name}")
        print(result.to_text())
    return result.exit_code


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise LaminateError(f"{path}: cannot read the {what} ({exc.strerror})") from exc
