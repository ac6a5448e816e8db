"""`laminate log witness`, `log checkpoint` and `log note-key`, and the checkpoint half
of `log verify`: a client pins the log's note key and k of n witness keys (note
verifier-key strings) and refuses a checkpoint with fewer valid cosignatures."""
from __future__ import annotations

import sys
import urllib.parse
from pathlib import Path

from cards.errors import LaminateError

from . import answers
from .client import _fail, _read, _request, _request_text

KEY_FILE_MAX = 4096


def add_pins(parser, *, required: bool) -> None:
    parser.add_argument("--log-key", required=required, metavar="VKEY",
                        help="the log's note verifier key (<name>+<hash>+<key>, as served at "
                             "GET /v1/log/note-key), or a file holding it")
    parser.add_argument("--witness", action="append", default=[], metavar="VKEY",
                        help="a witness's verifier key, or a file holding it; repeatable")
    parser.add_argument("--min-witnesses", type=int, default=0, metavar="K",
                        help="refuse a checkpoint cosigned by fewer than K of the --witness "
                             "keys [default 0]")


def note_key(value: str, what: str):
    """A verifier key given inline or as a file; a user error names the option."""
    from verifier.logproof import LogProofError, parse_verifier_key

    path = Path(value)
    if "+" not in value or path.is_file():
        if not path.is_file():
            raise LaminateError(f"{what} {value!r}: neither a verifier key nor a file")
        if path.stat().st_size > KEY_FILE_MAX:
            raise LaminateError(f"{what} {value}: file over {KEY_FILE_MAX} bytes")
        value = path.read_text(encoding="utf-8", errors="replace").strip()
    try:
        return parse_verifier_key(value, what)
    except LogProofError as exc:
        raise LaminateError(str(exc)) from None


def pins(args):
    from verifier.logproof import SIG_COSIGN

    if args.min_witnesses < 0:
        raise LaminateError(f"--min-witnesses: must be 0 or more, got {args.min_witnesses}")
    log_key = note_key(args.log_key, "--log-key")
    witnesses = [note_key(w, "--witness") for w in args.witness]
    for w in witnesses:
        if w.sig_type != SIG_COSIGN:
            raise LaminateError(f"--witness {w.name}: must be a cosignature/v1 key (type 4), "
                                "as `laminate log note-key KEY --name N --witness` prints")
    if args.min_witnesses > len(witnesses):
        raise LaminateError(f"--min-witnesses {args.min_witnesses}: only {len(witnesses)} "
                            "--witness keys given")
    return log_key, witnesses


def check_receipt_against(args, tree_size: int, root: bytes) -> str:
    """`log verify --checkpoint`: the cosigned checkpoint must be the receipt's tree, or
    a later one that a consistency proof links to it. Returns what was checked;
    LogProofError names the failed check."""
    from verifier.logproof import LogProofError, check_consistency, check_witnessed

    log_key, witnesses = pins(args)
    note = _read(args.checkpoint, "checkpoint").decode("utf-8", "replace")
    cp = check_witnessed(note, log_key, witnesses, args.min_witnesses)
    if cp.tree_size < tree_size:
        raise LogProofError(f"checkpoint: size {cp.tree_size} is older than the receipt's "
                            f"tree ({tree_size}); use a newer cosigned checkpoint")
    if cp.tree_size == tree_size:
        if cp.root_hash != root:
            raise LogProofError(f"checkpoint: root for size {tree_size} differs from the "
                                "receipt's (a fork)")
    else:
        if not args.consistency:
            raise LogProofError(
                f"checkpoint: size {cp.tree_size} is newer than the receipt's {tree_size}; "
                f"pass --consistency with GET /v1/log/consistency?first={tree_size}"
                f"&second={cp.tree_size}")
        saved = answers.parse(_read(args.consistency, "consistency proof"), args.consistency)
        path = answers.get(saved, args.consistency, "consistency_proof", kind=list)
        check_consistency(tree_size, cp.tree_size,
                          [answers.hex_bytes(p, "consistency_proof") for p in path],
                          root, cp.root_hash)
    return (f"checkpoint of size {cp.tree_size} signed by log key {log_key.name}, "
            f"{args.min_witnesses} witness cosignatures required")


def _fetch_checkpoint(server: str) -> str:
    base = server.rstrip("/")
    status, note = _request_text(f"{base}/checkpoint")
    if status != 200:
        raise LaminateError(f"{base}/checkpoint: HTTP {status}")
    return note


def cmd_log_checkpoint(args) -> int:
    """Fetch the checkpoint, add the cosignatures of witness copies, and require the
    log key's signature and K pinned witnesses."""
    from verifier.logproof import LogProofError, check_witnessed, merge_cosignatures

    log_key, witnesses = pins(args)
    note = merge_cosignatures(_fetch_checkpoint(args.server),
                              [_read(p, "cosigned checkpoint").decode("utf-8", "replace")
                               for p in args.cosigned])
    try:
        cp = check_witnessed(note, log_key, witnesses, args.min_witnesses)
    except LogProofError as exc:
        print(f"REFUSED: {exc}")
        return 1
    if args.out:
        Path(args.out).write_text(note, encoding="utf-8")
    print(f"checkpoint: size {cp.tree_size}, root {cp.root_hash.hex()}, signed by "
          f"{log_key.name}, at least {args.min_witnesses} witness cosignatures checked")
    return 0


def cmd_log_witness(args) -> int:
    """Fetch the service's checkpoint, check it extends the last one this witness saw,
    and print it with this witness's cosignature added."""
    from cards import keys
    from registry.witness import Refused, load_state, witness

    log_key = note_key(args.log_key, "--log-key")
    witness_key = keys.load_private_key(args.witness_key)
    if keys.key_kind(witness_key) != "ed25519":
        raise LaminateError(f"{args.witness_key}: a witness key must be Ed25519")
    base = args.server.rstrip("/")
    note = _fetch_checkpoint(base)
    state_path = Path(args.state)
    last = load_state(state_path).get(log_key.name)
    proof: list[bytes] = []
    size_line = note.split("\n")[1] if note.count("\n") > 2 else ""
    if isinstance(last, dict) and size_line.isdigit() and int(size_line) > last.get("size", 0) > 0:
        status, answer = _request("GET", f"{base}/v1/log/consistency?" + urllib.parse.urlencode(
            {"first": last["size"], "second": int(size_line)}))
        if status != 200:
            raise _fail(status, answer, "consistency proof")
        path = answers.get(answer, "consistency answer", "consistency_proof", kind=list)
        proof = [answers.hex_bytes(p, "consistency_proof") for p in path]
    try:
        cosigned = witness(note, log_key, proof, state_path, args.name, witness_key)
    except Refused as exc:
        print(f"REFUSED: {exc}")
        return 1
    if args.out:
        Path(args.out).write_text(cosigned, encoding="utf-8")
    sys.stdout.write(cosigned)
    return 0


def cmd_log_note_key(args) -> int:
    """Print the verifier key of an Ed25519 key: a witness's (cosignature/v1) or a log's."""
    from cards import keys
    from verifier.logproof import SIG_COSIGN, SIG_ED25519, LogProofError, verifier_key

    key = keys.load_private_key(args.key)
    if keys.key_kind(key) != "ed25519":
        raise LaminateError(f"{args.key}: note keys are Ed25519")
    try:
        print(verifier_key(args.name, key.public_key(),
                           SIG_COSIGN if args.witness else SIG_ED25519))
    except LogProofError as exc:
        raise LaminateError(f"--name: {exc}") from None
    return 0
