"""Serving cards, anchored query-log heads and DAWN claims in the card service.

A serving card is registered like a card: appraised first (the serving-card checks of
`verifier.serving_card`), then logged; a rejected one is not logged and the 422 says why.
A deployment's signed log head is logged under its serving card's id once its signature
checks against the registered serving card's receipt key: its index is what a DAWN claim
is ordered by. In a dispute the arbiter, not the claimant, picks the head: the last one
of that deployment logged before the suspect's first appearance.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import select

from cards.errors import LaminateError
from verifier import dawn, dawn_evidence
from verifier import disputes as rule
from verifier.serving_card import appraise_serving_card, is_serving_card, open_serving_card

from .db import LogEntry
from .registration import answer, append_card, refused

CARD_KIND = "serving-card"
HEAD_KIND = "serving-head"


def register_serving_card(service, card_id: str, card_bytes: bytes) -> tuple[int, dict]:
    """(201, registration), (200, ...) when already registered, (422, why) if refused;
    logged through the same batched write as a model card, under leaf kind
    ``serving-card``."""
    result, card = appraise_serving_card(card_bytes, policy=service.policy)
    if card is None or result.status in ("contraindicated", "none"):
        return refused(result, "serving card")
    status, row = append_card(service, card_id, card_bytes, card.statement["model_sha256"],
                              result, kind=CARD_KIND)
    code, body = answer(service, status, row)
    return code, {**body, "serving_card": True}


def register_head(service, head_bytes: bytes) -> tuple[int, dict]:
    """Log a deployment's signed query-log head; (201 or 200, its inclusion bundle)."""
    card_id = dawn_evidence.head_card(head_bytes)
    row = service.find_card(card_id)
    if row is None or not is_serving_card(row.card_bytes):
        raise LaminateError(f"log_head.serving_card: {card_id[:16]}... is not a serving card "
                            "registered with this service (POST /v1/cards first)")
    size, root = dawn_evidence.open_head(head_bytes, open_serving_card(row.card_bytes))

    def job(session, leaves):
        index = session.execute(select(LogEntry.leaf_index).where(
            LogEntry.kind == HEAD_KIND, LogEntry.ref == card_id,
            LogEntry.data == head_bytes)).scalars().first()
        if index is not None:
            return False, index
        return True, leaves.add(HEAD_KIND, card_id, head_bytes)[0]
    created, index = service.integrator.run(job)
    return (201 if created else 200), {"serving_card": card_id, "log_head": {
        "tree_size": size, "root": root.hex()}, **service.proof_bundle(index)}


def anchor_before(service, card_id: str, suspect_index: int) -> tuple[int | None, bytes | None]:
    """(index, signed head) of the deployment's last head logged before ``suspect_index``."""
    with service.db.read() as session:
        found = session.execute(
            select(LogEntry.leaf_index, LogEntry.data).where(
                LogEntry.kind == HEAD_KIND, LogEntry.ref == card_id,
                LogEntry.leaf_index < suspect_index)
            .order_by(LogEntry.leaf_index.desc()).limit(1)).first()
    return (found[0], bytes(found[1])) if found else (None, None)


@dataclass(frozen=True)
class DawnClaimInput:
    serving_card_id: str
    opening: object          # the DAWN opening as sent: a JSON object
    evidence: bytes          # `verifier.dawn_evidence` bytes
    victim: object           # the served model, an ONNX suspect-like predictor
    victim_sha256: str


def parse_dawn_claim(text: str) -> tuple[str, object]:
    """``{"serving_card_id": ..., "opening": {...}}`` -> its two parts."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        raise LaminateError("dawn_claim: not valid JSON") from None
    if not isinstance(doc, dict) or set(doc) != {"serving_card_id", "opening"} \
            or not isinstance(doc["serving_card_id"], str) or not isinstance(doc["opening"], dict):
        raise LaminateError('dawn_claim: expected {"serving_card_id": ..., "opening": {...}} '
                            "(the opening as in dawn.opening.json)")
    return doc["serving_card_id"], doc["opening"]


def _opening(raw: dict):
    try:
        return dawn.Opening.from_doc(raw, "dawn_claim.opening")
    except LaminateError as exc:
        return str(exc)


def judge(service, claim: DawnClaimInput, suspect_index: int, suspect) -> rule.Judgement:
    """One DAWN claim judged by the dispute rule with this service's registry and policy."""
    row = service.find_card(claim.serving_card_id)
    card = problem = None
    if row is None or not is_serving_card(row.card_bytes):
        problem = "serving card is not registered with this service"
    else:
        result, card = appraise_serving_card(row.card_bytes, policy=service.policy,
                                             model_sha256=claim.victim_sha256)
        if card is None or result.status == "contraindicated":
            failed = "; ".join(f"{c.check}: {c.reason}" for c in result.failed())
            problem = f"serving card does not verify under policy {result.policy_id!r} ({failed})"
        elif card.dawn is None:
            problem = "this deployment served without DAWN"
    index, anchor = (anchor_before(service, claim.serving_card_id, suspect_index)
                     if row is not None else (None, None))
    return rule.judge_dawn_claim(card_problem=problem, card=card, anchor_index=index,
                                 anchor=anchor, suspect_index=suspect_index,
                                 evidence=claim.evidence, opening=_opening(claim.opening),
                                 victim=claim.victim, suspect=suspect,
                                 alpha=service.policy.ownership.alpha)
