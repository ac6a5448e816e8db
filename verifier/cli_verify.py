"""`laminate verify` and `laminate show`: the deployer's commands.

Both read an untrusted file, so reading is bounded and every problem with the input is
a one-line LaminateError (exit 2); a card that parses but fails a check is exit 1.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from cards.errors import LaminateError

FORMATS = ("yaml", "md", "json", "html")


def register(sub) -> None:
    """Add the `verify` and `show` subcommands to an argparse subparsers object."""
    verify = sub.add_parser(
        "verify", help="verify a card (and the model file it describes) against a policy",
        description="Check a card's signatures, hardware evidence, measured event log, code "
        "identity, model digest and policy predicates. Exit 0: accepted (warnings allowed); "
        "1: a check failed; 2: usage or input error.")
    verify.add_argument("card", help="card.cbor")
    verify.add_argument("--model", metavar="FILE", help="the model file you will deploy")
    verify.add_argument("--model-sha256", metavar="HEX", help="SHA-256 of the model you will deploy")
    verify.add_argument("--policy", metavar="FILE",
                        help="policy YAML (default: built-in policy that allows TPM evidence only "
                        "and trusts no root, release key or code)")
    verify.add_argument("--json", action="store_true", help="print the EAR-shaped JSON result")
    verify.add_argument("--at", metavar="TIME",
                        help="verify TEE evidence as of this UTC time (ISO 8601), e.g. when "
                        "its collateral was current (overrides the policy's verification_time)")
    verify.add_argument("--log-key", metavar="PEM",
                        help="a transparency log's public key: the card must carry a receipt "
                        "(`laminate log attach`) proving it is in that log, checked offline "
                        "(check transparency_receipt)")
    verify.add_argument("--chain", nargs="+", metavar="DIR_OR_CARD",
                        help="also appraise the cards this model was fine-tuned from, found "
                        "by their SHA-256 among these card files (or *.cbor in these "
                        "directories), link by link under the same policy")
    verify.set_defaults(func=run_verify)

    show = sub.add_parser("show", help="print a card's claims and evidence",
                          description="Render a card for people. Showing is not verifying: "
                          "pass --policy to include a verification result.")
    show.add_argument("card", help="card.cbor")
    show.add_argument("--format", choices=FORMATS, default="yaml")
    show.add_argument("--policy", metavar="FILE", help="also verify against this policy and show the result")
    show.add_argument("--model", metavar="FILE", help="with --policy: the model file to check")
    show.set_defaults(func=run_show)


def read_card_file(path) -> bytes:
    """Read a card with its size bounded before reading; input problems name the file."""
    from cards.card import MAX_CARD_BYTES
    path = Path(path)
    try:
        if path.is_dir():
            raise LaminateError(f"{path}: is a directory, not a card file")
        with path.open("rb") as f:
            data = f.read(MAX_CARD_BYTES + 1)
    except FileNotFoundError:
        raise LaminateError(f"{path}: card file not found") from None
    except OSError as exc:
        raise LaminateError(f"{path}: cannot read card ({exc.strerror})") from None
    if not data:
        raise LaminateError(f"{path}: card file is empty")
    if len(data) > MAX_CARD_BYTES:
        raise LaminateError(f"{path}: larger than the {MAX_CARD_BYTES}-byte card limit")
    return data


def load_policy(path):
    """The policy file at ``path``, or the built-in default when ``path`` is empty;
    raises LaminateError naming the file and field when the policy is unusable."""
    from verifier.policy import Policy
    return Policy.load(path) if path else Policy.default()


def run_verify(args) -> int:
    """Run `laminate verify` for parsed ``args``: print the result and return its
    exit status (0 accepted, 1 a check failed); unreadable input raises LaminateError."""
    from verifier.appraise import appraise
    if args.model_sha256 is not None and not args.model_sha256.strip():
        raise LaminateError("--model-sha256: empty digest")
    policy = load_policy(args.policy)
    if args.at is not None:
        import dataclasses

        from verifier.tee_policy import parse_time
        at = parse_time(args.at, lambda _field, reason: LaminateError(f"--at: {reason}"))
        policy = dataclasses.replace(policy, verification_time=at)
    card_bytes = read_card_file(args.card)
    log_key = None
    if getattr(args, "log_key", None):
        from cards import keys
        log_key = keys.load_public_key(args.log_key)
    if getattr(args, "chain", None):
        from verifier.lineage import appraise_chain, gather
        chain = appraise_chain(card_bytes, str(args.card), gather(args.chain), policy=policy,
                               model_path=args.model, model_sha256=args.model_sha256,
                               log_key=log_key)
        print(chain.to_json() if args.json else chain.to_table())
        return chain.exit_code
    result = appraise(card_bytes, policy=policy, model_path=args.model,
                      model_sha256=args.model_sha256, log_key=log_key)
    print(result.to_json() if args.json else result.to_table())
    return result.exit_code


def run_show(args) -> int:
    """Run `laminate show` for parsed ``args``: print a view of the card (with the
    verification result when --policy is given) and return 0; a card that does not parse,
    or --model without --policy, raises LaminateError."""
    from cards import views
    from cards.card import open_card
    if args.model and not args.policy:
        raise LaminateError("--model: only used with --policy (showing is not verifying)")
    card_bytes = read_card_file(args.card)
    try:
        card = open_card(card_bytes)
    except LaminateError as exc:
        raise LaminateError(f"{args.card}: not a valid card: {exc}") from None
    verification = None
    if args.policy:
        from verifier.appraise import appraise
        verification = appraise(card_bytes, policy=load_policy(args.policy),
                                model_path=args.model).to_dict()
    if args.format == "yaml":
        text = views.to_yaml(card.payload)
        if verification is not None:
            import yaml
            text = text.rstrip("\n") + "\n---\n" + yaml.safe_dump(
                {"verification": verification}, sort_keys=False)
    elif args.format == "md":
        text = views.to_markdown(card.payload, verification)
    elif args.format == "html":
        text = views.to_html(card.payload, verification,
                             signer={"kid": card.kid, "alg": card.alg})
    else:
        doc = {"card": jsonable(card.payload)}
        if verification is not None:
            doc["verification"] = verification
        text = json.dumps(doc, indent=2)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def jsonable(value):
    """Card payload -> JSON types: byte strings (evidence) become lowercase hex."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value
