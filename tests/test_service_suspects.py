"""Hostile suspects and ownership parameters: every evaluation stops at its bounds with
one clean error naming why (issue: hangs and tracebacks)."""
import json
import time

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import cardkit
from cards import watermark
from cards.errors import LaminateError
from predict_server import PredictEndpoint
from service_helpers import memorizing_model
from verifier.ownership import MAX_TRIGGERS, ownership_test
from verifier.suspect import HttpSuspect, OnnxSuspect

FEATURES, CLASSES = 64, 10


def opening_for(count=20, shape=(FEATURES,)):
    params = watermark.make_parameters(count, CLASSES, list(shape), [0.0, 1.0])
    return watermark.Opening.create(b"\x05" * 32, params, salt=b"\x06" * 32)


def claim_for(opening, **overrides):
    claim = {"scheme": watermark.SCHEME, "commitment": opening.commitment,
             "trigger_count": opening.parameters["trigger_count"], "classes": CLASSES,
             "schedule": "joint"}
    return {**claim, **overrides}


def loop_model(path, iterations=10**15):
    """A classifier whose graph first runs a Loop of ``iterations`` steps."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["acc_in", "one"], ["acc_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1])],
        [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])])
    inits = [numpy_helper.from_array(np.array(iterations, np.int64), "M"),
             numpy_helper.from_array(np.array(True), "c"),
             numpy_helper.from_array(np.zeros(1, np.float32), "acc0"),
             numpy_helper.from_array(np.zeros((FEATURES, CLASSES), np.float32), "W")]
    nodes = [helper.make_node("Loop", ["M", "c", "acc0"], ["acc"], body=body),
             helper.make_node("MatMul", ["input", "W"], ["mm"]),
             helper.make_node("Add", ["mm", "acc"], ["logits"])]
    return cardkit.save_onnx_classifier(path, nodes, inits, input_shape=[FEATURES],
                                        classes=CLASSES, name="loop")


def memory_bomb(path):
    """A classifier that asks for 2^34 floats (64 GiB) before answering."""
    inits = [numpy_helper.from_array(np.array([1 << 34], np.int64), "huge"),
             numpy_helper.from_array(np.zeros((FEATURES, CLASSES), np.float32), "W")]
    nodes = [helper.make_node("ConstantOfShape", ["huge"], ["big"]),
             helper.make_node("ReduceSum", ["big"], ["total"], keepdims=1),
             helper.make_node("MatMul", ["input", "W"], ["mm"]),
             helper.make_node("Add", ["mm", "total"], ["logits"])]
    return cardkit.save_onnx_classifier(path, nodes, inits, input_shape=[FEATURES],
                                        classes=CLASSES, name="bomb")


def test_loop_of_ten_to_the_fifteen_stops_at_the_time_limit(tmp_path):
    opening = opening_for()
    suspect = OnnxSuspect(loop_model(tmp_path / "loop.onnx"), time_limit_s=2)
    started = time.monotonic()
    with pytest.raises(LaminateError, match="exceeded its 2 s limit"):
        ownership_test(opening, claim_for(opening), suspect)
    assert time.monotonic() - started < 10
    assert suspect._child.poll() is not None, "the evaluation process must be killed"


def test_a_loop_that_ends_is_evaluated(tmp_path):
    """The bound stops hostile graphs, not graphs with a Loop: 10 steps answer."""
    suspect = OnnxSuspect(loop_model(tmp_path / "short.onnx", iterations=10), time_limit_s=30)
    assert suspect.predict(np.zeros((3, FEATURES), np.float32)).shape == (3,)


def test_memory_bomb_fails_cleanly_under_the_memory_limit(tmp_path):
    opening = opening_for()
    suspect = OnnxSuspect(memory_bomb(tmp_path / "bomb.onnx"), memory_mb=1024, time_limit_s=60)
    with pytest.raises(LaminateError, match="inference failed|out of memory|stopped"):
        ownership_test(opening, claim_for(opening), suspect)


def graph_without(path, *, inputs: bool):
    const = helper.make_node("Constant", [], ["logits"], value=numpy_helper.from_array(
        np.zeros((1, CLASSES), np.float32)))
    nodes, ins, outs = [const], [], [helper.make_tensor_value_info(
        "logits", TensorProto.FLOAT, [1, CLASSES])]
    if not inputs:
        graph = helper.make_graph(nodes, "no-inputs", ins, outs)
    else:
        ins = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", FEATURES])]
        graph = helper.make_graph([], "no-outputs", ins, [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def test_graph_without_inputs_or_outputs_is_a_clean_error(tmp_path):
    with pytest.raises(LaminateError, match="exactly one input .* it takes 0"):
        OnnxSuspect(graph_without(tmp_path / "noin.onnx", inputs=False))
    with pytest.raises(LaminateError, match="no outputs|not a loadable"):
        OnnxSuspect(graph_without(tmp_path / "noout.onnx", inputs=True))


def test_trigger_count_beyond_the_test_bound_is_refused_before_any_table(tmp_path):
    """A genuine card may claim 20,000 triggers; the test's tables would take hours."""
    opening = opening_for(count=20_000)
    started = time.monotonic()
    with pytest.raises(LaminateError, match=r"watermark\.trigger_count: 20000 triggers"):
        ownership_test(opening, claim_for(opening), OnnxSuspect(
            memorizing_model(tmp_path / "m.onnx", opening_for(), CLASSES)))
    assert time.monotonic() - started < 5
    assert MAX_TRIGGERS == 1024


@pytest.mark.parametrize("shape,reason", [([1 << 34], "exceeds"), ([2] * 9, "1 to 8"),
                                          ([], "1 to 8")])
def test_opening_input_shape_is_bounded(shape, reason):
    params = {"scheme": watermark.SCHEME, "trigger_count": 10, "classes": CLASSES,
              "input_shape": shape, "value_range": [0.0, 1.0]}
    text = json.dumps({"format": watermark.OPENING_FORMAT, "seed": "01" * 32, "salt": "02" * 32,
                       "parameters": params, "commitment": "00" * 32})
    with pytest.raises(LaminateError, match=rf"input_shape.*{reason}"):
        watermark.Opening.from_json(text)


def test_opening_shape_must_fit_the_model_before_triggers_are_made(tmp_path, monkeypatch):
    opening = opening_for(shape=(4, 4, 4))          # 64 values, but not the model's [64]
    suspect = OnnxSuspect(memorizing_model(tmp_path / "m.onnx", opening_for(), CLASSES))
    called = []
    monkeypatch.setattr(watermark, "generate_triggers", lambda *a: called.append(a))
    with pytest.raises(LaminateError, match=r"expects shape \[batch, 64\].*input_shape is \[4, 4, 4\]"):
        ownership_test(opening, claim_for(opening), suspect)
    assert not called


@pytest.fixture
def endpoint(tmp_path):
    server = PredictEndpoint(memorizing_model(tmp_path / "copy.onnx", opening_for(), CLASSES))
    yield server
    server.close()


def test_labels_of_ten_to_the_thirty_are_an_input_error(endpoint):
    endpoint.mode = "hugeint"
    opening = opening_for()
    with pytest.raises(LaminateError, match="labels: expected a list of integers"):
        ownership_test(opening, claim_for(opening), HttpSuspect(endpoint.url))


def test_dripping_endpoint_is_cut_at_the_deadline_not_per_read(endpoint):
    """One byte a second keeps every read inside a 2 s socket timeout; the deadline
    covers the whole answer."""
    endpoint.mode = "drip"
    started = time.monotonic()
    with pytest.raises(LaminateError, match="did not answer within 2 s"):
        HttpSuspect(endpoint.url, timeout=2).predict(np.zeros((8, FEATURES), np.float32))
    assert time.monotonic() - started < 4


def test_total_deadline_spans_every_batch(endpoint):
    endpoint.mode = "ok"
    suspect = HttpSuspect(endpoint.url, timeout=30, total_s=0.0)
    with pytest.raises(LaminateError, match="exceeded its time limit"):
        suspect.predict(np.zeros((1, FEATURES), np.float32))
