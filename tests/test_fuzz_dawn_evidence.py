"""Fuzzing the DAWN evidence and log-head parsers a dispute reads from an owner: any
bytes or shape end in a result or one LaminateError, never another exception."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

import serving_kit as sk
from cards import cbor
from cards.errors import LaminateError
from fuzzing import FUZZ, FUZZ_SLOW, cbor_values, mutated
from serving.anchor import signed_head
from verifier import dawn_evidence


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    served = sk.serve(tmp_path_factory.mktemp("fuzz-dawn"), rate=0.2)
    _, (x, _), _ = sk.split()
    for start in range(0, 30, 10):
        served.predict(x[start:start + 10])
    head = signed_head(served.server)
    evidence = dawn_evidence.build_evidence(served.state / "log.sqlite", head,
                                            served.deployment.card, ["alice"])
    return served.deployment.card, head, evidence


def _check(card, head, data):
    try:
        clients, rows = dawn_evidence.check_evidence(data, card, head)
    except LaminateError:
        return
    assert clients == ["alice"] and all(len(r) == 4 for r in rows)


def test_the_genuine_evidence_checks(world):
    card, head, evidence = world
    clients, rows = dawn_evidence.check_evidence(evidence, card, head)
    assert clients == ["alice"] and len(rows) == 30


@FUZZ_SLOW
@given(data=st.data())
def test_mutated_evidence_ends_in_a_laminate_error(world, data):
    card, head, evidence = world
    _check(card, head, data.draw(mutated(evidence)))


@FUZZ
@given(fields=st.fixed_dictionaries({}, optional={
    "format": st.just(dawn_evidence.EVIDENCE_FORMAT) | cbor_values,
    "serving_card": cbor_values, "clients": st.lists(st.text(max_size=8), max_size=3) | cbor_values,
    "records": st.lists(st.binary(max_size=40), max_size=4) | cbor_values,
    "batches": st.lists(st.lists(cbor_values, max_size=4), max_size=3) | cbor_values}))
def test_shaped_evidence_ends_in_a_laminate_error(world, fields):
    card, head, _ = world
    _check(card, head, cbor.dumps(fields))


@FUZZ
@given(data=st.data())
def test_any_log_head_ends_in_a_laminate_error(world, data):
    card, head, _ = world
    raw = data.draw(mutated(head) | st.binary(max_size=80))
    try:
        dawn_evidence.open_head(raw, card)
        dawn_evidence.head_card(raw)
    except LaminateError:
        pass
