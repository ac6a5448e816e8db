"""Policy predicates at their edges: every outcome and its reason, exactly.

An empty list, an index past the end, a NaN or a claim of the wrong shape must give a
violated predicate whose reason says which, never a Python exception: appraisal reports
predicates as `policy:` checks and an exception would stop it.
"""
import pytest

from verifier import predicates

NAN = float("nan")
CLAIMS = {"e": {"acc": 0.93, "per": [0.9, 0.95, 0.81], "empty": [], "nan": [0.9, NAN],
                "nan_first": [NAN, 0.9], "x": NAN, "mixed": [1, "a"], "name": "digits",
                "n": 7, "flag": True, "none": None, "map": {"a": 1}, "3": "three"}}


@pytest.mark.parametrize("text, holds, reason", [
    # aggregates over lists that cannot have a minimum
    ("min(e.empty) >= 0.5", False, "min() of an empty list: claims.e.empty has no values"),
    ("max(e.empty) <= 1", False, "max() of an empty list: claims.e.empty has no values"),
    ("min(e.nan) >= 0.5", False, "min() of a list holding NaN at claims.e.nan"),
    ("max(e.nan_first) <= 1", False, "max() of a list holding NaN at claims.e.nan_first"),
    ("max(e.mixed) > 0", False, "max() needs a list of numbers, claims.e.mixed is a list"),
    ("min(e.name) > 0", False, "min() needs a list of numbers, claims.e.name is a string"),
    ("min(e.map) > 0", False, "min() needs a list of numbers, claims.e.map is a mapping"),
    ("len(e.n) > 0", False, "len() needs a list, mapping or string, claims.e.n is a number"),
    ("len(e.none) > 0", False, "len() needs a list, mapping or string, claims.e.none is null"),
    ("len(e.flag) > 0", False,
     "len() needs a list, mapping or string, claims.e.flag is a boolean"),
    ("len(e.empty) == 0", True, "len(claims.e.empty) = 0; len(e.empty) == 0 holds"),
    ("len(e.map) == 1", True, "len(claims.e.map) = 1; len(e.map) == 1 holds"),
    ("len(e.name) == 6", True, "len(claims.e.name) = 6; len(e.name) == 6 holds"),
    ("min(e.per) >= 0.81", True, "min(claims.e.per) = 0.81; min(e.per) >= 0.81 holds"),
    ("max(e.per) <= 0.95", True, "max(claims.e.per) = 0.95; max(e.per) <= 0.95 holds"),
    # paths that lead nowhere
    ("e.per.3 >= 0.5", False, "claims.e.per.3 is not in the card"),
    ("e.per.7 == null", False, "claims.e.per.7 is not in the card"),
    ("min(e.per.9) >= 0", False, "claims.e.per.9 is not in the card"),
    ("e.name.0 == 'd'", False, "claims.e.name.0 is not in the card"),
    ("e.per.2 < 0.85", True, "claims.e.per.2 = 0.81; e.per.2 < 0.85 holds"),
    ("e.3 == 'three'", True, "claims.e.3 = 'three'; e.3 == 'three' holds"),
    # values that cannot be ordered against the literal
    ("e.name <= 3", False, "claims.e.name is 'digits': not comparable with the number 3"),
    ("e.n < 'x'", False, "claims.e.n is 7: not comparable with the string 'x'"),
    ("e.map >= 1", False, "claims.e.map is a mapping: not comparable with the number 1"),
    ("e.per > 1", False, "claims.e.per is a list: not comparable with the number 1"),
    ("e.flag >= 1", False, "claims.e.flag is true: not comparable with the number 1"),
    ("e.none >= 1", False, "claims.e.none is null: not comparable with the number 1"),
    ("e.x >= 0", False, "claims.e.x is nan: NaN is not comparable"),
    # every comparison on both sides of its boundary
    ("e.acc > 0.93", False, "claims.e.acc = 0.93; e.acc > 0.93 violated"),
    ("e.acc >= 0.93", True, "claims.e.acc = 0.93; e.acc >= 0.93 holds"),
    ("e.acc < 0.93", False, "claims.e.acc = 0.93; e.acc < 0.93 violated"),
    ("e.acc <= 0.93", True, "claims.e.acc = 0.93; e.acc <= 0.93 holds"),
    ("e.n >= 7.5", False, "claims.e.n = 7; e.n >= 7.5 violated"),
    ("e.name < 'e'", True, "claims.e.name = 'digits'; e.name < 'e' holds"),
    ("e.n == 7", True, "claims.e.n = 7; e.n == 7 holds"),
    ("e.n != 7", False, "claims.e.n = 7; e.n != 7 violated"),
    ("len(e.per) != 3", False, "len(claims.e.per) = 3; len(e.per) != 3 violated"),
    ("e.none == null", True, "claims.e.none = null; e.none == null holds"),
    ("e.flag == true", True, "claims.e.flag = true; e.flag == true holds"),
    ("e.flag != 1", True, "claims.e.flag = true; e.flag != 1 holds"),
    ("e.map == null", False, "claims.e.map = a mapping; e.map == null violated"),
    ("e.per == null", False, "claims.e.per = a list; e.per == null violated"),
    ("e.name == 'digits'", True, "claims.e.name = 'digits'; e.name == 'digits' holds"),
    ("e.acc in [0.93, 1]", True, "claims.e.acc = 0.93; e.acc in [0.93, 1] holds"),
    ("e.acc not in [0.93]", False, "claims.e.acc = 0.93; e.acc not in [0.93] violated"),
    ("e.n in [7.0]", True, "claims.e.n = 7; e.n in [7.0] holds"),
    ("e.flag in [1]", False, "claims.e.flag = true; e.flag in [1] violated"),
    ("e.flag not in [false, null]", True,
     "claims.e.flag = true; e.flag not in [false, null] holds"),
])
def test_outcome_and_reason(text, holds, reason):
    assert predicates.parse(text).evaluate(CLAIMS) == (holds, reason)


@pytest.mark.parametrize("text, why", [
    ("min(e.per >= 1", "missing '\\)'"),
    ("min(e.per] >= 1", "missing '\\)'"),
    ("e.acc >= 1e999", "1e999 is not a finite number"),
    ("e.acc in [1, 2", "missing '\\]'"),
    ("e.acc in [1 2]", "expected ',' or '\\]' in the list"),
    ("e.acc in [[1]]", "nested lists are not supported"),
    ("e.acc not 1", "expected a comparison"),
    ("in == 1", "must start with a claim path"),
    ("min(true) >= 1", "min\\(\\) takes a claim path"),
    ("min(", "'min\\(': unexpected end"),
    ("min(e.per", "'min\\(e.per': unexpected end"),
])
def test_parse_errors_name_the_problem(text, why):
    with pytest.raises(predicates.PredicateError, match=why):
        predicates.parse(text)


@pytest.mark.parametrize("text, value", [
    ("e.acc in []", []),
    ("e.name == 'it\\'s'", "it's"),
    ('e.name == "a\\"b"', 'a"b'),
    ("e.n == -3", -3),
    ("e.acc == .5", 0.5),
    ("e.n == 10", 10),
])
def test_literals(text, value):
    parsed = predicates.parse(text).value
    assert parsed == value and type(parsed) is type(value)


def test_field_and_normalised_text():
    predicate = predicates.parse("  min( e.per )   >=   0.5 ")
    assert (predicate.func, predicate.path, predicate.op) == ("min", ("e", "per"), ">=")
    assert predicate.field == "claims.e.per"
    assert predicate.text == "min( e.per ) >= 0.5"


def test_normalised_text_keeps_every_literal_and_collapses_between_them():
    """Pieces alternate outside / inside a literal, whatever the number of literals: the
    second literal keeps its double space, the spaces after each literal collapse."""
    predicate = predicates.parse('m.name  in  ["a  b",   "c  d"  ,  \'e  f\']   ')
    assert predicate.text == 'm.name in ["a  b", "c  d" , \'e  f\']'
    assert predicate.value == ["a  b", "c  d", "e  f"]


def test_unreadable_rest_is_quoted_up_to_20_characters():
    """The message quotes what could not be read, cut at 20 characters so that a long
    or hostile predicate does not flood the policy error."""
    text = "e.acc >= 0.5 ; " + "x" * 30
    with pytest.raises(predicates.PredicateError) as err:
        predicates.parse(text)
    assert str(err.value) == f"{text!r}: cannot read {'; ' + 'x' * 18!r}"
