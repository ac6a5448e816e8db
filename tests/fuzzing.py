"""Shared pieces of the fuzz tests: one bounded Hypothesis profile and value strategies.

Every fuzz test asserts the same two things of a parser the tools expose: hostile input
ends in the project's own error (LaminateError, CardFormatError is one) or a result,
never another exception (a traceback for the user), and each example finishes within
the deadline (no hang). Runs are derandomised so CI sees the same examples every time;
the budgets keep all fuzz tests together well under a minute.
"""
from datetime import timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=120, deadline=timedelta(seconds=2), derandomize=True,
                database=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large])
FUZZ_SLOW = settings(FUZZ, max_examples=40)

scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=16)
cbor_values = st.recursive(scalars | st.binary(max_size=40),
                           lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.integers(-5, 400) | st.text(max_size=6), inner,
                                             max_size=4), max_leaves=16)


@st.composite
def mutated(draw, original: bytes):
    """``original`` with a few bytes flipped, a slice dropped or bytes inserted."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "drop", "insert", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == "drop":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[pos:]
    return bytes(data)
