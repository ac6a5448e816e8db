"""Policy files refused for exactly one mistake each, with the message naming it.

A policy decides what a deployer trusts; a value the loader silently accepted in the
wrong shape (a string for a list, a bool for a number) would change that decision.
"""
import pytest

from cards.errors import LaminateError
from verifier.policy import MAX_POLICY_BYTES, Policy


@pytest.mark.parametrize("doc, message", [
    ({"dp": {"epsilon_tol": 0.1}}, "dp.epsilon_tol: unknown policy key (known: epsilon_tolerance, max_delta, "
     "max_non_dp_records, require_tight)"),
    ({"ownership": {"alpha": 0.1, "beta": 1}}, "ownership.beta: unknown policy key"),
    ({"ownership": [0.1]}, "ownership: expected a mapping"),
    ({"policy_id": ""}, "policy_id: expected a non-empty string"),
    ({"policy_id": 7}, "policy_id: expected a non-empty string"),
    ({"allow_backends": "sim"}, "allow_backends: expected a list of strings"),
    ({"allow_backends": ["sim", 1]}, "allow_backends: expected a list of strings"),
    ({"allow_backends": ["sgx"]}, "allow_backends: unknown backend 'sgx' (known: sim, tpm, tdx, snp)"),
    ({"require": "evaluation.accuracy >= 0.5"}, "require: expected a list of strings"),
    ({"reference_values": {"code": ["ab" * 31]}},
     "reference_values.code[0]: expected a SHA-256 hex digest (64 hex digits)"),
    ({"reference_values": {"code": ["g" * 64]}},
     "reference_values.code[0]: expected a SHA-256 hex digest (64 hex digits)"),
    ({"ownership": {"alpha": True}}, "ownership.alpha: expected a number, got True"),
    ({"ownership": {"alpha": float("inf")}}, "ownership.alpha: expected a number, got inf"),
    ({"ownership": {"alpha": "1e-x"}}, "ownership.alpha: expected a number, got '1e-x'"),
    ({"ownership": {"alpha": 0}}, "ownership.alpha: must be in (0, 1], got 0"),
    ({"ownership": {"min_power": -0.5}}, "ownership.min_power: must be in [0, 1], got -0.5"),
    ({"dp": {"epsilon_tolerance": 1.5}}, "dp.epsilon_tolerance: must be in [0, 1], got 1.5"),
    ({"trusted_roots": ["absent.pem"]}, "trusted_roots[0]: file"),
    ({"reference_values": {"libraries": ["numpy"]}},
     "reference_values.libraries: expected a mapping of library name"),
    ({"reference_values": {"libraries": {1: ["ab" * 32]}}},
     "reference_values.libraries: expected a mapping of library name"),
    ({"require_start": ["random", "magic"]}, "require_start: unknown start kind 'magic'"),
    ({"require_entry_point": "yes"}, "require_entry_point: expected true or false"),
    ({"dp": {"max_non_dp_records": -1}},
     "dp.max_non_dp_records: expected a non-negative integer, got -1"),
    ({"dp": {"max_non_dp_records": True}},
     "dp.max_non_dp_records: expected a non-negative integer, got True"),
    ({"dp": {"max_non_dp_records": 1.5}},
     "dp.max_non_dp_records: expected a non-negative integer, got 1.5"),
    ({"dp": {"require_tight": "yes"}}, "dp.require_tight: expected true or false"),
])
def test_each_mistake_is_named(tmp_path, doc, message):
    with pytest.raises(LaminateError) as err:
        Policy.from_mapping(doc, base_dir=tmp_path, source="p.yaml")
    assert str(err.value).startswith(f"p.yaml: {message}"), str(err.value)


@pytest.mark.parametrize("doc, check", [
    ({"ownership": {"alpha": "1e-6"}}, lambda p: p.ownership.alpha == 1e-6),
    ({"ownership": {"alpha": 1, "min_power": 0}},
     lambda p: (p.ownership.alpha, p.ownership.min_power) == (1.0, 0.0)),
    ({"dp": {"epsilon_tolerance": 0}}, lambda p: p.dp.epsilon_tolerance == 0.0),
    ({"reference_values": {"code": ["AB" * 32]}}, lambda p: p.reference_values.code == ("ab" * 32,)),
    ({"policy_id": "x", "ownership": None, "dp": None}, lambda p: p.policy_id == "x"),
    ({}, lambda p: p.allow_backends == ("tpm",) and p.policy_id == "p"),
    ({"dp": {"max_non_dp_records": 0}}, lambda p: p.dp.max_non_dp_records == 0),
])
def test_edges_that_are_accepted(tmp_path, doc, check):
    assert check(Policy.from_mapping(doc, base_dir=tmp_path, source="p.yaml"))


def test_size_limit_is_exact(tmp_path):
    body = b"policy_id: big\n"
    at_limit = tmp_path / "at.yaml"
    at_limit.write_bytes(body + b"#" * (MAX_POLICY_BYTES - len(body) - 1) + b"\n")
    assert at_limit.stat().st_size == MAX_POLICY_BYTES == 1 << 20
    assert Policy.load(at_limit).policy_id == "big"
    over = tmp_path / "over.yaml"
    over.write_bytes(at_limit.read_bytes() + b"\n")
    with pytest.raises(LaminateError, match=r"over\.yaml: policy larger than 1048576 bytes$"):
        Policy.load(over)


def test_invalid_yaml_is_named_by_the_parser_s_first_line(tmp_path):
    """The YAML parser's message runs over several lines; the one-line error keeps the
    first, which says what was being parsed."""
    path = tmp_path / "bad.yaml"
    path.write_text("policy_id: [\n")
    with pytest.raises(LaminateError) as err:
        Policy.load(path)
    assert str(err.value) == f"{path}: not valid YAML (while parsing a flow node)"
