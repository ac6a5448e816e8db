"""The ownership test's arithmetic at its boundaries: one look, one match, bad inputs.

The smallest tests are decided by hand: with 2 classes, alpha 0.5 and one trigger, the
per-look level is 0.5 and P(Bin(1, 1/2) >= 1) = 0.5 <= 0.5, so one match shows ownership.
"""
import math

import pytest

from verifier import binomial


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5])
def test_probabilities_outside_the_open_interval_are_refused(p):
    with pytest.raises(ValueError, match=r"probability must be in \(0, 1\)"):
        binomial.log_tail(1, 5, p)


@pytest.mark.parametrize("k", [0, -1, -5])
def test_at_least_nothing_is_certain(k):
    assert binomial.log_tail(k, 5, 0.3) == 0.0
    assert binomial.tail(k, 5, 0.3) == 1.0


def test_tails_against_the_closed_form():
    assert binomial.log_tail(6, 5, 0.3) == -math.inf
    assert binomial.tail(5, 5, 0.3) == pytest.approx(0.3 ** 5, rel=1e-12)
    assert binomial.tail(1, 5, 0.3) == pytest.approx(1 - 0.7 ** 5, rel=1e-12)
    exact = sum(math.comb(40, i) * 0.1 ** i * 0.9 ** (40 - i) for i in range(12, 41))
    assert binomial.tail(12, 40, 0.1) == pytest.approx(exact, rel=1e-9)


def test_one_trigger_one_match_is_shown():
    test = binomial.SequentialTest.create(1, 2, 0.5)
    assert test.thresholds == (1, 1)
    assert test.decide(1, 1) == binomial.SHOWN
    assert test.decide(0, 1) == binomial.NOT_SHOWN
    assert test.decide(0, 0) == binomial.CONTINUE
    assert test.adjusted_p_value(1, 1) == 0.5
    assert test.shown_by(1.0) == [0.0, 1.0]
    assert test.shown_by(0.25) == [0.0, 0.25]


def test_one_thresholds_entry_per_look():
    for n_max in (1, 2, 7, 30):
        assert len(binomial.SequentialTest.create(n_max, 10, 1e-3).thresholds) == n_max + 1


def test_adjusted_p_value_after_one_query():
    test = binomial.SequentialTest.create(2, 10, 0.5)
    assert test.adjusted_p_value(0, 0) == 1.0
    assert test.adjusted_p_value(1, 1) == pytest.approx(0.2)      # 2 * 1/10
    assert test.adjusted_p_value(0, 1) == 1.0


@pytest.mark.parametrize("args, why", [
    ((0, 10, 0.1), "trigger count must be >= 1"),
    ((5, 1, 0.1), "classes must be >= 2"),
    ((5, 10, 0.0), r"alpha must be in \(0, 1\)"),
    ((5, 10, 1.0), r"alpha must be in \(0, 1\)"),
])
def test_parameters_no_test_exists_for(args, why):
    with pytest.raises(ValueError, match=why):
        binomial.SequentialTest.create(*args)


@pytest.mark.parametrize("matches, queries", [(-1, 0), (2, 1), (0, 3)])
def test_impossible_looks_are_refused(matches, queries):
    with pytest.raises(ValueError, match="need 0 <= matches <= queries <= 2"):
        binomial.SequentialTest.create(2, 10, 0.5).decide(matches, queries)


@pytest.mark.parametrize("accuracy", [-0.01, 1.01])
def test_accuracy_outside_the_unit_interval_is_refused(accuracy):
    with pytest.raises(ValueError, match=r"accuracy must be in \[0, 1\]"):
        binomial.SequentialTest.create(3, 10, 0.5).shown_by(accuracy)


def test_shown_by_stops_at_the_requested_look():
    test = binomial.SequentialTest.create(20, 10, 1e-3)
    full = test.shown_by(0.9)
    assert len(full) == 21 and test.shown_by(0.9, 5) == full[:6]
    assert test.shown_by(0.9, 99) == full


def test_near_ties_are_decided_in_integers():
    """P(Bin(5, 1/10) >= 4) is exactly 46/10^5 = (5 * 9 + 1) / 10^5: a level equal to it
    passes, one 10^-15 below does not, though floats cannot tell the two apart."""
    from fractions import Fraction
    tail = Fraction(46, 10 ** 5)
    assert binomial._tail_at_most(4, 5, 10, tail) is True
    assert binomial._tail_at_most(4, 5, 10, tail - Fraction(1, 10 ** 15)) is False
