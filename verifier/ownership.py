"""The ownership test: does a suspect model answer the owner's secret triggers?

The claimant reveals the opening of the watermark commitment sealed in a verified card.
We check the opening against that commitment (so the triggers were fixed before the
suspect existed and were drawn by the attested session, not chosen to fool independent
models), regenerate the triggers with the public generator, ask the suspect for labels
only, and run the sequential binomial test of ``verifier.binomial`` against chance 1/C.
Queries go in order, one look per answer, and stop as soon as a decision is reached.
Batches sent to the suspect are never larger than the fewest answers that could reach a
decision, so the suspect sees exactly the queries reported, no more.
"""
import time
from dataclasses import asdict, dataclass

import numpy as np

from cards.errors import LaminateError, printable
from cards.ewe import SCHEMES as EWE_SCHEMES
from verifier.binomial import CONTINUE, NOT_SHOWN, SHOWN, SequentialTest

OPENING_MISMATCH = "opening does not match the commitment"
# The sequential test's tables grow faster than quadratically in the trigger count:
# 1,024 build in under a second, 4,096 take 23 s, 20,000 never finished.
MAX_TRIGGERS = 1024


@dataclass
class OwnershipResult:
    """The outcome of one ownership test, with the figures that justify it."""
    verdict: str          # "shown" | "not shown"
    p_value: float        # Bonferroni-adjusted over the looks (see verifier.binomial)
    queries: int
    matches: int
    match_rate: float
    alpha: float
    trigger_count: int
    classes: int
    reason: str
    elapsed_ms: float
    test: str = "sequential"   # "sequential" (binomial, 1/C) or "ewe" (conditional, FORMAT.md)

    @property
    def shown(self) -> bool:
        """The test showed ownership at ``alpha``."""
        return self.verdict == SHOWN

    @property
    def exit_code(self) -> int:
        """0 when ownership is shown, else 1 (the CLI's exit status)."""
        return 0 if self.shown else 1

    def to_dict(self) -> dict:
        """Every field, for JSON."""
        return asdict(self)

    def to_text(self) -> str:
        """The verdict and its reason, then the counts and p-value when the suspect
        was queried."""
        head = "OWNERSHIP SHOWN" if self.shown else "ownership NOT shown"
        lines = [f"{head}: {printable(self.reason)}"]
        if self.queries and self.test == "ewe":
            lines.append(
                f"  matches {self.matches}/{self.queries} (rate {self.match_rate:.3f}), exact "
                f"conditional p-value {self.p_value:.3g} over the seed-drawn targets (alpha "
                f"{self.alpha:g}, all {self.trigger_count} inputs asked once), {self.elapsed_ms:.0f} ms")
        elif self.queries:
            lines.append(
                f"  matches {self.matches}/{self.queries} (rate {self.match_rate:.3f}, chance "
                f"{1 / self.classes:.3f}), p-value {self.p_value:.3g} (alpha {self.alpha:g}, "
                f"adjusted for up to {self.trigger_count} looks), {self.elapsed_ms:.0f} ms")
        return "\n".join(lines)


def ownership_test(opening, watermark_claim, suspect, *, alpha: float = 1e-6) -> OwnershipResult:
    """Test ``suspect`` against the triggers of ``opening``, committed in ``watermark_claim``
    (a card's ``claims.defenses.watermark``). A wrong opening is a "not shown" verdict,
    not an error: the claimant failed to back the claim."""
    started = time.perf_counter()
    if watermark_claim is None:
        raise LaminateError("claims.defenses.watermark: the card carries no watermark, "
                            "so there is nothing to test ownership against")
    if not 0.0 < alpha < 1.0:
        raise LaminateError(f"alpha: must be between 0 and 1, got {alpha}")
    if watermark_claim["scheme"] in EWE_SCHEMES:
        from verifier import ewe_null

        return ewe_null.ownership(opening, watermark_claim, suspect, alpha=alpha)
    count, classes = watermark_claim["trigger_count"], watermark_claim["classes"]
    if type(count) is not int or not 1 <= count <= MAX_TRIGGERS:
        raise LaminateError(f"claims.defenses.watermark.trigger_count: {count!r} triggers; "
                            f"an ownership test runs on 1 to {MAX_TRIGGERS}")

    def result(verdict, reason, queries=0, matches=0, p_value=1.0):
        return OwnershipResult(
            verdict=verdict, p_value=p_value, queries=queries, matches=matches,
            match_rate=matches / queries if queries else 0.0, alpha=alpha,
            trigger_count=count, classes=classes, reason=reason,
            elapsed_ms=(time.perf_counter() - started) * 1000.0)

    parameters = opening.parameters
    if (parameters.get("scheme") != watermark_claim["scheme"] or not opening.matches(watermark_claim["commitment"])
            or parameters.get("scheme") != watermark_claim["scheme"]
            or parameters.get("trigger_count") != count
            or parameters.get("classes") != classes):
        return result(NOT_SHOWN, OPENING_MISMATCH)

    _check_input_shape(suspect, parameters["input_shape"])
    test = SequentialTest.create(count, classes, alpha)
    x, y = opening.triggers()
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)
    queries = matches = 0
    decision = test.decide(0, 0)
    while decision == CONTINUE:
        size = min(suspect.batch_size, _fewest_to_decide(test, matches, queries))
        labels = suspect.predict(x[queries:queries + size])
        for label, expected in zip(labels, y[queries:queries + size]):
            queries += 1
            matches += int(label == expected)
            decision = test.decide(matches, queries)
            if decision != CONTINUE:
                break
    p_value = test.adjusted_p_value(matches, queries)
    if decision == SHOWN:
        reason = (f"{matches} of {queries} trigger labels matched; an independent model "
                  f"matches each with probability 1/{classes}")
    elif queries == count:
        reason = f"only {matches} of all {count} trigger labels matched"
    else:
        reason = (f"{matches} of {queries} trigger labels matched; even matching all "
                  f"{count - queries} remaining triggers could not reach alpha {alpha:g}")
    return result(decision, reason, queries, matches, p_value)


def _check_input_shape(suspect, shape: list) -> None:
    """Refuse before the triggers are generated when the suspect declares an input shape
    (an ONNX file does) that the opening's triggers cannot fit."""
    declared = getattr(suspect, "input_shape", None)
    if declared is None:
        return
    if len(declared) != len(shape) or any(
            isinstance(d, int) and d != want for d, want in zip(declared, shape)):
        raise LaminateError(
            f"{suspect.name}: model input expects shape [batch, "
            f"{', '.join(str(d) for d in declared)}], the opening's input_shape is {shape}")


def _fewest_to_decide(test: SequentialTest, matches: int, queries: int) -> int:
    """Fewest further answers after which any decision is possible: all matches is the
    quickest way to "shown", all misses the quickest way to "not shown"."""
    for extra in range(1, test.n_max - queries + 1):
        n = queries + extra
        if (test.decide(matches + extra, n) == SHOWN
                or test.decide(matches, n) == NOT_SHOWN):
            return extra
    return test.n_max - queries
