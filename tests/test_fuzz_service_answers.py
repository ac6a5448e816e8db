"""Fuzzing what a (hostile) service answers the command-line clients: `log submit`,
`log tree-head`, `log consistency`, `dispute open` and `dispute show` read arbitrary JSON
and end in one LaminateError, never another exception, never a hang."""
import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

import cardkit
from cards import keys
from cards.errors import LaminateError
from fuzzing import FUZZ_SLOW, json_values
from registry import answers
from registry.disputes import sign_verdict
from test_service_cli import run
from test_service_inputs import HostileService

KEY = keys.generate_private_key("ed25519")
shaped = st.fixed_dictionaries({}, optional={
    "receipt": st.text(max_size=12) | json_values, "card_id": json_values,
    "leaf_index": json_values, "tree_size": json_values, "root_hash": json_values,
    "signed": st.text(max_size=12) | json_values, "public_key_pem": json_values,
    "consistency_proof": json_values, "dispute_id": json_values,
    "verdict": json_values, "signed_verdict": json_values,
    "detail": json_values, "already_registered": json_values})
bodies = (shaped.map(json.dumps) | json_values.map(json.dumps) | st.binary(max_size=64)
          | st.integers(1, 100_000).map(lambda n: "[" * n + "]" * n))
statuses = st.sampled_from([200, 201, 404, 422, 500])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz-answers")
    kit = cardkit.make_card(base / "kit")
    pem = base / "service.pem"
    pem.write_bytes(keys.public_pem(KEY))
    head = base / "head.json"
    head.write_text(json.dumps({"signed": base64.b64encode(b"\xd2\x84").decode()}))
    server = HostileService()
    yield {"kit": kit, "pem": pem, "server": server, "head": head}
    server.close()


def test_every_client_survives_any_answer(world):
    server, kit, pem = world["server"], world["kit"], world["pem"]
    calls = [("log", "submit", kit.card_path, "--server", server.url),
             ("log", "tree-head", "--server", server.url),
             ("log", "tree-head", "--server", server.url, "--service-key", pem),
             ("dispute", "open", "--server", server.url, "--suspect", kit.model_path,
              "--claim", f"{'ab' * 32}={kit.opening_path}"),
             ("dispute", "show", "d1", "--server", server.url),
             ("dispute", "show", "d1", "--server", server.url, "--service-key", pem)]

    @FUZZ_SLOW
    @given(st.lists(st.tuples(statuses, bodies), min_size=5, max_size=5),
           st.sampled_from(range(len(calls))))
    def check(answers_, which):
        for path, answer in zip(("/v1/cards", "/v1/log/tree-head", "/v1/log/key",
                                 "/v1/disputes", "/v1/disputes/d1"), answers_):
            status, body = answer
            server.answers[path] = (status, body if isinstance(body, bytes) else body.encode())
        try:
            run(*calls[which])
        except LaminateError as exc:
            assert "\x1b" not in str(exc)
    check()


verdicts = st.fixed_dictionaries({}, optional={
    "suspect": json_values | st.fixed_dictionaries(
        {}, optional={"sha256": json_values, "prediction_url": json_values,
                      "leaf_index": json_values, "source": json_values}),
    "claims": json_values | st.lists(st.fixed_dictionaries(
        {}, optional={"won": json_values, "card_id": json_values, "reason": json_values}),
        max_size=3),
    "winner": json_values, "reason": json_values, "dispute_id": json_values})


@FUZZ_SLOW
@given(verdicts | json_values)
def test_verdict_lines_read_any_verdict(verdict):
    try:
        lines = answers.verdict_lines(verdict)
    except LaminateError:
        return
    assert all(line.isprintable() for line in lines)


@FUZZ_SLOW
@given(verdicts.filter(lambda v: isinstance(v, dict)))
def test_signed_but_malformed_verdicts_are_clean_errors(verdict):
    """Even a verdict the service really signed may be malformed: reading it is checked."""
    from registry.client import _print_verdict

    verdict = {**verdict, "type": "laminate-dispute-verdict/1"}
    try:
        signed = sign_verdict(verdict, KEY)
    except (LaminateError, ValueError, TypeError, OverflowError):
        return                      # not encodable as the service's CBOR: never signed
    view = {"signed_verdict": base64.b64encode(signed).decode()}
    try:
        _print_verdict(view, KEY.public_key())
    except LaminateError:
        pass
