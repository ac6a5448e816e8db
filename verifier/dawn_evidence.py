"""Anchored query logs: the signed head of a deployment's log, and the DAWN evidence
replayed against it.

A serving log head is a COSE_Sign1 by the deployment's receipt key (the one its serving
card names) over dcbor({format, serving_card, tree_size, root}). Registered with the
service, it is a log entry: its index proves that every batch under that root existed
before any model first seen later, so the flipped queries replayed in a dispute were
fixed before the suspect.

DAWN evidence is what an owner hands an arbiter: every batch record of the anchored tree
(their Merkle root must be the anchored root, so the set of a client's batches is
complete: an owner cannot leave out the flips a suspect happens to miss) and, for each
batch of the named clients, its canonical inputs and answer leaves (their Merkle root
must be the one the record signed). What comes out is the ``(index, input digest,
canonical input, label)`` rows `verifier.dawn_ownership` replays.
"""
from __future__ import annotations

import hashlib
import hmac
import sqlite3
from pathlib import Path

from cards import cbor, cose, keys, merkle
from cards.errors import CardFormatError, LaminateError

HEAD_FORMAT = "laminate-serving-log-head/1"
EVIDENCE_FORMAT = "laminate-dawn-evidence/1"
MAX_HEAD_BYTES = 4096
MAX_RECORDS = 2_000_000
MAX_CLIENTS = 64
_HEAD_FIELDS = {"format", "serving_card", "tree_size", "root"}
_EVIDENCE_FIELDS = {"format", "serving_card", "clients", "records", "batches"}


class EvidenceError(LaminateError):
    """DAWN evidence or a log head that does not hold up; names the field and why."""

    def __init__(self, field: str, reason: str):
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}")


def sign_head(private_key, serving_card: str, tree_size: int, root: bytes) -> bytes:
    """The registrable statement of a deployment log's head, signed by the receipt key."""
    payload = cbor.dumps({"format": HEAD_FORMAT, "serving_card": serving_card,
                          "tree_size": int(tree_size), "root": bytes(root)})
    return cose.sign1(payload, private_key, kid=keys.key_id(keys.public_key_of(private_key)))


def head_card(data: bytes) -> str:
    """The serving card digest a head names (unverified: to find the card that checks it)."""
    return _head(data)[1]["serving_card"]


def open_head(data: bytes, card) -> tuple[int, bytes]:
    """(tree size, root) of a head signed by ``card``'s receipt key for that card."""
    msg, payload = _head(data)
    public = card.receipt_public_key()
    if msg.kid != keys.key_id(public) or not cose.verify_sign1(msg, public):
        raise EvidenceError("log_head.signature", "not signed by the receipt key the serving "
                                                  "card names")
    if payload["serving_card"] != card.digest:
        raise EvidenceError("log_head.serving_card", "names another serving card")
    return payload["tree_size"], payload["root"]


def _head(data: bytes):
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_HEAD_BYTES:
        raise EvidenceError("log_head", f"expected at most {MAX_HEAD_BYTES} bytes")
    try:
        msg = cose.parse_sign1(bytes(data), require_tag=True, deterministic=True,
                               field="log_head")
        payload = cbor.loads(msg.payload, deterministic=True, field="log_head.payload")
    except CardFormatError as exc:
        raise EvidenceError(exc.field, exc.reason) from None
    if type(payload) is not dict or set(payload) != _HEAD_FIELDS \
            or payload["format"] != HEAD_FORMAT:
        raise EvidenceError("log_head.payload", f"expected a {HEAD_FORMAT} statement")
    if type(payload["serving_card"]) is not str or len(payload["serving_card"]) != 64 \
            or type(payload["tree_size"]) is not int or payload["tree_size"] < 0 \
            or type(payload["root"]) is not bytes or len(payload["root"]) != 32:
        raise EvidenceError("log_head.payload", "expected serving_card (hex), tree_size, root")
    return msg, payload


def make_evidence(serving_card: str, clients: list[str], records: list[bytes],
                  batches: list[tuple[int, list[bytes], list[bytes]]]) -> bytes:
    """The evidence bytes: every record of the anchored tree, and (seq, inputs, leaves)
    for each batch of ``clients``."""
    return cbor.dumps({"format": EVIDENCE_FORMAT, "serving_card": serving_card,
                       "clients": list(clients), "records": list(records),
                       "batches": [[seq, list(inputs), list(leaves)]
                                   for seq, inputs, leaves in batches]})


def check_evidence(data: bytes, card, head: bytes) -> tuple[list[str], list]:
    """(clients, rows) once ``data`` holds up against the anchored ``head``: the records
    hash to the anchored root, every batch of the named clients is present, and each
    batch's inputs and answers are the ones its record signed. EvidenceError otherwise."""
    size, root = open_head(head, card)
    doc = _evidence(data)
    if doc["serving_card"] != card.digest:
        raise EvidenceError("evidence.serving_card", "names another serving card")
    records = doc["records"]
    if len(records) != size:
        raise EvidenceError("evidence.records", f"{len(records)} records, the anchored head "
                                                f"has {size}")
    tree = merkle.MerkleTree()
    for record in records:
        tree.add(record)
    if not hmac.compare_digest(tree.root(), root):
        raise EvidenceError("evidence.records", "do not hash to the anchored root")
    clients = set(doc["clients"])
    wanted = {}
    for seq, record in enumerate(records):
        payload = _record(record, seq)
        if payload["client"] in clients:
            wanted[seq] = payload
    given = {}
    for i, item in enumerate(doc["batches"]):
        if type(item) is not list or len(item) != 3 or type(item[0]) is not int \
                or type(item[1]) is not list or type(item[2]) is not list:
            raise EvidenceError(f"evidence.batches[{i}]", "expected [seq, inputs, leaves]")
        if item[0] not in wanted or item[0] in given:
            raise EvidenceError(f"evidence.batches[{i}].seq",
                                "not a batch of the named clients, or given twice")
        given[item[0]] = item
    missing = sorted(set(wanted) - set(given))
    if missing:
        raise EvidenceError("evidence.batches", f"batch {missing[0]} of the named clients is "
                                                "missing: the evidence must hold all of them")
    rows = []
    for seq in sorted(wanted):
        rows.extend(_batch_rows(seq, wanted[seq], given[seq][1], given[seq][2], card.digest))
    return sorted(clients), rows


def _evidence(data: bytes) -> dict:
    try:
        doc = cbor.loads(data, field="evidence")
    except CardFormatError as exc:
        raise EvidenceError(exc.field, exc.reason) from None
    if type(doc) is not dict or set(doc) != _EVIDENCE_FIELDS or doc["format"] != EVIDENCE_FORMAT:
        raise EvidenceError("evidence", f"expected a {EVIDENCE_FORMAT} map of "
                                        f"{', '.join(sorted(_EVIDENCE_FIELDS))}")
    clients = doc["clients"]
    if type(clients) is not list or not 1 <= len(clients) <= MAX_CLIENTS \
            or not all(type(c) is str and 0 < len(c) <= 64 for c in clients):
        raise EvidenceError("evidence.clients", f"expected 1 to {MAX_CLIENTS} client ids")
    if type(doc["records"]) is not list or len(doc["records"]) > MAX_RECORDS \
            or not all(type(r) is bytes for r in doc["records"]):
        raise EvidenceError("evidence.records", f"expected at most {MAX_RECORDS} byte strings")
    if type(doc["batches"]) is not list or len(doc["batches"]) > MAX_RECORDS:
        raise EvidenceError("evidence.batches", "expected a list")
    return doc


def _record(record: bytes, seq: int) -> dict:
    from verifier.receipts_inference import FORMAT

    try:
        payload = cbor.loads(record, field=f"evidence.records[{seq}]")
    except CardFormatError as exc:
        raise EvidenceError(exc.field, exc.reason) from None
    if type(payload) is not dict or payload.get("format") != FORMAT \
            or type(payload.get("client")) is not str or type(payload.get("count")) is not int \
            or type(payload.get("first_index")) is not int \
            or type(payload.get("root")) is not bytes:
        raise EvidenceError(f"evidence.records[{seq}]", f"not a {FORMAT} payload")
    return payload


def _batch_rows(seq: int, payload: dict, inputs: list, leaves: list, card_digest: str) -> list:
    where = f"evidence.batches[seq {seq}]"
    if payload.get("serving_card") != card_digest:
        raise EvidenceError(f"evidence.records[{seq}].serving_card", "names another serving card")
    if len(inputs) != payload["count"] or len(leaves) != payload["count"] \
            or not all(type(b) is bytes for b in inputs + leaves):
        raise EvidenceError(where, f"expected {payload['count']} inputs and answers")
    if not hmac.compare_digest(merkle.root_of([merkle.leaf_hash(v) for v in leaves]),
                               payload["root"]):
        raise EvidenceError(f"{where}.leaves", "do not hash to the root the record signed")
    rows = []
    for i, (canonical, leaf) in enumerate(zip(inputs, leaves)):
        try:
            digest, label, *_ = cbor.loads(leaf, field=f"{where}.leaves[{i}]")
        except (CardFormatError, TypeError, ValueError):
            raise EvidenceError(f"{where}.leaves[{i}]", "not [digest, label, ...]") from None
        if hashlib.sha256(canonical).digest() != digest:
            raise EvidenceError(f"{where}.inputs[{i}]", "is not the input its answer names")
        rows.append((payload["first_index"] + i, digest, canonical, label))
    return rows


def read_log(log_path, *queries: tuple[str, tuple]) -> tuple[Path, list[list]]:
    """The deployment log's path and the rows of each (sql, parameters) query, read
    through a read-only connection. Raises LaminateError naming the file."""
    path = Path(log_path)
    if not path.is_file():
        raise LaminateError(f"{path}: deployment log not found")
    try:
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            return path, [db.execute(sql, args).fetchall() for sql, args in queries]
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise LaminateError(f"{path}: not a deployment log ({exc})") from None


def build_evidence(log_path, head: bytes, card, clients: list[str]) -> bytes:
    """DAWN evidence against ``head``: every batch record under it and the inputs and
    answers of each batch of ``clients``, read from the deployment log (read-only)."""
    size, root = open_head(head, card)
    marks = ",".join("?" * len(clients))
    path, (records, batches) = read_log(
        log_path, ("SELECT record FROM batches WHERE seq < ? ORDER BY seq", (size,)),
        (f"SELECT seq, inputs, leaves FROM batches WHERE seq < ? AND client IN ({marks}) "
         "ORDER BY seq", (size, *clients)))
    records = [r for (r,) in records]
    if len(records) != size or merkle.root_of([merkle.leaf_hash(r) for r in records]) != root:
        raise LaminateError(f"{path}: the log does not rebuild the head's root at size {size}")
    return make_evidence(card.digest, clients, records, [
        (seq, cbor.loads(inputs), cbor.loads(leaves)) for seq, inputs, leaves in batches])
