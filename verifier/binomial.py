"""Exact binomial tails and the sequential ownership test built on them.

Why a sequential test, and why this one. The arbiter queries the suspect one trigger at
a time and wants to stop as soon as the answer is clear, but peeking after every query
and stopping at the first small p-value inflates the false-positive rate far above the
nominal alpha. Two rules keep it honest:

* "shown" uses a per-look Bonferroni bound. With at most ``n_max`` looks (one after each
  query, ``n_max`` = trigger count), look ``n`` declares ownership only when the exact
  one-sided tail ``P(Binomial(n, 1/C) >= matches) <= alpha / n_max``. By the union bound
  an independent model (which matches each random trigger label with probability exactly
  1/C) is declared "shown" at *any* look with probability at most alpha. The p-value we
  report is the Bonferroni-adjusted one, ``min(1, n_max * tail)``, so "p <= alpha" and
  "shown" always agree.
* "not shown" uses curtailment: stop once even a match on every remaining trigger could
  not reach the threshold. Curtailment only drops paths that could never reject, so it
  changes neither the false-positive rate nor the power.

Is Bonferroni too conservative to be useful? No: with C = 10, alpha = 1e-6 and 100
triggers the per-look threshold is 1e-8, so 9 straight matches already decide, and a
copy with watermark accuracy 0.9 is shown within 14 queries with probability >= 0.9 and
within 20 with probability > 0.999 (``queries_for_power`` computes it; tests pin it).
The exact false-positive rate of the whole procedure (``false_positive_rate``) is about
1e-7 there, below the nominal 1e-6. ``power`` is exact, by dynamic
programming over the looks, so the verifier's "too weak to prove ownership" warning is a
computed fact, not a rule of thumb.

Everything here is pure Python (``math.comb`` in log space), so the verifier needs no
scipy and nothing underflows for large trigger counts.
"""
import functools
import math
from dataclasses import dataclass
from fractions import Fraction

SHOWN = "shown"
NOT_SHOWN = "not shown"
CONTINUE = "continue"


def _check_p(p: float) -> None:
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {p}")


def log_tail(k: int, n: int, p: float) -> float:
    """log P(X >= k) for X ~ Binomial(n, p), exact up to float rounding.

    Terms are log(comb(n, i)) + i log p + (n - i) log(1 - p), summed by log-sum-exp; past
    the mode they only shrink, so summing stops once they fall below 1e-40 of the sum.
    """
    _check_p(p)
    if k <= 0:
        return 0.0
    if k > n:
        return -math.inf
    lp, lq = math.log(p), math.log1p(-p)
    top = -math.inf
    total = 0.0  # sum of exp(term - top)
    for i in range(k, n + 1):
        term = math.log(math.comb(n, i)) + i * lp + (n - i) * lq
        if term > top:
            total = total * math.exp(top - term) + 1.0 if top > -math.inf else 1.0
            top = term
        else:
            total += math.exp(term - top)
            if i > n * p and term < top - 92.0:
                break
    return min(0.0, top + math.log(total))


def tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the one-sided p-value of k matches in n."""
    return math.exp(log_tail(k, n, p))


def _tail_at_most(k: int, n: int, classes: int, level: Fraction) -> bool:
    """P(Bin(n, 1/classes) >= k) <= level, decided exactly.

    The float tail settles all but near-ties; a tie (e.g. 0.1**5 against 1e-5, which
    floats round the wrong way) is settled in integers: C^n P(X >= k) =
    sum_{i>=k} comb(n, i) (C-1)^(n-i).
    """
    log_level = math.log(level)
    approx = log_tail(k, n, 1.0 / classes)
    if abs(approx - log_level) > 1e-9 * max(1.0, abs(log_level)):
        return approx < log_level
    count = sum(math.comb(n, i) * (classes - 1) ** (n - i) for i in range(k, n + 1))
    return Fraction(count, classes ** n) <= level


@dataclass(frozen=True)
class SequentialTest:
    """The sequential one-sided test of "matches exceed chance 1/C" with at most n_max looks.

    ``thresholds[n]`` is the fewest matches after ``n`` queries that declare ownership
    (``n + 1`` when no count can yet, e.g. too few queries for the per-look alpha).
    """

    n_max: int
    classes: int
    alpha: float
    thresholds: tuple

    @classmethod
    def create(cls, n_max: int, classes: int, alpha: float) -> "SequentialTest":
        """The test for these parameters (cached: arbiters and the verifier's power check
        ask for the same few combinations over and over)."""
        return _create(n_max, classes, alpha)

    @classmethod
    def _build(cls, n_max: int, classes: int, alpha: float) -> "SequentialTest":
        if n_max < 1:
            raise ValueError(f"trigger count must be >= 1, got {n_max}")
        if classes < 2:
            raise ValueError(f"classes must be >= 2, got {classes}")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        level = Fraction(alpha) / n_max
        # The threshold never decreases: for a fixed count the tail grows with n.
        thresholds = [1]
        for n in range(1, n_max + 1):
            k = thresholds[-1]
            while k <= n and not _tail_at_most(k, n, classes, level):
                k += 1
            thresholds.append(k)  # k == n + 1: no count can decide at this look
        return cls(n_max, classes, alpha, tuple(thresholds))

    @property
    def p0(self) -> float:
        """The chance an independent model matches one trigger: 1 / classes."""
        return 1.0 / self.classes

    def adjusted_p_value(self, matches: int, queries: int) -> float:
        """Bonferroni-adjusted p-value at a look: min(1, n_max * P(Bin(queries, 1/C) >= matches))."""
        if queries == 0:
            return 1.0
        return min(1.0, self.n_max * tail(matches, queries, self.p0))

    def decide(self, matches: int, queries: int) -> str:
        """SHOWN, NOT_SHOWN or CONTINUE after ``queries`` answers with ``matches`` matches."""
        if not 0 <= matches <= queries <= self.n_max:
            raise ValueError(f"need 0 <= matches <= queries <= {self.n_max}")
        if queries > 0 and matches >= self.thresholds[queries]:
            return SHOWN
        # Curtailment: the best case is that every remaining trigger matches. Matching
        # from here on makes the tail shrink look by look, so the last look is the best
        # chance; if even that cannot reach its threshold, no look can.
        best = matches + (self.n_max - queries)
        if best < self.thresholds[self.n_max]:
            return NOT_SHOWN
        return NOT_SHOWN if queries == self.n_max else CONTINUE

    def shown_by(self, accuracy: float, queries: int | None = None) -> list:
        """P(ownership shown at or before look n) for n = 0..queries, exact.

        Each trigger matches independently with probability ``accuracy``. Dynamic
        programming over looks: ``alive[k]`` is the probability of having k matches and
        no decision yet; mass reaching the threshold is absorbed as "shown". Paths the
        curtailment rule stops could never reach "shown", so dropping them is exact.
        """
        if not 0.0 <= accuracy <= 1.0:
            raise ValueError(f"accuracy must be in [0, 1], got {accuracy}")
        last = self.n_max if queries is None else min(queries, self.n_max)
        alive = [1.0]
        shown = 0.0
        cumulative = [0.0]
        for n in range(1, last + 1):
            nxt = [0.0] * (n + 1)
            for k, mass in enumerate(alive):
                if mass:
                    nxt[k] += mass * (1.0 - accuracy)
                    nxt[k + 1] += mass * accuracy
            threshold = self.thresholds[n]
            shown += sum(nxt[threshold:])
            alive = nxt[:threshold] if threshold <= n else nxt
            cumulative.append(min(1.0, shown))
        return cumulative


@functools.lru_cache(maxsize=128)
def _create(n_max: int, classes: int, alpha: float) -> SequentialTest:
    return SequentialTest._build(n_max, classes, alpha)


def power(watermark_accuracy: float, trigger_count: int, classes: int, alpha: float) -> float:
    """Probability that the sequential test shows ownership of a model that matches each
    trigger independently with probability ``watermark_accuracy`` (exact).

    The verifier warns when this falls below the policy's ``ownership.min_power``: such a
    card's watermark could not settle a dispute even against a perfect copy.
    """
    return SequentialTest.create(trigger_count, classes, alpha).shown_by(watermark_accuracy)[-1]


def queries_for_power(watermark_accuracy: float, trigger_count: int, classes: int,
                      alpha: float, target: float = 0.9) -> int | None:
    """Fewest queries after which ownership is shown with probability >= target, or None."""
    curve = SequentialTest.create(trigger_count, classes, alpha).shown_by(watermark_accuracy)
    return next((n for n, prob in enumerate(curve) if prob >= target), None)


def false_positive_rate(trigger_count: int, classes: int, alpha: float) -> float:
    """Exact probability that the test shows ownership of an independent model (<= alpha)."""
    test = SequentialTest.create(trigger_count, classes, alpha)
    return test.shown_by(test.p0)[-1]
