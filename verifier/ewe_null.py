"""The EWE ownership test: an exact conditional null over the seed-drawn targets.

Key k's target t_k is uniform over the C-1 classes other than its source s_k and
independent of everything a model that never saw the opening could depend on (the
watermark inputs, the patterns, the model itself). Given such a model's answers, let
N_k(c) count the key-k inputs it labels c; the statistic is S = sum_k N_k(t_k). With
the answers fixed, S is a function of the independent uniform targets alone, so its
null distribution is computed exactly by enumerating the targets key by key (a
convolution of K small distributions), and P(p <= alpha) <= alpha holds exactly for
every such model. Everything is integer arithmetic; alpha is compared as a fraction.
See FORMAT.md, "EWE ownership null".
"""
from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction


def statistic(answers, sources, targets) -> int:
    """S = number of watermark inputs answered with their key's target."""
    return sum(sum(1 for a in row if a == t) for row, t in zip(answers, targets))


def p_value(answers, sources, classes: int) -> Callable[[int], Fraction]:
    """The exact null tail function of a suspect's answers: s -> P(S' >= s) as a Fraction,
    where S' = sum_k N_k(T_k) and each T_k is uniform over the classes other than s_k."""
    dist = {0: 1}                                   # sum -> number of target tuples
    for row, s in zip(answers, sources):
        # How many of the C-1 possible targets give each count: at most m+1 distinct
        # counts, so the work does not grow with the class count.
        answered = [a for a in row if a != s and 0 <= a < classes]
        values = {n: 0 for n in set(answered.count(c) for c in set(answered))}
        for c in set(answered):
            values[answered.count(c)] += 1
        values[0] = values.get(0, 0) + (classes - 1) - len(set(answered))
        nxt: dict = {}
        for total, ways in dist.items():
            for n, times in values.items():
                nxt[total + n] = nxt.get(total + n, 0) + ways * times
        dist = nxt
    whole = (classes - 1) ** len(sources)

    def tail(s: int) -> Fraction:
        return Fraction(sum(w for total, w in dist.items() if total >= s), whole)
    return tail


def test(answers, sources, targets, classes: int, alpha: float) -> tuple[bool, int, Fraction]:
    """(shown, S, exact p-value) for the answers grouped by key."""
    s = statistic(answers, sources, targets)
    p = p_value(answers, sources, classes)(s)
    return p <= Fraction(alpha), s, p


def keys_needed(keys: int, classes: int, alpha: float) -> int | None:
    """Fewest keys a copy must carry for any p-value to reach alpha: (1/(C-1))^j <= alpha.
    None when even all keys cannot (too few keys for this alpha)."""
    level = Fraction(alpha)
    for j in range(1, keys + 1):
        if Fraction(1, (classes - 1) ** j) <= level:
            return j
    return None


def power(accuracy: float, keys: int, per_key: int, classes: int, alpha: float) -> float:
    """P(shown) for a copy that answers each watermark input's target independently with
    probability ``accuracy`` and its source class otherwise (what a stolen copy does; an
    independent model answers the source). Then S' >= S only if every key with a hit
    draws its own target again, so p = (1/(C-1))^h with h the keys hit at least once;
    shown iff h >= keys_needed. Exact: h ~ Binomial(K, 1 - (1 - accuracy)^m)."""
    from math import comb

    need = keys_needed(keys, classes, alpha)
    if need is None:
        return 0.0
    q = 1.0 - (1.0 - accuracy) ** per_key
    return sum(comb(keys, h) * q ** h * (1 - q) ** (keys - h) for h in range(need, keys + 1))


def ownership(opening, claim, suspect, *, alpha: float):
    """The EWE ownership test of ``suspect`` (``predict(x) -> labels``, ``batch_size``)
    against ``opening``, committed in the card's EWE ``claim``: check the opening and its
    records' inclusion proofs, ask for every watermark input once (K x m queries, in
    batches), and decide on the exact conditional p-value. Returns an OwnershipResult."""
    import time

    import numpy as np

    from verifier.binomial import NOT_SHOWN, SHOWN
    from verifier.ownership import OPENING_MISMATCH, OwnershipResult

    started = time.perf_counter()
    params = getattr(opening, "parameters", {})
    count, classes = claim["trigger_count"], claim["classes"]

    def result(verdict, reason, queries=0, matches=0, p=1.0):
        return OwnershipResult(verdict=verdict, p_value=float(p), queries=queries,
                               matches=matches, match_rate=matches / queries if queries else 0.0,
                               alpha=alpha, trigger_count=count, classes=classes, reason=reason,
                               elapsed_ms=(time.perf_counter() - started) * 1000.0, test="ewe")

    if (params.get("scheme") != claim["scheme"] or params.get("classes") != classes
            or params.get("keys") != claim["keys"]
            or params["keys"] * params["per_key"] != count
            or not opening.matches(claim["commitment"])):
        return result(NOT_SHOWN, OPENING_MISMATCH)
    problem = opening.records_problem(claim["train_root"], claim["train_records"])
    if problem:
        return result(NOT_SHOWN, problem)
    sources, targets, _ = opening.keys()
    x, _ = opening.triggers()
    labels = np.concatenate([np.asarray(suspect.predict(x[i:i + suspect.batch_size]))
                             for i in range(0, len(x), suspect.batch_size)])
    m = params["per_key"]
    answers = [[int(a) for a in labels[k * m:(k + 1) * m]] for k in range(params["keys"])]
    shown, s, p = test(answers, sources, targets, classes, alpha)
    reason = (f"{s} of {count} watermark inputs answered with their key's target; over the "
              f"seed-drawn targets the exact null P(S >= {s}) is {float(p):.3g}")
    return result(SHOWN if shown else NOT_SHOWN, reason, count, s, p)
