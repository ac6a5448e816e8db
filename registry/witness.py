"""A witness: cosigns a log's checkpoint only after checking that it extends the last
checkpoint it saw from that log, so two clients shown different trees (a fork) cannot
both collect its cosignature. Its memory is one local JSON state file."""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from cards import keys
from cards.errors import LaminateError
from verifier.logproof import (
    LogProofError,
    NoteKey,
    check_consistency,
    check_witnessed,
    cosign_checkpoint,
    split_note,
)

STATE_MAX = 1 << 20


class Refused(LaminateError):
    """The checkpoint is not cosigned; the message says which check failed."""


def log_origin(service_public_key) -> str:
    """The origin (and note key name) the registry uses for a service key."""
    return f"laminate.log/{keys.key_id(service_public_key).hex()}"


def load_state(path: Path) -> dict:
    if not path.exists():
        return {}
    if path.stat().st_size > STATE_MAX:
        raise LaminateError(f"{path}: witness state larger than {STATE_MAX} bytes")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise LaminateError(f"{path}: witness state is not JSON ({exc})") from None
    if not isinstance(state, dict):
        raise LaminateError(f"{path}: witness state must be a JSON object")
    return state


def save_state(path: Path, state: dict) -> None:
    """Write atomically: a crash leaves the old state or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def witness(note: str, log_key: NoteKey, proof: list[bytes], state_path: Path,
            witness_name: str, witness_key, timestamp: int | None = None) -> str:
    """Check ``note`` (signed by the pinned log note key) against the last checkpoint in
    the state file and return it cosigned; Refused on a bad signature, a smaller tree,
    two roots for one size or a consistency proof that does not verify. The state moves
    only forward."""
    origin = log_key.name
    try:
        cp = check_witnessed(note, log_key, [], 0)
    except LogProofError as exc:
        raise Refused(f"checkpoint: {exc}") from None
    state = load_state(state_path)
    last = state.get(origin)
    if isinstance(last, dict):
        old_size, old_root = last.get("size"), base64.b64decode(str(last.get("root", "")))
        if not isinstance(old_size, int) or len(old_root) != 32:
            raise LaminateError(f"{state_path}: entry for {origin} is malformed")
        if cp.tree_size < old_size:
            raise Refused(f"checkpoint size {cp.tree_size} is smaller than the {old_size} "
                          "already cosigned: the log rolled back")
        if cp.tree_size == old_size and cp.root_hash != old_root:
            raise Refused(f"fork: two different roots for tree size {old_size} "
                          f"({old_root.hex()} cosigned before, {cp.root_hash.hex()} now)")
        if cp.tree_size > old_size:
            try:
                check_consistency(old_size, cp.tree_size, proof, old_root, cp.root_hash)
            except LogProofError as exc:
                raise Refused(f"consistency from {old_size} to {cp.tree_size}: {exc}") from None
    cosigned = cosign_checkpoint(note, witness_name, witness_key, timestamp)
    state[origin] = {"size": cp.tree_size,
                     "root": base64.b64encode(cp.root_hash).decode("ascii"),
                     "checkpoint": split_note(note)[0]}
    save_state(state_path, state)
    return cosigned
