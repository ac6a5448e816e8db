"""Ownership disputes: which claimant, if any, owns a suspect model.

A claim wins only if (1) its card is registered here and still verifies under the
service's policy, (2) the card's watermark commitment entered the log at an index before
the suspect model's first appearance (its first registration in a card, or its first
submission, which is logged the moment the service first sees the digest), (3) the
opening matches that commitment, and (4) the ownership test on the suspect is positive.
Order is decided by log indices inside a signed tree head, never by a clock, so the
service cannot backdate a claim without forking its own log. Among several winning
claims the earliest commitment wins. The verdict lists every claim with its reason, is
signed by the service and is itself appended to the log.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from cards import cbor, cose, keys
from cards.errors import LaminateError

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


def judge_claim(service, claim: ClaimInput, suspect_index: int, suspect) -> dict:
    """One claim's outcome with the first reason it fails, or why it wins."""
    from verifier.ownership import ownership_test

    row = service.find_card(claim.card_id)
    out = {"card_id": claim.card_id, "commitment": None, "commitment_leaf_index": None,
           "won": False, "reason": "", "ownership": None}
    if row is None:
        out["reason"] = "card is not registered with this service"
        return out
    result = service.appraise(row.card_bytes)
    if result.status == "contraindicated":
        failed = "; ".join(f"{c.check}: {c.reason}" for c in result.failed())
        out["reason"] = f"card does not verify under policy {result.policy_id!r} ({failed})"
        return out
    watermark = service.watermark_claim(row)
    if watermark is None or row.commitment is None:
        out["reason"] = "card carries no watermark commitment"
        return out
    out["commitment"] = row.commitment
    commitment_index = service.commitment_index(row.commitment)
    out["commitment_leaf_index"] = commitment_index
    if commitment_index is None or commitment_index >= suspect_index:
        out["reason"] = (f"commitment logged at index {commitment_index}, not before the "
                         f"suspect model first appeared at index {suspect_index}")
        return out
    try:
        opening = parse_opening(claim.opening)
    except LaminateError as exc:
        out["reason"] = f"opening is malformed ({exc})"
        return out
    if not opening.matches(row.commitment):
        out["reason"] = "opening does not match the card's watermark commitment"
        return out
    try:
        test = ownership_test(opening, watermark, suspect,
                              alpha=service.policy.ownership.alpha)
    except LaminateError as exc:
        out["reason"] = f"ownership test could not run ({exc})"
        return out
    out["ownership"] = test.to_dict()
    out["won"] = test.shown
    out["reason"] = (f"commitment at index {commitment_index} precedes the suspect "
                     f"(index {suspect_index}), opening matches, ownership shown: "
                     f"{test.reason}") if test.shown else f"ownership not shown: {test.reason}"
    return out


def resolve(service, suspect_record: dict, suspect, claims: list[ClaimInput]) -> dict:
    """Judge every claim against a suspect whose first log index is already committed."""
    suspect_index = suspect_record["leaf_index"]
    judged = [judge_claim(service, c, suspect_index, suspect) for c in claims]
    winners = sorted((c for c in judged if c["won"]), key=lambda c: c["commitment_leaf_index"])
    head = service.log.tree_head()
    indices = [suspect_index] + [c["commitment_leaf_index"] for c in judged
                                 if c["commitment_leaf_index"] is not None]
    proofs = {str(i): [p.hex() for p in service.log.inclusion_proof(i, head.tree_size)]
              for i in sorted(set(indices))}
    return {
        "type": VERDICT_TYPE,
        "policy_id": service.policy.policy_id,
        "suspect": suspect_record,
        "tree_head": {"tree_size": head.tree_size, "root_hash": head.root_hash.hex()},
        "inclusion_proofs": proofs,
        "claims": judged,
        "winner": winners[0]["card_id"] if winners else None,
        "reason": (f"claim for card {winners[0]['card_id']} has the earliest winning "
                   f"commitment (index {winners[0]['commitment_leaf_index']})" if winners
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
