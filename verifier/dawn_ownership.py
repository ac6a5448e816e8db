"""Ownership against an extracted model: replay one client's DAWN-flipped queries.

The owner reveals the DAWN opening (checked against the serving card's commitment) and
hands over its deployment log and the served model (checked against the serving card's
model digest). For each distinct input the client sent that the key flips, the flipped
label is recomputed from the key and the served model's own label, and must equal what
the log says was answered. The suspect is then asked for labels and the sequential
binomial test of the watermark runs against chance 1/(C-1): an independent model matches
a flipped label with probability at most 1/(C-1) (cards/FORMAT.md, "Serving").

The input set is the owner's log; the log's integrity (receipts the client holds, the
Merkle tree head) is what stops an owner from adding inputs after the fact.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from cards import cbor
from cards.errors import CardFormatError, LaminateError
from verifier import dawn
from verifier.binomial import NOT_SHOWN
from verifier.dawn_evidence import read_log
from verifier.ownership import OPENING_MISMATCH, OwnershipResult, ownership_test

MAX_ROWS = 1_000_000      # log rows read for one client
MAX_FLIPS = 1000          # flipped queries replayed (the test's n_max)


class _Flips:
    """The replayed flips in the shape the watermark's ownership test reads triggers."""

    def __init__(self, x, y, classes):
        self._x, self._y = x, y
        self.parameters = {"scheme": dawn.SCHEME, "trigger_count": len(y), "classes": classes,
                           "input_shape": list(x.shape[1:])}

    def matches(self, _commitment) -> bool:
        return True          # the opening was checked against the serving card already

    def triggers(self):
        return self._x, self._y


def client_rows(log_path, client: str) -> list:
    """(index, input digest, canonical input, label) of one client's queries, read-only."""
    path, (batches,) = read_log(log_path, (
        "SELECT first_index, inputs, leaves FROM batches WHERE client = ? ORDER BY seq",
        (client,)))
    rows = []
    for first, inputs, leaves in batches:
        try:
            inputs, leaves = cbor.loads(inputs), cbor.loads(leaves)
            for i, (canonical, leaf) in enumerate(zip(inputs, leaves, strict=True)):
                digest, label, *_ = cbor.loads(leaf)
                rows.append((first + i, digest, canonical, label))
        except (CardFormatError, ValueError, TypeError):
            raise LaminateError(f"{path}: batch at index {first}: not a well-formed batch") from None
        if len(rows) >= MAX_ROWS:
            break
    return rows


def flipped_queries(card, opening: dawn.Opening, rows, victim) -> tuple[np.ndarray, np.ndarray]:
    """The distinct flipped inputs of ``rows`` and the labels the client was given."""
    statement = card.statement
    shape, classes, rate = statement["input_shape"], statement["classes"], card.dawn["rate"]
    seen, picked = set(), []
    for index, digest, canonical, label in rows:
        if hashlib.sha256(canonical).digest() != digest:
            raise LaminateError(f"log entry {index}: input_sha256 is not the digest of its input")
        if digest in seen or not dawn.flipped(opening.key, canonical, rate):
            continue
        seen.add(digest)
        picked.append((index, canonical, label))
        if len(picked) == MAX_FLIPS:
            break
    if not picked:
        return np.zeros((0, *shape), np.float32), np.zeros(0, np.int64)
    x = np.stack([dawn.from_canonical(c, shape) for _, c, _ in picked])
    true = victim.predict(x)
    y = []
    for (index, canonical, logged), label in zip(picked, true):
        expected = dawn.wrong_label(opening.key, canonical, int(label), classes)
        if expected != logged:
            raise LaminateError(f"log entry {index}: label: the log says {logged}, replaying "
                                f"the key on the served model gives {expected}")
        y.append(expected)
    return x, np.asarray(y, dtype=np.int64)


def dawn_ownership_test(card, opening, rows, victim, suspect, *, alpha: float) -> OwnershipResult:
    classes = card.statement["classes"] - 1
    commitment = card.dawn["key_commitment"] if card.dawn else None
    if commitment is None or not opening.opens(commitment):
        return OwnershipResult(NOT_SHOWN, 1.0, 0, 0, 0.0, alpha, 0, classes,
                               OPENING_MISMATCH, 0.0)
    x, y = flipped_queries(card, opening, rows, victim)
    if len(y) == 0:
        return OwnershipResult(NOT_SHOWN, 1.0, 0, 0, 0.0, alpha, 0, classes,
                               "the client's log holds no flipped query", 0.0)
    claim = {"scheme": dawn.SCHEME, "commitment": commitment, "trigger_count": len(y),
             "classes": classes}
    return ownership_test(_Flips(x, y, classes), claim, suspect, alpha=alpha)


def add_arguments(parser) -> None:
    group = parser.add_argument_group(
        "DAWN (serving-time watermark)",
        "replay a client's flipped queries from a deployment of `laminate serve-model`")
    group.add_argument("--serving-card", type=Path, help="the deployment's serving-card.cbor")
    group.add_argument("--dawn-opening", type=Path, help="the deployment's dawn.opening.json")
    group.add_argument("--client", help="the client whose queries are replayed")
    group.add_argument("--log", type=Path, help="the deployment's log.sqlite")
    group.add_argument("--model", type=Path, help="the served model (checked against the serving card)")


def run(args, alpha: float) -> int:
    import json

    from cards.errors import CardFormatError
    from verifier.serving_card import MAX_SERVING_CARD_BYTES, open_serving_card
    from verifier.suspect import OnnxSuspect, open_suspect

    for name in ("dawn_opening", "client", "log", "model"):
        if getattr(args, name) is None:
            raise LaminateError(f"--{name.replace('_', '-')} is required with --serving-card")
    try:
        with args.serving_card.open("rb") as f:
            card = open_serving_card(f.read(MAX_SERVING_CARD_BYTES + 1))
    except OSError as exc:
        raise LaminateError(f"{args.serving_card}: cannot read the serving card ({exc.strerror})") from None
    except CardFormatError as exc:
        raise LaminateError(f"{args.serving_card}: {exc.field}: {exc.reason}") from None
    if card.dawn is None:
        raise LaminateError(f"{args.serving_card}: statement.dawn: this deployment served "
                            "without DAWN, so there is nothing to replay")
    if not args.model.is_file():
        raise LaminateError(f"{args.model}: served model file not found")
    hasher = hashlib.sha256()
    with args.model.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            hasher.update(block)
    digest = hasher.hexdigest()
    if digest != card.statement["model_sha256"]:
        raise LaminateError(f"{args.model}: sha256 {digest[:16]}... is not the served model "
                            f"(statement.model_sha256 {card.statement['model_sha256'][:16]}...)")
    opening = dawn.Opening.load(args.dawn_opening)
    rows = client_rows(args.log, args.client)
    suspect = open_suspect(args.suspect)
    result = dawn_ownership_test(card, opening, rows, OnnxSuspect(args.model), suspect, alpha=alpha)
    if args.json:
        print(json.dumps({"suspect": suspect.name, "client": args.client, **result.to_dict()},
                         indent=2))
    else:
        print(f"suspect: {suspect.name} (client {args.client}, DAWN flips, chance 1/{result.classes})")
        print(result.to_text())
    return result.exit_code

