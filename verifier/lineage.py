"""Lineage: a fine-tuned model's card, appraised with its ancestors link by link.

A card whose `claims.start.kind` is `parent` names the card of the released model it
was fine-tuned from by that card's SHA-256. A fine-tuned model inherits what its parent
was trained on and how, so `laminate verify --chain` finds each parent among the cards
given (by digest: a file name proves nothing), checks that the parent describes the very
model the child started from, and appraises the parent against the same policy, up to a
card that did not start from a parent.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

from cards.card import card_digest, open_card
from cards.errors import CardFormatError, LaminateError
from verifier.appraise import appraise
from verifier.result import AFFIRMING, CONTRAINDICATED, Check, Result

MAX_LINKS = 16          # fine-tunes of fine-tunes: deeper chains are refused, not walked
MAX_CANDIDATES = 256    # card files read from the --chain arguments
FIELD = "claims.start.card_sha256"


class Link(NamedTuple):
    name: str
    sha256: str
    result: Result


class Chain(NamedTuple):
    links: list

    @property
    def status(self) -> str:
        return max((link.result.status for link in self.links),
                   key=("none", AFFIRMING, "warning", CONTRAINDICATED).index)

    @property
    def exit_code(self) -> int:
        return max(link.result.exit_code for link in self.links)

    def to_json(self) -> str:
        return json.dumps({"status": self.status, "links": [
            {"card": link.name, "sha256": link.sha256, "result": link.result.to_dict()}
            for link in self.links]}, indent=2)

    def to_table(self) -> str:
        lines = [f"chain verification: {self.status.upper()} ({len(self.links)} link(s), "
                 "the model first, then each card it was fine-tuned from)"]
        for i, link in enumerate(self.links):
            lines += ["", f"link {i}: {link.name} (card sha256 {link.sha256})",
                      link.result.to_table()]
        return "\n".join(lines)


def gather(paths) -> dict[str, tuple[str, bytes]]:
    """{sha256: (name, bytes)} of the card files named, and of the *.cbor files in the
    directories named; unreadable input is a one-line LaminateError."""
    from verifier.cli_verify import read_card_file
    files: list[Path] = []
    for given in map(Path, paths):
        if given.is_dir():
            files += sorted(p for p in given.rglob("*.cbor") if p.is_file())
        else:
            files.append(given)
        if len(files) > MAX_CANDIDATES:
            raise LaminateError(f"--chain: more than {MAX_CANDIDATES} card files given")
    return {_identity(data): (str(path), data)
            for path in files for data in (read_card_file(path),)}


def _identity(data: bytes) -> str:
    """The card digest; a file that is no card envelope keeps its plain SHA-256, so it
    can still be named (and refused) when a child names it."""
    try:
        return card_digest(data)
    except CardFormatError:
        return hashlib.sha256(data).hexdigest()


def appraise_chain(card_bytes: bytes, name: str, candidates: dict, *, policy,
                   model_path=None, model_sha256=None, log_key=None) -> Chain:
    """Appraise the card, then each parent it names, each under the same policy; each
    link that names a parent gets a `lineage` check saying whether its parent was found
    and describes the model it started from. ``log_key`` (its receipt) is checked for
    the card named only."""
    links = []
    expected = {"model_path": model_path, "model_sha256": model_sha256, "log_key": log_key}
    while True:
        result = appraise(card_bytes, policy=policy, **expected)
        links.append(Link(name, _identity(card_bytes), result))
        try:
            start = open_card(card_bytes).claims["start"]
        except LaminateError:
            break  # the link's own result says why the card does not open
        if start["kind"] != "parent":
            break
        check, parent = _parent_link(start, candidates)
        if parent is not None and len(links) >= MAX_LINKS:
            check, parent = Check("lineage", CONTRAINDICATED, FIELD,
                                  f"the chain is longer than {MAX_LINKS} links"), None
        result.checks.append(check)
        if parent is None:
            break
        name, card_bytes = parent
        expected = {"model_path": None, "model_sha256": start["model_sha256"], "log_key": None}
    return Chain(links)


def _parent_link(start: dict, candidates: dict):
    """(the lineage check, (name, bytes) of the parent card or None)."""
    digest, model = start["card_sha256"], start["model_sha256"]
    found = candidates.get(digest)
    if found is None:
        same_model = [name for name, data in candidates.values() if _model_of(data) == model]
        if same_model:
            return Check("lineage", CONTRAINDICATED, FIELD,
                         f"{same_model[0]} describes the parent model {model[:16]}... but is not "
                         f"the parent card {digest[:16]}...: it was altered, or is another card "
                         "of that model"), None
        return Check("lineage", CONTRAINDICATED, FIELD,
                     f"parent card {digest[:16]}... is not among the cards given to --chain"), None
    name, data = found
    parent_model = _model_of(data)
    if parent_model is None:
        return Check("lineage", CONTRAINDICATED, FIELD,
                     f"parent card {name} does not open as a card"), None
    if parent_model != model:
        return Check("lineage", CONTRAINDICATED, "claims.start.model_sha256",
                     f"this model started from {model[:16]}..., but its parent card {name} "
                     f"describes model {parent_model[:16]}..."), None
    return Check("lineage", AFFIRMING, FIELD,
                 f"fine-tuned from model {model[:16]}... of parent card {name} "
                 f"({digest[:16]}...), appraised as the next link"), found


def _model_of(data: bytes) -> str | None:
    try:
        return open_card(data).claims["model"]["sha256"]
    except LaminateError:
        return None
