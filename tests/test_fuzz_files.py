"""Fuzzing the files a user hands the tools: policy.yaml, config.yaml, watermark
openings and policy predicates (hostile text ends in one LaminateError, never another
exception, never a hang)."""
import json
import math

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from attest.config import from_dict, load_config
from cards import watermark
from cards.errors import LaminateError
from fuzzing import FUZZ, FUZZ_SLOW, json_values
from verifier import predicates
from verifier.policy import Policy

POLICY_KEYS = ["policy_id", "allow_backends", "trusted_roots", "trusted_release_keys",
               "reference_values", "require", "ownership", "dp", "unknown"]
CONFIG_KEYS = ["dataset", "model", "training", "dp", "watermark", "output", "seed", "backend"]
DEEP = "a: " + "[" * 3000 + "]" * 3000          # always tried: past the parser's stack
yaml_text = (st.text(max_size=200)
             | json_values.map(lambda v: yaml.safe_dump(v))
             | st.integers(1, 1000).map(lambda n: "a: " + "[" * n + "]" * n)
             | st.integers(1, 120).map(lambda n: "a:\n" + "".join(" " * i + "- \n" for i in range(n))))


def _mapping(keys):
    return st.dictionaries(st.sampled_from(keys), json_values, max_size=len(keys))


@FUZZ
@given(_mapping(POLICY_KEYS) | json_values)
def test_policy_mappings(doc):
    try:
        policy = Policy.from_mapping(doc, base_dir="/nonexistent-policy-dir")
        assert isinstance(policy.predicates, tuple)  # parsing the predicates is part of reading
    except LaminateError:
        pass


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-files")


def test_policy_files(scratch):
    @FUZZ_SLOW
    @given(yaml_text)
    @example(DEEP)
    def check(text):
        path = scratch / "policy.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            Policy.load(path)
        except LaminateError as exc:
            assert "\n" not in str(exc).strip()
    check()


@FUZZ
@given(_mapping(CONFIG_KEYS) | json_values)
def test_config_mappings(doc):
    try:
        from_dict(doc, data_given=True)
    except LaminateError:
        pass


def test_config_files(scratch):
    @FUZZ_SLOW
    @given(yaml_text)
    @example(DEEP)
    def check(text):
        path = scratch / "config.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            load_config(path)
        except LaminateError as exc:
            assert "\n" not in str(exc).strip()
    check()


parameters = st.fixed_dictionaries({
    "scheme": st.sampled_from([watermark.SCHEME, "other"]),
    "trigger_count": st.integers(-3, 1 << 40) | json_values,
    "classes": st.integers(-3, 1 << 40) | json_values,
    "input_shape": st.lists(st.integers(-2, 1 << 36), max_size=10) | json_values,
    "value_range": st.lists(st.floats(allow_nan=True), max_size=3) | json_values})


@FUZZ
@example("[" * 100_000 + "]" * 100_000)
@given(st.text(max_size=200) | st.fixed_dictionaries(
    {"format": st.just(watermark.OPENING_FORMAT), "seed": st.just("01" * 32),
     "salt": st.just("02" * 32) | st.text(max_size=70), "parameters": parameters,
     "commitment": st.text(max_size=70)}).map(json.dumps)
    | st.integers(1, 200_000).map(lambda n: "[" * n + "]" * n))
def test_openings(text):
    try:
        opening = watermark.Opening.from_json(text)
    except LaminateError:
        return
    x, y = opening.triggers()          # a valid opening is also a bounded one
    assert len(y) == opening.parameters["trigger_count"]
    assert x.size <= watermark.MAX_TRIGGER_ELEMENTS


path_words = st.sampled_from(["model.name", "evaluation.accuracy", "defenses.dp.epsilon",
                              "len(dataset.train.records)", "x.0.y", "in", "not"])
tokens = st.sampled_from(["<=", ">=", "==", "!=", "<", ">", "in", "not in", "[", "]", ",",
                          "(", ")", "true", "null", "1e309", "-0.5", '"a  b"', "'c'", '"\\"'])


@FUZZ
@given(st.text(max_size=60) | st.lists(path_words | tokens, max_size=8).map(" ".join))
def test_predicates(text):
    try:
        parsed = predicates.parse(text)
    except LaminateError:
        return
    again = predicates.parse(parsed.text)          # the normal form parses to the same test
    assert (again.path, again.op, again.func) == (parsed.path, parsed.op, parsed.func)
    assert again.value == parsed.value or (isinstance(parsed.value, float)
                                           and math.isnan(parsed.value))
