"""`laminate verify-inference`: check an inference receipt offline against a serving card."""
import argparse
from pathlib import Path

from cards.errors import LaminateError

DESCRIPTION = """\
Check that a prediction server's answers are what its serving card says it serves.

The serving card is appraised like a model card (trusted release key, attestation root,
pinned serving code, quote over the statement), then the receipt: signed by the receipt
key the serving card names, for that serving card and model, and the answers hash to the
signed Merkle root. --opening also checks that a revealed DAWN key opens the serving
card's key commitment.

Exit status: 0 every check affirming or warning; 1 a check failed; 2 usage or input error."""

MAX_INPUT_BYTES = 16 << 20


def register(sub) -> None:
    p = sub.add_parser("verify-inference", help="check an inference receipt against a serving card",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serving-card", required=True, type=Path, help="serving-card.cbor")
    p.add_argument("--receipt", required=True, type=Path,
                   help="the server's JSON answer (labels, input_sha256, receipt)")
    p.add_argument("--policy", required=True, type=Path, help="appraisal policy (YAML)")
    p.add_argument("--model-sha256", help="the model you expect the server to run")
    p.add_argument("--opening", type=Path, help="a revealed DAWN opening to check")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def verify(serving_card_bytes: bytes, receipt_doc: dict, policy, *, model_sha256=None,
           opening=None, inputs_sha256=None):
    """The combined Result: the serving card's checks, then the receipt's (and opening's)."""
    from verifier.receipts_inference import verify_receipt
    from verifier.result import SKIPPED, Check
    from verifier.serving_card import appraise_serving_card, check_opening

    result, card = appraise_serving_card(serving_card_bytes, policy=policy,
                                         model_sha256=model_sha256)
    if card is None:
        result.checks.append(Check("receipt_signature", SKIPPED, "receipt",
                                   "not checked: the serving card is unreadable"))
        return result
    result.checks.extend(verify_receipt(receipt_doc, card, inputs_sha256=inputs_sha256))
    if opening is not None:
        result.checks.append(check_opening(card, opening))
    return result


def run(args) -> int:
    from verifier.dawn import Opening
    from verifier.policy import Policy
    from verifier.receipts_inference import load_receipt_doc

    policy = Policy.load(args.policy)
    card = _read(args.serving_card, "serving card")
    doc = load_receipt_doc(_read(args.receipt, "receipt"), str(args.receipt))
    digest = args.model_sha256.strip().lower() if args.model_sha256 else None
    opening = Opening.load(args.opening) if args.opening else None
    result = verify(card, doc, policy, model_sha256=digest, opening=opening)
    print(result.to_json() if args.json else result.to_table().replace(
        "card verification:", "inference receipt verification:", 1))
    return result.exit_code


def _read(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise LaminateError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    if len(data) > MAX_INPUT_BYTES:
        raise LaminateError(f"{path}: the {what} is larger than {MAX_INPUT_BYTES} bytes")
    return data
