"""Pure transparency-log proof checks (RFC 9162) and signed tree heads.

No storage and no service dependency: the service, the offline ``laminate log verify``
and the tests against the public vectors all accept proofs only through these functions.
"""
from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cards import cbor, cose, keys, merkle
from cards.errors import LaminateError

TREE_HEAD_TYPE = "laminate-tree-head/1"
HASH_SIZE = 32


class LogProofError(LaminateError):
    """A proof, tree head or receipt that does not verify; the message says why."""


# ---------------------------------------------------------------- verification path

def _digest(value, name: str) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != HASH_SIZE:
        raise LogProofError(f"{name}: expected a {HASH_SIZE}-byte SHA-256 digest")
    return bytes(value)


def _size(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LogProofError(f"{name}: expected a non-negative integer, got {value!r}")
    return value


def _path(proof, name: str) -> list[bytes]:
    if proof is None:
        return []
    if not isinstance(proof, (list, tuple)):
        raise LogProofError(f"{name}: expected a list of digests")
    return [_digest(node, f"{name}[{i}]") for i, node in enumerate(proof)]


def check_inclusion(leaf_hash, leaf_index, tree_size, proof, root) -> None:
    """RFC 9162 §2.1.3.2: raise LogProofError unless ``proof`` shows ``leaf_hash`` at
    ``leaf_index`` in the tree of ``tree_size`` leaves with ``root``."""
    root = _digest(root, "root_hash")
    if root_from_inclusion(leaf_hash, leaf_index, tree_size, proof) != root:
        raise LogProofError(f"inclusion proof for leaf {leaf_index} in tree of size "
                            f"{tree_size} does not lead to root {root.hex()}")


def check_consistency(size1, size2, proof, root1, root2) -> None:
    """RFC 9162 §2.1.4.2: raise LogProofError unless the tree of ``size2`` leaves with
    ``root2`` extends the tree of ``size1`` leaves with ``root1``."""
    size1 = _size(size1, "first")
    size2 = _size(size2, "second")
    if size1 > size2:
        raise LogProofError(f"first tree size {size1} is larger than second {size2}")
    if size1 == 0:
        raise LogProofError("a consistency proof from the empty tree proves nothing")
    if size1 == size2:
        # Nothing to prove but that both heads name the same tree.
        if proof:
            raise LogProofError("equal tree sizes need an empty consistency proof")
        if root1 != root2:
            raise LogProofError(f"two different roots for the same tree size {size1}")
        return
    root1 = _digest(root1, "first root")
    root2 = _digest(root2, "second root")
    path = _path(proof, "consistency_proof")
    if not merkle.verify_consistency(size1, size2, path, root1, root2):
        raise LogProofError(f"consistency proof from size {size1} to {size2} does not verify: "
                            "the log was not extended append-only")


def root_from_inclusion(leaf_hash: bytes, leaf_index: int, tree_size: int,
                        proof: list[bytes]) -> bytes:
    """The root an inclusion path leads to, needed where the root itself is not
    transmitted (COSE Receipts detach it); malformed input raises LogProofError."""
    leaf_hash = _digest(leaf_hash, "leaf_hash")
    leaf_index = _size(leaf_index, "leaf_index")
    tree_size = _size(tree_size, "tree_size")
    path = _path(proof, "inclusion_proof")
    if leaf_index >= tree_size:
        raise LogProofError(f"leaf_index {leaf_index} is not below tree_size {tree_size}")
    root = merkle.inclusion_root(leaf_hash, leaf_index, tree_size, path)
    if root is None:
        raise LogProofError(f"inclusion proof of {len(path)} nodes does not fit a tree of "
                            f"size {tree_size}")
    return root


# ---------------------------------------------------------------- signed tree heads

@dataclass(frozen=True)
class TreeHead:
    """A signed tree head: the log's size and root at a time, and the service's
    COSE_Sign1 over them."""
    tree_size: int
    root_hash: bytes
    timestamp_ms: int
    signed: bytes          # COSE_Sign1 by the service key over dcbor(payload)

    def to_dict(self) -> dict:
        """JSON-ready fields: root as hex, the signed bytes as base64."""
        return {"tree_size": self.tree_size, "root_hash": self.root_hash.hex(),
                "timestamp_ms": self.timestamp_ms,
                "signed": base64.b64encode(self.signed).decode("ascii")}


def sign_tree_head(tree_size: int, root_hash: bytes, private_key) -> TreeHead:
    """Sign the head of a log of ``tree_size`` leaves with root ``root_hash``,
    stamped with the current time, with the service's ``private_key`` (Ed25519 or P-256)."""
    stamp = int(time.time() * 1000)
    payload = {"type": TREE_HEAD_TYPE, "tree_size": tree_size, "root_hash": root_hash,
               "timestamp_ms": stamp}
    signed = cose.sign1(cbor.dumps(payload), private_key,
                        kid=keys.key_id(keys.public_key_of(private_key)))
    return TreeHead(tree_size, root_hash, stamp, signed)


def verify_tree_head(signed: bytes, public_key) -> TreeHead:
    """Check a signed tree head against the service's public key and return its fields."""
    try:
        msg = cose.parse_sign1(signed)
    except LaminateError as exc:
        raise LogProofError(f"tree head: not a COSE_Sign1 ({exc})") from None
    if not cose.verify_sign1(msg, public_key):
        raise LogProofError("tree head: signature does not verify with the service key")
    try:
        payload = cbor.loads(msg.payload, deterministic=True, field="tree head")
    except LaminateError as exc:
        raise LogProofError(str(exc)) from None
    if not isinstance(payload, dict) or payload.get("type") != TREE_HEAD_TYPE \
            or set(payload) != {"type", "tree_size", "root_hash", "timestamp_ms"}:
        raise LogProofError(f"tree head: payload is not a {TREE_HEAD_TYPE} statement")
    size = _size(payload["tree_size"], "tree head tree_size")
    root = _digest(payload["root_hash"], "tree head root_hash")
    return TreeHead(size, root, _size(payload["timestamp_ms"], "timestamp_ms"), bytes(signed))


# ---------------------------------------------------------------- signed-note checkpoints
# A checkpoint is the note text "<origin>\n<size>\n<base64 root>\n"; the log signs it with
# an Ed25519 note key and witnesses add cosignatures (signed over a timestamped header) as
# further "— <name> <base64(key hash || signature)>" lines, so any tlog client reads it.

NOTE_MAX = 1 << 16
SIG_ED25519, SIG_COSIGN = 0x01, 0x04
_DASH = "\u2014 "


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    tree_size: int
    root_hash: bytes
    body: str                     # the signed note text, ending in a newline


def note_key_hash(name: str, sig_type: int, public_raw: bytes) -> bytes:
    """The 4-byte key hash that names a note key: SHA-256(name || LF || type || key)."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + public_raw).digest()[:4]


def _note_name(name: str) -> str:
    if not name or any(c.isspace() or c == "+" for c in name) or len(name) > 256:
        raise LogProofError(f"note key name {name!r}: must be non-empty, without spaces or '+'")
    return name


def _raw(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def verifier_key(name: str, public_key, sig_type: int = SIG_ED25519) -> str:
    """The ``<name>+<hex key hash>+<base64(type || key)>`` string clients pin."""
    raw = _raw(public_key)
    return (f"{_note_name(name)}+{note_key_hash(name, sig_type, raw).hex()}+"
            f"{base64.b64encode(bytes([sig_type]) + raw).decode()}")


def checkpoint_body(origin: str, tree_size: int, root_hash: bytes) -> str:
    if not origin or "\n" in origin:
        raise LogProofError(f"checkpoint origin {origin!r}: must be one non-empty line")
    root_hash = _digest(root_hash, "checkpoint root_hash")
    return f"{origin}\n{_size(tree_size, 'checkpoint tree_size')}\n" \
           f"{base64.b64encode(root_hash).decode()}\n"


def sign_checkpoint(origin: str, tree_size: int, root_hash: bytes, name: str,
                    private_key: ed25519.Ed25519PrivateKey) -> str:
    """A checkpoint signed by the log's Ed25519 note key ``name``."""
    body = checkpoint_body(origin, tree_size, root_hash)
    raw = _raw(private_key.public_key())
    blob = note_key_hash(_note_name(name), SIG_ED25519, raw) + private_key.sign(body.encode())
    return f"{body}\n{_DASH}{name} {base64.b64encode(blob).decode()}\n"


def cosign_checkpoint(note: str, name: str, private_key: ed25519.Ed25519PrivateKey,
                      timestamp: int | None = None) -> str:
    """``note`` with a witness cosignature added: the key signs the checkpoint body under a
    header carrying the time, so a cosignature also says when the witness saw it."""
    body, _ = split_note(note)
    stamp = int(time.time()) if timestamp is None else timestamp
    msg = f"cosignature/v1\ntime {stamp}\n{body}".encode()
    raw = _raw(private_key.public_key())
    blob = note_key_hash(_note_name(name), SIG_COSIGN, raw) + stamp.to_bytes(8, "big") \
        + private_key.sign(msg)
    return f"{note}{_DASH}{name} {base64.b64encode(blob).decode()}\n"


def split_note(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    """(body, [(key name, key hash || signature)]) of a signed note, bounded in size."""
    if not isinstance(note, str) or len(note) > NOTE_MAX:
        raise LogProofError(f"checkpoint: not a note of at most {NOTE_MAX} characters")
    body, sep, sigs = note.rpartition("\n\n")
    if not sep or not sigs.endswith("\n"):
        raise LogProofError("checkpoint: no blank line before the signature lines")
    lines = []
    for line in sigs[:-1].split("\n"):
        name, _, b64 = line.removeprefix(_DASH).partition(" ")
        try:
            blob = base64.b64decode(b64, validate=True)
        except ValueError:
            blob = b""
        if not line.startswith(_DASH) or len(blob) < 5:
            raise LogProofError(f"checkpoint: malformed signature line {line[:80]!r}")
        lines.append((name, blob))
    return body + "\n", lines


def parse_checkpoint(body: str) -> Checkpoint:
    lines = body.split("\n")
    if len(lines) < 4 or lines[-1] != "" or any(not line for line in lines[:-1]):
        raise LogProofError("checkpoint: body must be origin, size, root (and extension) lines")
    origin, size_s, root_s = lines[0], lines[1], lines[2]
    if not size_s.isdigit() or str(int(size_s)) != size_s or len(size_s) > 20:
        raise LogProofError(f"checkpoint tree_size {size_s[:30]!r}: not a decimal integer")
    try:
        root = base64.b64decode(root_s, validate=True)
    except ValueError:
        root = b""
    return Checkpoint(origin, int(size_s), _digest(root, "checkpoint root_hash"), body)


def verify_checkpoint(note: str, origin: str, name: str,
                      public_key: ed25519.Ed25519PublicKey) -> Checkpoint:
    """Parse a signed checkpoint of log ``origin`` and check the log key's signature."""
    body, sigs = split_note(note)
    cp = parse_checkpoint(body)
    if cp.origin != origin:
        raise LogProofError(f"checkpoint origin {cp.origin[:80]!r} is not {origin!r}")
    want = note_key_hash(name, SIG_ED25519, _raw(public_key))
    for sig_name, blob in sigs:
        if sig_name == name and blob[:4] == want:
            try:
                public_key.verify(blob[4:], body.encode())
                return cp
            except InvalidSignature:
                raise LogProofError(f"checkpoint: signature by {name} does not verify") from None
    raise LogProofError(f"checkpoint: no signature by log key {name}")


def check_cosignatures(note: str, witnesses: dict[str, ed25519.Ed25519PublicKey],
                       k: int) -> list[str]:
    """Names of the witnesses whose cosignatures verify; LogProofError unless at least
    ``k`` of ``witnesses`` cosigned this checkpoint, saying what each other one lacked."""
    body, sigs = split_note(note)
    good: list[str] = []
    why = {name: "no cosignature" for name in witnesses}
    for sig_name, blob in sigs:
        key = witnesses.get(sig_name)
        if key is None or sig_name in good:
            continue
        if len(blob) != 4 + 8 + 64 or blob[:4] != note_key_hash(sig_name, SIG_COSIGN, _raw(key)):
            why[sig_name] = "a cosignature by another key than the pinned one"
            continue
        stamp = int.from_bytes(blob[4:12], "big")
        try:
            key.verify(blob[12:], f"cosignature/v1\ntime {stamp}\n{body}".encode())
        except InvalidSignature:
            why[sig_name] = "its cosignature does not verify"
            continue
        good.append(sig_name)
    if len(good) < k:
        lacking = "; ".join(f"{n}: {why[n]}" for n in witnesses if n not in good)
        raise LogProofError(f"witness_cosignatures: {len(good)} valid witness cosignatures, "
                            f"{k} required ({lacking})")
    return good


def merge_cosignatures(note: str, others: list[str]) -> str:
    """``note`` with the signature lines of other copies of the same checkpoint added
    (each witness hands back its own copy); copies of another checkpoint are skipped."""
    body, _ = split_note(note)
    lines = note.rstrip("\n").split("\n")
    seen = set(lines)
    for other in others:
        other_body, _ = split_note(other)
        if other_body != body:
            continue
        for line in other.rpartition("\n\n")[2].rstrip("\n").split("\n"):
            if line not in seen:
                seen.add(line)
                lines.append(line)
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class NoteKey:
    """A parsed note verifier key: the name, the signature type and the Ed25519 key."""
    name: str
    sig_type: int
    public_key: ed25519.Ed25519PublicKey


def parse_verifier_key(text: str, what: str = "verifier key") -> NoteKey:
    """``<name>+<hex key hash>+<base64(type || key)>``; LogProofError unless the key hash
    is the one of that name, type and key (so a mistyped or altered key is refused)."""
    parts = text.strip().split("+", 2) if isinstance(text, str) and len(text) < 1024 else []
    if len(parts) != 3:
        raise LogProofError(f"{what} {str(text)[:80]!r}: expected <name>+<key hash>+<key>")
    name, hash_hex, b64 = parts
    _note_name(name)
    try:
        blob, want = base64.b64decode(b64, validate=True), bytes.fromhex(hash_hex)
    except ValueError:
        blob, want = b"", b""
    if len(blob) != 33 or blob[0] not in (SIG_ED25519, SIG_COSIGN) or len(want) != 4:
        raise LogProofError(f"{what} {name}: not an Ed25519 (type 1) or cosignature/v1 "
                            "(type 4) key")
    if note_key_hash(name, blob[0], blob[1:]) != want:
        raise LogProofError(f"{what} {name}: key hash {hash_hex} does not match its key")
    return NoteKey(name, blob[0], ed25519.Ed25519PublicKey.from_public_bytes(blob[1:]))


def check_witnessed(note: str, log_key: NoteKey, witnesses: list[NoteKey],
                    k: int) -> Checkpoint:
    """The checkpoint, once signed by the pinned log key and cosigned by at least ``k``
    of the pinned witnesses (cosignature/v1 keys)."""
    if log_key.sig_type != SIG_ED25519:
        raise LogProofError(f"log key {log_key.name}: must be an Ed25519 note key (type 1)")
    cp = verify_checkpoint(note, log_key.name, log_key.name, log_key.public_key)
    if k > len(witnesses):
        raise LogProofError(f"witness_cosignatures: {k} required but only "
                            f"{len(witnesses)} witness keys given")
    for w in witnesses:
        if w.sig_type != SIG_COSIGN:
            raise LogProofError(f"witness key {w.name}: must be a cosignature/v1 key (type 4)")
    if k:
        check_cosignatures(note, {w.name: w.public_key for w in witnesses}, k)
    return cp
