"""The dispute rule: when a claim of ownership over a suspect model wins.

A claim wins only if
  card       its card verifies under the arbiter's policy and seals a watermark commitment;
  start      the card did not start from the suspect itself: a card whose start
             (``claims.start``) is external or a parent says its session was handed those
             weights, so it cannot own a model byte-identical to its own starting point
             (the laundering thief: stolen weights "trained" at a learning rate of 1e-300);
  order      that commitment entered the log at an index before the suspect model's first
             appearance (first registration in a card, or first observation), or the card
             itself produced the suspect: its session drew the commitment, then the
             initial weights from the attestation module's randomness (a ``random``
             start), then trained them into exactly the suspect's bytes, so the suspect
             cannot have existed before the commitment however late it was registered;
  opening    the revealed opening matches that commitment, so the triggers were fixed by
             the attested session before the suspect existed;
  ownership  the sequential ownership test on the regenerated triggers shows ownership.

A DAWN claim (a client's flipped answers from an attested prediction server) wins only if
  card       its serving card verifies under the arbiter's policy, serves with DAWN, and
             the served model handed over for the replay is the one it names;
  order      a head of the deployment's query log, signed by the serving card's receipt
             key, entered the log at an index before the suspect's first appearance;
  log        the evidence is the complete set of the named clients' batches under that
             head (every record hashes to the anchored root, each batch's answers to the
             root its record signed), so the flips replayed were fixed before the suspect;
  opening    the revealed DAWN key opens the serving card's key commitment;
  ownership  the suspect matches the replayed flipped labels beyond chance 1/(C-1)
             (sequential binomial test, ``verifier.dawn_ownership``).
Among several winning claims over one suspect, of either kind, the earliest commitment
(a watermark commitment's or an anchored head's log index) wins; the verdict names the
evidence that decided.

Dataset inference (verifier.dataset_inference) is never one of these checks: Szyller and
Asokan flag a model trained independently on the same distribution at p ~ 1e-12, and
bench/di_study.py measures no setting where its false-positive rate on such models is
bounded below its true-positive rate on stolen copies (per record both 0/10, in the
authors' notebook layout both 10/10). So its p-value is attached to a judgement as
supplementary evidence (`add_dataset_inference`): the verdict says what it added and at
what measured rates, but it cannot make a claim win or lose.

This is the one implementation of the rule: the registry's disputes and the red team's
table both call it, so the table measures the rule the service applies.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from cards.errors import LaminateError

CHECKS = ("card", "start", "order", "opening", "ownership")
DAWN_CHECKS = ("card", "order", "log", "opening", "ownership")


@dataclass
class Judgement:
    """Each check's (passed, reason), in ``CHECKS`` order; checks not run are absent."""

    checks: dict
    ownership: object = None          # verifier.ownership.OwnershipResult, when the test ran
    commitment_index: int | None = None
    commitment: str | None = None
    outranked_by: int | None = None   # an earlier winning commitment's log index
    evidence: str = "watermark"       # or "dawn": which evidence the claim argues from
    names: tuple = CHECKS             # the checks of the rule for that evidence
    supplementary: list = field(default_factory=list)  # evidence that informs, never decides

    @property
    def passed(self) -> bool:
        """Every check of the rule ran and passed."""
        return all(self.checks.get(c, (False, ""))[0] for c in self.names)

    @property
    def won(self) -> bool:
        """Passed and no earlier commitment outranks it."""
        return self.passed and self.outranked_by is None

    @property
    def reason(self) -> str:
        """Why the claim wins, or the first check that stops it and why."""
        for name in self.names:
            ok, why = self.checks.get(name, (False, "not run"))
            if not ok:
                return f"{name}: {why}"
        if self.outranked_by is not None:
            return f"an earlier winning commitment (index {self.outranked_by}) outranks it"
        return "; ".join(self.checks[c][1] for c in self.names)


def judge_claim(*, card_problem: str | None, commitment: str | None,
                commitment_index: int | None, suspect_index: int, opening, watermark,
                suspect, alpha: float, run_all: bool = False, start: dict | None = None,
                card_model: str | None = None, suspect_sha256: str | None = None) -> Judgement:
    """Apply the rule to one claim.

    ``card_problem`` is None when the card verified and seals ``commitment`` (its
    ``watermark`` claim is then tested), else why not; a claim without a card still
    names the ``commitment`` it argues from. ``opening`` is a ``cards.watermark.Opening``
    or, when it could not be parsed, the parse error's text. With ``run_all`` every check
    runs (the red team reports which checks stop each attack); otherwise the rule stops
    at the first failure, so a suspect is queried only for a claim that could win.
    ``start`` and ``card_model`` are the verified card's ``claims.start`` and model
    digest, ``suspect_sha256`` the suspect's digest (None when unknown: a claim without
    a card, or a suspect known only by its answers).
    """
    from verifier.ownership import ownership_test

    checks: dict = {}

    def done() -> bool:
        return not run_all and not all(ok for ok, _ in checks.values())

    checks["card"] = ((True, "card verifies and seals a watermark commitment")
                      if card_problem is None else (False, card_problem))
    if done():
        return Judgement(checks, None, commitment_index, commitment)
    checks["start"] = _start(start, suspect_sha256)
    if done():
        return Judgement(checks, None, commitment_index, commitment)
    produced = (start is not None and start["kind"] == "random" and suspect_sha256 is not None
                and card_model == suspect_sha256)
    if commitment_index is None:
        checks["order"] = (False, "commitment never logged")
    elif commitment_index < suspect_index:
        checks["order"] = (True, f"commitment at index {commitment_index} precedes the "
                                 f"suspect's first appearance at index {suspect_index}")
    elif produced:
        checks["order"] = (True, "the card's own session committed, drew its initial weights "
                                 "from the attestation module, and trained exactly the "
                                 "suspect's bytes: the suspect did not exist before the "
                                 f"commitment (logged at index {commitment_index}, the suspect "
                                 f"first appeared at index {suspect_index})")
    else:
        checks["order"] = (False, f"commitment logged at index {commitment_index}, not before "
                                  f"the suspect model first appeared at index {suspect_index}")
    if done():
        return Judgement(checks, None, commitment_index, commitment)
    if isinstance(opening, str):
        checks["opening"] = (False, f"opening is malformed ({opening})")
    elif commitment is None or not opening.matches(commitment):
        checks["opening"] = (False, "opening does not match the watermark commitment")
    else:
        checks["opening"] = (True, "opening matches the commitment")
    if done():
        return Judgement(checks, None, commitment_index, commitment)
    result = None
    if card_problem is not None or watermark is None or isinstance(opening, str):
        checks["ownership"] = (False, "no verified card to test against")
    else:
        try:
            result = ownership_test(opening, watermark, suspect, alpha=alpha)
            checks["ownership"] = (result.shown, result.reason)
        except LaminateError as exc:
            checks["ownership"] = (False, f"ownership test could not run ({exc})")
    return Judgement(checks, result, commitment_index, commitment)


def _start(start: dict | None, suspect_sha256: str | None) -> tuple[bool, str]:
    """The ``start`` check: a card cannot own the weights it was handed."""
    if start is None:
        return True, "no verified card start to weigh"
    if start["kind"] == "random":
        return True, "the card's session drew its own initial weights"
    if suspect_sha256 is not None and start["model_sha256"] == suspect_sha256:
        return False, (f"the card's start (claims.start, {start['kind']}) is the suspect model "
                       f"itself ({suspect_sha256[:16]}...): its session was handed these "
                       "weights and cannot own them")
    return True, (f"the card started from {start['kind']} weights "
                  f"{start['model_sha256'][:16]}..., not from the suspect")


def judge_dawn_claim(*, card_problem: str | None, card, anchor_index: int | None,
                     anchor: bytes | None, suspect_index: int, evidence: bytes | None,
                     opening, victim, suspect, alpha: float,
                     run_all: bool = False) -> Judgement:
    """Apply the DAWN rule to one claim.

    ``card`` is the opened serving card (None when it could not be opened), with
    ``card_problem`` None when it verified under the arbiter's policy, serves with DAWN
    and ``victim`` is its served model; ``anchor`` is the signed log head the arbiter
    found logged at ``anchor_index`` (the last one for this serving card before the
    suspect); ``evidence`` the owner's `verifier.dawn_evidence` bytes; ``opening`` a
    ``verifier.dawn.Opening`` or the text of its parse error.
    """
    from verifier.dawn_evidence import check_evidence
    from verifier.dawn_ownership import dawn_ownership_test

    commitment = card.dawn["key_commitment"] if card is not None and card.dawn else None
    checks: dict = {}

    def stop() -> Judgement | None:
        if run_all or all(ok for ok, _ in checks.values()):
            return None
        return Judgement(checks, None, anchor_index, commitment, evidence="dawn",
                         names=DAWN_CHECKS)

    checks["card"] = ((True, "serving card verifies, serves with DAWN, and the served model "
                             "is the one it names")
                      if card_problem is None else (False, card_problem))
    if (j := stop()) is not None:
        return j
    if anchor_index is None or anchor is None:
        checks["order"] = (False, "no head of this deployment's query log was logged before "
                                  f"the suspect first appeared at index {suspect_index}")
    elif anchor_index < suspect_index:
        checks["order"] = (True, f"query-log head anchored at index {anchor_index} precedes the "
                                 f"suspect's first appearance at index {suspect_index}")
    else:
        checks["order"] = (False, f"query-log head anchored at index {anchor_index}, not before "
                                  f"the suspect first appeared at index {suspect_index}")
    if (j := stop()) is not None:
        return j
    rows = None
    if card is None or anchor is None or evidence is None:
        checks["log"] = (False, "no evidence to check against an anchored head")
    else:
        try:
            clients, rows = check_evidence(evidence, card, anchor)
            checks["log"] = (True, f"all {len(rows)} answers to {', '.join(clients)} under "
                                   "the anchored head")
        except LaminateError as exc:
            checks["log"] = (False, str(exc))
    if (j := stop()) is not None:
        return j
    if isinstance(opening, str):
        checks["opening"] = (False, f"DAWN opening is malformed ({opening})")
    elif commitment is None or not opening.opens(commitment):
        checks["opening"] = (False, "the DAWN opening does not open the serving card's key "
                                    "commitment")
    else:
        checks["opening"] = (True, "the DAWN opening opens the key commitment")
    if (j := stop()) is not None:
        return j
    result = None
    if rows is None or isinstance(opening, str) or card_problem is not None:
        checks["ownership"] = (False, "no verified serving card and log to replay")
    else:
        try:
            result = dawn_ownership_test(card, opening, rows, victim, suspect, alpha=alpha)
            checks["ownership"] = (result.shown, result.reason)
        except LaminateError as exc:
            checks["ownership"] = (False, f"the replay could not run ({exc})")
    return Judgement(checks, result, anchor_index, commitment, evidence="dawn",
                     names=DAWN_CHECKS)


def rank(judged: list[Judgement]) -> Judgement | None:
    """Mark every passing claim but the earliest commitment as outranked; the winner."""
    passing = [j for j in judged if j.passed]
    if not passing:
        return None
    first = min(cast(int, j.commitment_index) for j in passing)  # a passing claim is logged
    winner = None
    for j in passing:
        if j.commitment_index != first or winner is not None:
            j.outranked_by = first
        else:
            winner = j
    return winner


def add_dataset_inference(judgement: Judgement, p_value: float, *, alpha: float,
                          false_positive_rate: float, independent_models: int,
                          true_positive_rate: float | None = None, stolen_models: int = 0) -> str:
    """Attach dataset inference's result to `judgement` without changing who wins, and
    return the sentence the verdict shows: the p-value, the measured false-positive rate
    on independent same-distribution models that keeps it from deciding alone, and (when
    measured) its true-positive rate on stolen copies, so the verdict says what it added."""
    flagged = p_value < alpha
    tpr = ("" if true_positive_rate is None else
           f" and {true_positive_rate:.0%} of {stolen_models} stolen copies")
    text = (f"dataset inference: p = {p_value:.3g} ({'below' if flagged else 'not below'} "
            f"alpha {alpha:g}); not decisive: it flagged {false_positive_rate:.0%} of "
            f"{independent_models} independent models trained on the same distribution{tpr}, "
            f"so it {'supports' if flagged else 'does not support'} the claim but "
            f"{'cannot make it win' if not judgement.won else 'was not needed for it to win'}")
    judgement.supplementary.append(text)
    return text
