"""The sequential binomial test: exact tails, a false-positive rate that early stopping
does not inflate, curtailment that is exact, and the power the verifier's warning uses."""
import math
import random
from fractions import Fraction

import pytest

from verifier.binomial import (
    CONTINUE,
    NOT_SHOWN,
    SHOWN,
    SequentialTest,
    false_positive_rate,
    log_tail,
    power,
    queries_for_power,
    tail,
)


def exact_tail(k, n, p: Fraction) -> Fraction:
    return sum((Fraction(math.comb(n, i)) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)),
               Fraction(0))


@pytest.mark.parametrize("n,k,p", [(1, 1, Fraction(1, 2)), (20, 13, Fraction(1, 10)),
                                   (60, 0, Fraction(1, 3)), (60, 61, Fraction(1, 3)),
                                   (100, 35, Fraction(1, 10)), (200, 150, Fraction(1, 10)),
                                   (40, 3, Fraction(7, 10))])
def test_tail_matches_exact_rational_sum(n, k, p):
    want = exact_tail(k, n, p)
    got = tail(k, n, float(p))
    if want == 0:
        assert got == 0.0 and log_tail(k, n, float(p)) == -math.inf
    else:
        assert got == pytest.approx(float(want), rel=1e-12)


def test_tail_does_not_underflow_in_log_space():
    # P(Bin(2000, 0.1) >= 2000) = 1e-2000: far below the smallest float, fine as a log.
    assert log_tail(2000, 2000, 0.1) == pytest.approx(2000 * math.log(0.1), rel=1e-12)


def test_thresholds_are_the_smallest_counts_below_the_per_look_level():
    test = SequentialTest.create(100, 10, 1e-6)
    level = 1e-6 / 100
    for n in range(1, 101):
        k = test.thresholds[n]
        if k <= n:
            assert tail(k, n, 0.1) <= level * (1 + 1e-9)
        assert tail(k - 1, n, 0.1) > level


@pytest.mark.parametrize("count,classes,alpha", [(100, 10, 1e-6), (50, 10, 1e-3),
                                                 (100, 2, 0.05), (30, 4, 0.01)])
def test_false_positive_rate_never_exceeds_alpha(count, classes, alpha):
    assert false_positive_rate(count, classes, alpha) <= alpha


def test_naive_peeking_would_inflate_the_false_positive_rate():
    # Why the per-look correction exists: testing at the full alpha after every query of
    # an independent model declares ownership far more often than alpha.
    count, classes, alpha = 100, 2, 0.05
    naive = [1] + [next(k for k in range(n + 2) if k == n + 1 or tail(k, n, 0.5) <= alpha)
                   for n in range(1, count + 1)]
    naive_test = SequentialTest(count, classes, alpha, tuple(naive))
    assert naive_test.shown_by(0.5)[-1] > 3 * alpha
    assert false_positive_rate(count, classes, alpha) <= alpha


def test_dynamic_programme_agrees_with_simulating_the_test():
    test = SequentialTest.create(30, 4, 0.01)
    accuracy, runs, shown = 0.5, 20000, 0
    rng = random.Random(7)
    for _ in range(runs):
        matches = queries = 0
        decision = CONTINUE
        while decision == CONTINUE:
            queries += 1
            matches += rng.random() < accuracy
            decision = test.decide(matches, queries)
        shown += decision == SHOWN
    exact = test.shown_by(accuracy)[-1]
    assert abs(shown / runs - exact) < 4 * math.sqrt(exact * (1 - exact) / runs) + 1e-3


def test_curtailment_stops_exactly_when_no_continuation_can_show():
    test = SequentialTest.create(25, 5, 1e-3)
    for n in range(0, 25):
        for k in range(0, n + 1):
            can_still_show = any(test.thresholds[m] <= k + (m - n) for m in range(n + 1, 26))
            decision = test.decide(k, n)
            if decision != SHOWN:
                assert (decision == NOT_SHOWN) == (not can_still_show), (k, n)


def test_a_copy_with_accuracy_0_9_is_shown_within_20_queries():
    # The ownership test's target: <= 20 queries at alpha 1e-6 for watermark accuracy >= 0.9, C=10.
    for count in (50, 100, 200):
        assert queries_for_power(0.9, count, 10, 1e-6, target=0.9) <= 20
        assert SequentialTest.create(count, 10, 1e-6).shown_by(0.9, 20)[-1] > 0.99
    # A perfect copy needs only as many straight matches as 10^-k <= 1e-8 requires.
    assert queries_for_power(1.0, 100, 10, 1e-6, target=1.0) == 9


def test_power_grows_with_accuracy_and_is_tiny_at_chance():
    values = [power(a, 100, 10, 1e-6) for a in (0.1, 0.2, 0.3, 0.5, 0.9)]
    assert values == sorted(values)
    assert values[0] <= 1e-6
    assert values[1] < 0.9 < values[-1]
    # Too few triggers can never show anything at this alpha.
    assert power(1.0, 5, 10, 1e-6) == 0.0
    assert SequentialTest.create(5, 10, 1e-6).decide(0, 0) == NOT_SHOWN


def test_adjusted_p_value_agrees_with_the_decision():
    test = SequentialTest.create(100, 10, 1e-6)
    for n in (9, 20, 50):
        k = test.thresholds[n]
        assert test.decide(k, n) == SHOWN and test.adjusted_p_value(k, n) <= 1e-6 * (1 + 1e-9)
        assert test.adjusted_p_value(k - 1, n) > 1e-6


def test_rejects_nonsense_parameters():
    with pytest.raises(ValueError):
        SequentialTest.create(0, 10, 1e-6)
    with pytest.raises(ValueError):
        SequentialTest.create(10, 1, 1e-6)
    with pytest.raises(ValueError):
        SequentialTest.create(10, 10, 1.5)
    with pytest.raises(ValueError):
        SequentialTest.create(10, 10, 1e-6).decide(3, 2)


def test_ties_with_the_per_look_level_are_decided_exactly():
    # P(5 of 5) = 1e-5 equals the level 1e-3 / 100 (float(1e-3) is a hair above 1e-3),
    # but floats round 0.1**5 above 1e-5: the exact comparison must still decide.
    test = SequentialTest.create(100, 10, 0.001)
    assert test.thresholds[5] == 5 and test.decide(5, 5) == SHOWN
    assert test.decide(4, 4) == CONTINUE
