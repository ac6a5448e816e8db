"""The command-line clients of a running service: `laminate log ...` and
`laminate dispute ...`, plus the one check that needs no service at all
(`laminate log verify`, offline, with the service's public key).

Every answer is read through ``registry.answers``: a service may be hostile or broken,
and a client must end in one clean error, never a traceback.
"""
from __future__ import annotations

import base64
import http.client
import json
import secrets
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from cards.errors import LaminateError

from . import answers

# ---------------------------------------------------------------- HTTP client

def _request(method, url, *, token=None, body=None, content_type=None, timeout=120.0):
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if content_type:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, answers.parse(response.read(answers.MAX_ANSWER + 1), url)
    except urllib.error.HTTPError as exc:
        try:
            detail = answers.parse(exc.read(answers.MAX_ANSWER + 1), url).get("detail")
        except (LaminateError, AttributeError):
            detail = None
        return exc.code, {"detail": detail if isinstance(detail, str) else str(exc.reason)}
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise LaminateError(f"{url}: service unreachable ({getattr(exc, 'reason', exc)})") from None


def _multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    boundary = "laminate" + secrets.token_hex(12)
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     .encode() + str(value).encode() + b"\r\n")
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                     f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                     .encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _read(path, what) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise LaminateError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None


def _fail(status, answer, what) -> LaminateError:
    detail = answer.get("detail") if isinstance(answer, dict) else answer
    return LaminateError(f"{what}: service answered HTTP {status}: "
                         f"{answers.clean(str(detail))}")


# ---------------------------------------------------------------- log commands

def _receipt_file(path) -> bytes:
    """A receipt file: binary COSE, or the base64 text the service returns."""
    raw = _read(path, "receipt")
    try:
        return base64.b64decode(raw.strip(), validate=True) if raw[:1] != b"\xd2" else raw
    except ValueError:
        return raw


def _statement(path) -> bytes:
    """The card file's statement (the card without any receipts it carries)."""
    from cards.card import statement_bytes
    try:
        return statement_bytes(_read(path, "card"))
    except LaminateError as exc:
        raise LaminateError(f"{path}: not a card: {exc}") from None


def cmd_log_verify(args) -> int:
    from cards import keys
    from verifier.logproof import LogProofError
    from verifier.receipts import verify_receipt

    card = _statement(args.card)
    receipt = _receipt_file(args.receipt)
    public_key = keys.load_public_key(args.service_key)
    if (args.min_witnesses or args.witness or args.log_key) and not args.checkpoint:
        raise LaminateError("--log-key, --witness, --min-witnesses: need --checkpoint "
                            "(a cosigned checkpoint file)")
    if args.checkpoint and not args.log_key:
        raise LaminateError("--checkpoint: needs --log-key (the log's note verifier key)")
    try:
        check = verify_receipt(receipt, card, public_key)
        witnessed = ""
        if args.checkpoint:
            from .witness_cli import check_receipt_against
            witnessed = "; " + check_receipt_against(args, check.tree_size, check.root_hash)
    except LogProofError as exc:
        print(f"NOT in the log: {args.card}: {exc}")
        return 1
    print(f"in the log: {args.card} is leaf {check.leaf_index} of the tree of size "
          f"{check.tree_size} with root {check.root_hash.hex()} signed by the service key"
          + witnessed)
    return 0


def cmd_log_attach(args) -> int:
    """Embed a receipt in the card's unprotected header (394), after checking it proves
    the card is in the log: the card becomes a transparent statement, same digest."""
    from cards.card import card_digest, with_receipts
    from cards.files import write_atomic
    from verifier.logproof import LogProofError
    from verifier.receipts import verify_receipt

    card = _read(args.card, "card")
    statement = _statement(args.card)
    if args.receipt:
        if not args.service_key:
            raise LaminateError("--service-key: needed to check the receipt before it is "
                                "attached")
        from cards import keys
        public_key, receipt = keys.load_public_key(args.service_key), _receipt_file(args.receipt)
    else:
        public_key = _service_key(args.server, args.service_key)
        receipt = _fetch_receipt(args.server, card_digest(statement))
    try:
        check = verify_receipt(receipt, statement, public_key)
    except LogProofError as exc:
        print(f"not attached: the receipt does not prove {args.card} is in the log: {exc}")
        return 1
    try:
        transparent = with_receipts(card, [receipt])
    except LaminateError as exc:
        raise LaminateError(f"{args.card}: cannot attach the receipt: {exc}") from None
    write_atomic(Path(args.out), transparent)
    print(f"attached: {args.out} is {args.card} with the receipt of leaf {check.leaf_index} "
          f"(tree size {check.tree_size}); card digest {card_digest(statement)} unchanged")
    return 0


def _fetch_receipt(server, card_id: str) -> bytes:
    """The current receipt of a registered card, from the service."""
    base = server.rstrip("/")
    status, answer = _request("GET", f"{base}/v1/cards/{card_id}?format=json")
    if status != 200:
        raise _fail(status, answer, f"card {card_id}")
    index = answers.get(answer, "card answer", "leaf_index", kind=int)
    status, answer = _request("GET", f"{base}/v1/log/inclusion?leaf_index={index}")
    if status != 200:
        raise _fail(status, answer, f"inclusion of leaf {index}")
    where = "inclusion answer"
    return answers.b64(answers.get(answer, where, "receipt", kind=str), f"{where}.receipt")


def cmd_log_submit(args) -> int:
    card = _read(args.card, "card")
    status, answer = _request("POST", f"{args.server.rstrip('/')}/v1/cards", token=args.token,
                              body=card, content_type="application/cbor")
    if status == 422 and isinstance(answer, dict) and "result" in answer:
        print(f"rejected: {answer['detail']}")
        return 1
    if status not in (200, 201):
        raise _fail(status, answer, args.card)
    where = "registration answer"
    receipt = answers.b64(answers.get(answer, where, "receipt", kind=str), f"{where}.receipt")
    card_id = answers.get(answer, where, "card_id", kind=str)
    index = answers.get(answer, where, "leaf_index", kind=int)
    size = answers.get(answer, where, "tree_size", kind=int)
    root = answers.get(answer, where, "root_hash", kind=str)
    if args.receipt_out:
        Path(args.receipt_out).write_bytes(receipt)
    word = "already registered" if answer.get("already_registered") is True else "registered"
    print(f"{word}: card {answers.clean(card_id)} at log index {index} "
          f"(tree size {size}, root {answers.clean(root)})")
    return 0


def _service_key(server, pinned):
    from cards import keys

    if pinned:
        return keys.load_public_key(pinned)
    status, answer = _request("GET", f"{server.rstrip('/')}/v1/log/key")
    if status != 200:
        raise _fail(status, answer, "service key")
    print("warning: trusting the key the service presents; pin it with --service-key",
          file=sys.stderr)
    pem = answers.get(answer, "service key answer", "public_key_pem", kind=str)
    return keys.load_public_key(pem.encode())


def _fetch_head(server, public_key):
    from verifier.logproof import verify_tree_head

    status, answer = _request("GET", f"{server.rstrip('/')}/v1/log/tree-head")
    if status != 200:
        raise _fail(status, answer, "tree head")
    signed = answers.get(answer, "tree head answer", "signed", kind=str)
    head = verify_tree_head(answers.b64(signed, "tree head answer.signed"), public_key)
    return head, answer


def cmd_log_tree_head(args) -> int:
    head, answer = _fetch_head(args.server, _service_key(args.server, args.service_key))
    if args.out:
        Path(args.out).write_text(json.dumps(answer, indent=2) + "\n", encoding="utf-8")
    print(f"tree size {head.tree_size}, root {head.root_hash.hex()} (signature checked)")
    return 0


def cmd_log_consistency(args) -> int:
    from cards import keys
    from verifier.logproof import LogProofError, check_consistency, verify_tree_head

    public_key = keys.load_public_key(args.service_key)
    try:
        saved = answers.parse(_read(args.since, "tree head"), args.since)
        signed = answers.get(saved, args.since, "signed", kind=str)
        old = verify_tree_head(answers.b64(signed, f"{args.since}: signed"), public_key)
    except LaminateError as exc:
        raise LaminateError(f"{args.since}: not a tree head saved by `laminate log tree-head` "
                            f"({exc})") from None
    new, answer = _fetch_head(args.server, public_key)
    if new.tree_size < old.tree_size:
        print(f"INCONSISTENT: the log shrank from {old.tree_size} to {new.tree_size} leaves")
        return 1
    status, proof = _request("GET", f"{args.server.rstrip('/')}/v1/log/consistency?"
                             + urllib.parse.urlencode({"first": old.tree_size,
                                                       "second": new.tree_size}))
    if status != 200:
        raise _fail(status, proof, "consistency proof")
    path = answers.get(proof, "consistency answer", "consistency_proof", kind=list)
    try:
        check_consistency(old.tree_size, new.tree_size,
                          [answers.hex_bytes(p, "consistency_proof") for p in path],
                          old.root_hash, new.root_hash)
    except LogProofError as exc:
        print(f"INCONSISTENT: {exc}")
        return 1
    if args.update:
        Path(args.since).write_text(json.dumps(answer, indent=2) + "\n", encoding="utf-8")
    print(f"consistent: the log grew append-only from {old.tree_size} to {new.tree_size} leaves")
    return 0


# ---------------------------------------------------------------- disputes

def _print_verdict(view, public_key) -> dict:
    """Print the verdict and return it. With the service key, what is printed is the
    payload whose signature was checked, never the unsigned copy beside it."""
    from registry.disputes import verify_verdict

    where = "dispute answer"
    if public_key is not None:
        signed = answers.get(view, where, "signed_verdict", kind=str)
        verdict = verify_verdict(answers.b64(signed, f"{where}.signed_verdict"), public_key)
        print("verdict signature checked with the service key")
    else:
        verdict = answers.get(view, where, "verdict", kind=dict)
        print("warning: verdict signature NOT checked; pass --service-key", file=sys.stderr)
    for line in answers.verdict_lines(verdict):
        print(line)
    return verdict


def cmd_dispute_open(args) -> int:
    from cards import keys

    claims = []
    for item in args.claim:
        card_id, sep, opening_path = item.partition("=")
        if not sep or not card_id or not opening_path:
            raise LaminateError(f"--claim {item!r}: expected CARD_ID=OPENING_FILE")
        try:
            opening = json.loads(_read(opening_path, "opening"))
        except (ValueError, RecursionError):
            raise LaminateError(f"{opening_path}: not a JSON watermark opening") from None
        claims.append({"card_id": card_id, "opening": opening})
    fields, files = ({"claims": json.dumps(claims)} if claims else {}), {}
    if getattr(args, "dawn", None):
        fields["dawn_claim"], files["dawn_evidence"], files["served_model"] = _dawn_claim(args)
    elif not claims:
        raise LaminateError("give --claim CARD_ID=OPENING, --dawn STATE, or both")
    if args.suspect:
        files["model"] = (Path(args.suspect).name, _read(args.suspect, "suspect model"))
    elif args.suspect_url:
        fields["prediction_url"] = args.suspect_url
    else:
        raise LaminateError("give --suspect MODEL.onnx or --suspect-url URL")
    body, content_type = _multipart(fields, files)
    status, view = _request("POST", f"{args.server.rstrip('/')}/v1/disputes", token=args.token,
                            body=body, content_type=content_type, timeout=600)
    if status != 201:
        raise _fail(status, view, "dispute")
    verdict = _print_verdict(view, keys.load_public_key(args.service_key)
                             if args.service_key else None)
    if args.out:
        Path(args.out).write_text(json.dumps(view, indent=2) + "\n", encoding="utf-8")
    return 0 if verdict.get("winner") else 1


def _dawn_claim(args):
    """(claim JSON, evidence file, served model file) from a serve-model state directory:
    the serving card, the DAWN opening and the chosen anchored head (``--head``, by
    default the newest under STATE/anchors/), with the evidence of the ``--client``s."""
    import hashlib

    from verifier.dawn_evidence import build_evidence
    from verifier.serving_card import MAX_SERVING_CARD_BYTES, open_serving_card

    state = Path(args.dawn)
    if not args.client or not args.served_model:
        raise LaminateError("--dawn needs --client ID (repeatable) and --served-model FILE")
    card_bytes = _read(state / "serving-card.cbor", "serving card")[:MAX_SERVING_CARD_BYTES + 1]
    try:
        card = open_serving_card(card_bytes)
    except LaminateError as exc:
        raise LaminateError(f"{state / 'serving-card.cbor'}: {exc}") from None
    head_path = Path(args.head) if args.head else max(
        (state / "anchors").glob("*.head"), key=lambda p: int(p.stem), default=None)
    if head_path is None:
        raise LaminateError(f"{state / 'anchors'}: no anchored head (serve-model --registry "
                            "registers them; or give --head FILE)")
    evidence = build_evidence(state / "log.sqlite", _read(head_path, "log head"), card,
                              list(args.client))
    try:
        opening = json.loads(_read(state / "dawn.opening.json", "DAWN opening"))
    except ValueError:
        raise LaminateError(f"{state / 'dawn.opening.json'}: not JSON") from None
    claim = json.dumps({"serving_card_id": hashlib.sha256(card_bytes).hexdigest(),
                        "opening": opening})
    return (claim, ("evidence.cbor", evidence),
            (Path(args.served_model).name, _read(args.served_model, "served model")))


def cmd_dispute_show(args) -> int:
    from cards import keys

    status, view = _request("GET", f"{args.server.rstrip('/')}/v1/disputes/"
                            + urllib.parse.quote(args.dispute_id, safe=""))
    if status != 200:
        raise _fail(status, view, f"dispute {args.dispute_id}")
    verdict = _print_verdict(view, keys.load_public_key(args.service_key)
                             if args.service_key else None)
    return 0 if verdict.get("winner") else 1


# ---------------------------------------------------------------- witness

def _request_text(url: str, limit: int = 1 << 16) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return resp.status, resp.read(limit + 1)[:limit].decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, OSError) as exc:
        raise LaminateError(f"{url}: cannot connect ({exc})") from None
