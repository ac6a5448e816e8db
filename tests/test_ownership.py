"""The ownership test end to end against real ONNX models and a real HTTP endpoint.

Suspects are small ONNX graphs built here, so no training is needed: a "copy" answers
each trigger with the owner's label (a nearest-trigger lookup, optionally with some
labels wrong to set its watermark accuracy), an "independent" model is a random linear
classifier that never saw the triggers.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import helper, numpy_helper

import cardkit
from cards.errors import LaminateError
from predict_server import PredictEndpoint
from verifier.ownership import OPENING_MISMATCH, ownership_test
from verifier.suspect import HttpSuspect, OnnxSuspect, open_suspect

watermark = pytest.importorskip("cards.watermark")

ROOT = Path(__file__).resolve().parents[1]
SHAPE = [1, 8, 8]
CLASSES = 10
COUNT = 100


def make_opening(seed=b"\x01" * 32, salt=b"\x02" * 32, count=COUNT, shape=SHAPE):
    params = watermark.make_parameters(count, CLASSES, shape, [0.0, 1.0])
    text = json.dumps({"format": "laminate-watermark-opening/1", "seed": seed.hex(),
                       "salt": salt.hex(), "parameters": params,
                       "commitment": watermark.commit(seed, salt, params)})
    return watermark.Opening.from_json(text)


def claim_for(opening, **overrides):
    claim = {"scheme": watermark.SCHEME, "commitment": opening.commitment,
             "trigger_count": opening.parameters["trigger_count"],
             "classes": opening.parameters["classes"], "schedule": "joint"}
    claim.update(overrides)
    return claim


def save(graph_nodes, inits, path, shape=SHAPE):
    return cardkit.save_onnx_classifier(path, graph_nodes, inits, input_shape=shape, classes=CLASSES,
                                name="suspect")


def copy_model(opening, path, accuracy=1.0, seed=0):
    """Answers each trigger with the owner's label (nearest stored trigger), except for a
    fraction 1 - accuracy of triggers whose stored label was changed."""
    x, y = opening.triggers()
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    y = np.asarray(y).copy()
    rng = np.random.default_rng(seed)
    wrong = rng.permutation(len(y))[: int(round((1 - accuracy) * len(y)))]
    y[wrong] = (y[wrong] + rng.integers(1, CLASSES, len(wrong))) % CLASSES
    onehot = np.eye(CLASSES, dtype=np.float32)[y]
    # score_t = 2 x.t - |t|^2 is largest for the nearest stored trigger t.
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "triggers_t"], ["dot"]),
             helper.make_node("Mul", ["dot", "two"], ["dot2"]),
             helper.make_node("Sub", ["dot2", "norms"], ["score"]),
             helper.make_node("ArgMax", ["score"], ["nearest"], axis=1, keepdims=0),
             helper.make_node("Gather", ["onehot", "nearest"], ["logits"], axis=0)]
    inits = [numpy_helper.from_array(x.T.copy(), "triggers_t"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array((x * x).sum(1).astype(np.float32), "norms"),
             numpy_helper.from_array(onehot, "onehot")]
    return save(nodes, inits, path)


def independent_model(path, seed=1, shape=SHAPE):
    rng = np.random.default_rng(seed)
    features = int(np.prod(shape))
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "w", "b"], ["logits"])]
    inits = [numpy_helper.from_array(rng.normal(size=(features, CLASSES)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=CLASSES).astype(np.float32), "b")]
    return save(nodes, inits, path, shape)


class Counting:
    """Wraps a suspect and records every batch it was sent."""

    def __init__(self, inner):
        self.inner, self.name, self.batch_size, self.batches = inner, inner.name, inner.batch_size, []

    def predict(self, x):
        self.batches.append(len(x))
        return self.inner.predict(x)


@pytest.fixture(scope="module")
def opening():
    return make_opening()


@pytest.fixture(scope="module")
def models(opening, tmp_path_factory):
    d = tmp_path_factory.mktemp("suspects")
    return {"copy": copy_model(opening, d / "copy.onnx"),
            "copy90": copy_model(opening, d / "copy90.onnx", accuracy=0.9),
            "independent": independent_model(d / "independent.onnx")}


def test_a_perfect_copy_is_shown_after_nine_queries(opening, models):
    suspect = Counting(OnnxSuspect(models["copy"]))
    result = ownership_test(opening, claim_for(opening), suspect)
    assert result.verdict == "shown" and result.exit_code == 0
    # 10^-9 * 100 looks <= 1e-6 while 10^-8 * 100 is not: nine straight matches decide.
    assert (result.queries, result.matches, result.match_rate) == (9, 9, 1.0)
    assert result.p_value <= 1e-6
    assert sum(suspect.batches) == result.queries  # the suspect saw no extra trigger


def test_a_copy_with_watermark_accuracy_0_9_is_shown_within_20_queries(opening, models):
    result = ownership_test(opening, claim_for(opening), OnnxSuspect(models["copy90"]))
    assert result.verdict == "shown"
    assert result.queries <= 20 and result.p_value <= 1e-6


def test_an_independent_model_is_not_shown_and_stops_early(opening, models):
    suspect = Counting(OnnxSuspect(models["independent"]))
    result = ownership_test(opening, claim_for(opening), suspect)
    assert result.verdict == "not shown" and result.exit_code == 1
    assert result.queries < COUNT  # curtailed: the rest could not have reached alpha
    assert result.match_rate < 0.3 and result.p_value > 1e-6
    assert sum(suspect.batches) == result.queries


@pytest.mark.parametrize("tamper", ["salt", "seed", "commitment_in_card", "trigger_count",
                                    "classes", "other_owner"])
def test_an_opening_that_does_not_match_the_claim_is_not_shown(opening, models, tamper):
    claim = claim_for(opening)
    used = opening
    if tamper == "salt":
        used = make_opening(salt=b"\x03" * 32)
    elif tamper == "seed":
        used = make_opening(seed=b"\x04" * 32)
    elif tamper == "other_owner":
        used = make_opening(seed=b"\x05" * 32, salt=b"\x06" * 32)
    elif tamper == "commitment_in_card":
        claim["commitment"] = ("0" if claim["commitment"][0] != "0" else "1") + claim["commitment"][1:]
    elif tamper == "trigger_count":
        claim["trigger_count"] = 50
    elif tamper == "classes":
        claim["classes"] = 2
    suspect = Counting(OnnxSuspect(models["copy"]))
    result = ownership_test(used, claim, suspect)
    assert result.verdict == "not shown" and result.reason == OPENING_MISMATCH
    assert result.queries == 0 and suspect.batches == []


def test_a_card_without_watermark_is_an_input_error(opening, models):
    with pytest.raises(LaminateError, match="claims.defenses.watermark"):
        ownership_test(opening, None, OnnxSuspect(models["copy"]))


def test_onnx_suspect_input_errors(opening, tmp_path):
    with pytest.raises(LaminateError, match="not found"):
        open_suspect(str(tmp_path / "missing.onnx"))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(LaminateError, match="not a loadable ONNX model"):
        open_suspect(str(garbage))
    wrong = independent_model(tmp_path / "wrong.onnx", shape=[64])
    with pytest.raises(LaminateError, match=r"expects shape \[batch, 64\]"):
        ownership_test(opening, claim_for(opening), OnnxSuspect(wrong))


@pytest.fixture
def endpoint(models):
    server = PredictEndpoint(models["copy90"])
    yield server
    server.close()


def test_ownership_over_http_in_batches_of_at_most_eight(opening, endpoint):
    suspect = open_suspect(endpoint.url)
    assert isinstance(suspect, HttpSuspect)
    result = ownership_test(opening, claim_for(opening), suspect)
    assert result.verdict == "shown" and result.queries <= 20
    assert max(endpoint.batches) <= 8 and sum(endpoint.batches) == result.queries


@pytest.mark.parametrize("mode,message", [("500", "HTTP 500"), ("html", "did not answer JSON"),
                                          ("short", "expected 8 labels, got 7"),
                                          ("strings", "expected a list of integers"),
                                          ("huge", "answered more than 1048576 bytes"),
                                          ("nested", "did not answer JSON")])
def test_http_suspect_failures_are_clear_input_errors(opening, endpoint, mode, message):
    endpoint.mode = mode
    with pytest.raises(LaminateError, match=message):
        ownership_test(opening, claim_for(opening), HttpSuspect(endpoint.url))


def test_http_suspect_unreachable_and_bad_url():
    with pytest.raises(LaminateError, match="unreachable"):
        HttpSuspect("http://127.0.0.1:9/predict", timeout=2).predict(np.zeros((1, 4), np.float32))
    with pytest.raises(LaminateError, match="must start with http"):
        HttpSuspect("ftp://example/predict")


# --- the command line, on a real sealed card -------------------------------------------

def laminate(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "laminate", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


@pytest.fixture(scope="module")
def sealed(opening, tmp_path_factory):
    d = tmp_path_factory.mktemp("card")
    kit = cardkit.make_card(d, watermark_claim=claim_for(opening))
    opening_path = d / "watermark.opening"
    opening.save(opening_path)
    return kit, opening_path


def test_cli_shows_ownership_of_a_copy(sealed, models):
    kit, opening_path = sealed
    run = laminate("ownership", "--card", kit.card_path, "--opening", opening_path,
                   "--suspect", models["copy"], "--json")
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert answer["verdict"] == "shown" and answer["queries"] == 9
    # The policy's alpha is used when --alpha is absent: 1e-5 * 100 looks <= 1e-3.
    policy = kit.tmp_path / "lenient.yaml"
    policy.write_text("policy_id: lenient\nownership:\n  alpha: 0.001\n")
    run = laminate("ownership", "--card", kit.card_path, "--opening", opening_path,
                   "--suspect", models["copy"], "--policy", policy, "--json")
    answer = json.loads(run.stdout)
    assert run.returncode == 0 and (answer["alpha"], answer["queries"]) == (0.001, 5)


def test_cli_exit_codes(sealed, models, tmp_path):
    kit, opening_path = sealed
    run = laminate("ownership", "--card", kit.card_path, "--opening", opening_path,
                   "--suspect", models["independent"])
    assert run.returncode == 1 and "NOT shown" in run.stdout
    other = tmp_path / "other.opening"
    make_opening(seed=b"\x09" * 32).save(other)
    run = laminate("ownership", "--card", kit.card_path, "--opening", other,
                   "--suspect", models["copy"])
    assert run.returncode == 1 and OPENING_MISMATCH in run.stdout
    run = laminate("ownership", "--card", kit.card_path, "--opening", tmp_path / "nope",
                   "--suspect", models["copy"])
    assert run.returncode == 2 and "Traceback" not in run.stderr
    run = laminate("ownership", "--card", kit.card_path, "--opening", opening_path,
                   "--suspect", models["copy"], "--alpha", "2")
    assert run.returncode == 2 and "--alpha" in run.stderr
    run = laminate("ownership", "--card", opening_path, "--opening", opening_path,
                   "--suspect", models["copy"])
    assert run.returncode == 2 and "Traceback" not in run.stderr
