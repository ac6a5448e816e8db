"""Ownership disputes over HTTP: the claims' input, the verdict and its signature.

The rule itself is ``verifier.disputes``; here a claim's card must also be registered
with this service, and the suspect's first appearance is its first log index (its first
registration in a card, or its first submission, logged the moment the service first
sees the file). Order is decided by log indices inside a signed tree head, never by a
clock, so the service cannot backdate a claim without forking its own log. The verdict
lists every claim with its reason, is signed by the service and is itself appended to
the log.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from cards import cbor, cose, keys
from cards.errors import LaminateError
from verifier import disputes as rule
from verifier.disputes import Judgement

VERDICT_TYPE = "laminate-dispute-verdict/1"
MAX_CLAIMS = 16


@dataclass(frozen=True)
class ClaimInput:
    card_id: str
    opening: object          # the opening as sent: a JSON object or a JSON string


def parse_claims(text: str) -> list[ClaimInput]:
    """``[{"card_id": ..., "opening": {...}}, ...]``; shape errors are the caller's."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise LaminateError(f"claims: not valid JSON ({exc})") from None
    except RecursionError:
        raise LaminateError("claims: JSON nested too deeply") from None
    if not isinstance(doc, list) or not doc:
        raise LaminateError("claims: expected a non-empty JSON list of "
                            '{"card_id": ..., "opening": {...}}')
    if len(doc) > MAX_CLAIMS:
        raise LaminateError(f"claims: at most {MAX_CLAIMS} claims per dispute, got {len(doc)}")
    claims = []
    for i, item in enumerate(doc):
        if not isinstance(item, dict) or set(item) != {"card_id", "opening"}:
            raise LaminateError(f'claims[{i}]: expected exactly the keys "card_id" and "opening"')
        if not isinstance(item["card_id"], str):
            raise LaminateError(f"claims[{i}].card_id: expected a string")
        if not isinstance(item["opening"], (dict, str)):
            raise LaminateError(f"claims[{i}].opening: expected the opening JSON object")
        claims.append(ClaimInput(item["card_id"], item["opening"]))
    return claims


def parse_opening(raw):
    """A watermark opening sent as JSON text or as an already parsed object; anything
    malformed (nesting deep enough to exhaust the parser included) is a LaminateError."""
    from cards.watermark import Opening

    try:
        return Opening.from_json(raw if isinstance(raw, str) else json.dumps(raw))
    except RecursionError:
        raise LaminateError("opening: JSON nested too deeply") from None


def judge_claim(service, claim: ClaimInput, suspect_index: int, suspect,
                suspect_sha256: str | None = None) -> Judgement:
    """One claim judged by the dispute rule (``verifier.disputes``), stopping at the first
    check that fails; the card's standing comes from this service's registry and policy."""
    from cards.card import open_card

    row = service.find_card(claim.card_id)
    watermark = commitment = commitment_index = start = card_model = None
    if row is None:
        problem = "card is not registered with this service"
    else:
        result = service.appraise(row.card_bytes)
        watermark = service.watermark_claim(row)
        commitment = row.commitment
        if result.status == "contraindicated":
            failed = "; ".join(f"{c.check}: {c.reason}" for c in result.failed())
            problem = f"card does not verify under policy {result.policy_id!r} ({failed})"
        elif watermark is None or commitment is None:
            problem = "card carries no watermark commitment"
        else:
            problem = None
            commitment_index = service.commitment_index(commitment)
            start, card_model = open_card(row.card_bytes).claims["start"], row.model_sha256
    try:
        opening = parse_opening(claim.opening)
    except LaminateError as exc:
        opening = str(exc)
    return rule.judge_claim(card_problem=problem, commitment=commitment,
                            commitment_index=commitment_index, suspect_index=suspect_index,
                            opening=opening, watermark=watermark, suspect=suspect,
                            alpha=service.policy.ownership.alpha, start=start,
                            card_model=card_model, suspect_sha256=suspect_sha256)


def _claim_view(claim, judged: Judgement) -> dict:
    commitment = None
    if judged.checks["card"][0]:
        commitment = judged.commitment
    card_id = claim.card_id if isinstance(claim, ClaimInput) else claim.serving_card_id
    return {"card_id": card_id, "evidence": judged.evidence, "commitment": commitment,
            "commitment_leaf_index": judged.commitment_index, "won": judged.won,
            "reason": (f"ownership shown: {judged.reason}" if judged.won else judged.reason),
            "ownership": judged.ownership.to_dict() if judged.ownership else None}


def resolve(service, suspect_record: dict, suspect, claims: list[ClaimInput],
            dawn_claims: list = ()) -> dict:
    """Judge every claim (watermark claims, then DAWN claims: ``registry.serving``)
    against a suspect whose first log index is already committed."""
    from .serving import judge as judge_dawn

    suspect_index = suspect_record["leaf_index"]
    judged = [judge_claim(service, c, suspect_index, suspect, suspect_record.get("sha256"))
              for c in claims]
    judged += [judge_dawn(service, c, suspect_index, suspect) for c in dawn_claims]
    claims = [*claims, *dawn_claims]
    winner = rule.rank(judged)
    views = [_claim_view(c, j) for c, j in zip(claims, judged)]
    head = service.log.tree_head()
    indices = [suspect_index] + [j.commitment_index for j in judged
                                 if j.commitment_index is not None]
    proofs = {str(i): [p.hex() for p in service.log.inclusion_proof(i, head.tree_size)]
              for i in sorted(set(indices))}
    won = views[judged.index(winner)] if winner is not None else None
    return {
        "type": VERDICT_TYPE,
        "policy_id": service.policy.policy_id,
        "suspect": suspect_record,
        "tree_head": {"tree_size": head.tree_size, "root_hash": head.root_hash.hex()},
        "inclusion_proofs": proofs,
        "claims": views,
        "winner": won["card_id"] if won else None,
        "evidence": won["evidence"] if won else None,
        "reason": (f"claim for card {won['card_id']} ({won['evidence']} evidence) has the "
                   f"earliest winning commitment (index {won['commitment_leaf_index']})" if won
                   else "no claim established ownership"),
    }


def sign_verdict(verdict: dict, private_key) -> bytes:
    return cose.sign1(cbor.dumps(verdict), private_key,
                      kid=keys.key_id(keys.public_key_of(private_key)))


def verify_verdict(signed: bytes, public_key) -> dict:
    """The verdict inside a signed verdict, if the service key signed it."""
    msg = cose.parse_sign1(signed, field="verdict")
    if not cose.verify_sign1(msg, public_key):
        raise LaminateError("verdict: signature does not verify with the service key")
    verdict = cbor.loads(msg.payload, deterministic=True, field="verdict")
    if not isinstance(verdict, dict) or verdict.get("type") != VERDICT_TYPE:
        raise LaminateError(f"verdict: payload is not a {VERDICT_TYPE} statement")
    return verdict
