"""Registering a card: appraised first, logged only if accepted, in the next batch.

Model cards and serving cards take the same path into the log (one batched write, one
row layout); they differ only in how they are appraised and which leaf kind names them.
Every write commits the log leaf and its table row in one transaction before the
client hears "yes".
"""
from __future__ import annotations

import json

from cards import cbor
from cards.errors import CardFormatError

from . import clocks
from .db import CardRow, CommitmentRow, ModelRow
from .metrics import REGISTRATIONS

COMMITMENT_TYPE = "laminate-watermark-commitment/1"


class ClockRefused(Exception):
    """Rolls back a registration whose TPM quote breaks the device's clock rule."""


def refused(result, what: str = "card") -> tuple[int, dict]:
    """The 422 answer for a card the policy rejects: every failed check, by name."""
    failed = "; ".join(f"{c.check} ({c.field}): {c.reason}" for c in result.failed())
    REGISTRATIONS.labels("rejected").inc()
    return 422, {"detail": f"{what} rejected by policy {result.policy_id!r}: {failed}",
                 "result": result.to_dict()}


def register_card(service, card_bytes: bytes) -> tuple[int, dict]:
    """(201, registration) for a new card, (200, ...) if already registered,
    (422, {"detail", "result"}) if the policy rejects it. A transparent statement (a
    card carrying receipts) is the card it carries: it is logged and stored without
    them, under the same id."""
    from cards.card import card_digest, open_card, statement_bytes
    from verifier.serving_card import is_serving_card

    try:
        card_id, card_bytes = card_digest(card_bytes), statement_bytes(card_bytes)
    except CardFormatError:
        card_id = ""        # not a card envelope: the appraisal says why, below
    existing = service.find_card(card_id)
    if existing is not None:
        return 200, {**service.registration(existing), "already_registered": True}
    if is_serving_card(card_bytes):
        from .serving import register_serving_card
        return register_serving_card(service, card_id, card_bytes)
    result = service.appraise(card_bytes)
    if result.status in ("contraindicated", "none"):
        return refused(result)
    card = open_card(card_bytes)
    watermark = card.claims["defenses"]["watermark"]
    try:
        status, row = append_card(service, card_id, card_bytes, card.claims["model"]["sha256"],
                                  result, commitment=watermark["commitment"] if watermark else None,
                                  quoted=clocks.quoted_clock(card.evidence, service.policy))
    except ClockRefused as exc:
        REGISTRATIONS.labels("rejected").inc()
        return 422, {"detail": f"card rejected: {exc}", "result": result.to_dict()}
    return answer(service, status, row)


def answer(service, status: int, row: CardRow) -> tuple[int, dict]:
    """The registration answer: 201 for a card logged now, 200 for one already there."""
    if status == 201:
        REGISTRATIONS.labels("accepted").inc()
    return status, {**service.registration(row), "already_registered": status == 200}


def append_card(service, card_id: str, card_bytes: bytes, model_sha: str, result, *,
                commitment: str | None = None, quoted=None, kind: str = "card"):
    """Log an appraised card (and its watermark commitment) in the next batch; a TPM
    quote whose clock goes back for its device rolls this registration back alone.
    (201, row) when logged now, (200, row) when a concurrent twin won."""
    def job(session, leaves):
        row = session.get(CardRow, card_id)
        if row is not None:
            return 200, row
        # The commitment goes first: it is what the registration proves was
        # known no later than the model it protects.
        if commitment is not None and session.get(CommitmentRow, commitment) is None:
            index, _ = leaves.add("commitment", commitment, cbor.dumps(
                {"type": COMMITMENT_TYPE, "commitment": commitment, "card_id": card_id}))
            session.add(CommitmentRow(commitment=commitment, leaf_index=index))
        index, _ = leaves.add(kind, card_id, card_bytes)
        row = CardRow(card_id=card_id, card_bytes=card_bytes, leaf_index=index,
                      model_sha256=model_sha, commitment=commitment,
                      appraisal_json=json.dumps(result.to_dict()))
        session.add(row)
        if session.get(ModelRow, model_sha) is None:
            session.add(ModelRow(sha256=model_sha, leaf_index=index, source="registered"))
        if quoted is not None:
            problem = clocks.check_and_record(session, quoted, index)
            if problem:
                raise ClockRefused(problem)
        return 201, row
    return service.integrator.run(job)
