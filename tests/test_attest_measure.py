"""Measurement primitives: record bytes, dataset Merkle root, config, code and model claims."""
import hashlib
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from attest import measure
from cardkit import make_onnx_model
from cards import cbor, merkle
from cards.errors import LaminateError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("label", [0, 9, 23, 24, 255, 256, 65535, 65536, 2**32, -1, -24, -25])
@pytest.mark.parametrize("n", [0, 1, 6, 23, 24, 64, 70000])
def test_record_bytes_is_dcbor_of_label_and_float32_le(label, n):
    x = np.linspace(-1, 1, n)  # float64 in, float32 on the wire
    assert measure.record_bytes(x, label) == cbor.dumps([label, x.astype("<f4").tobytes()])


def test_record_bytes_accepts_lists_numpy_ints_and_big_endian():
    x = np.arange(6, dtype=">f4").reshape(2, 3)
    expected = cbor.dumps([3, np.arange(6, dtype="<f4").tobytes()])
    assert measure.record_bytes(x, np.int64(3)) == expected
    assert measure.record_bytes([[0, 1, 2], [3, 4, 5]], 3) == expected


@pytest.mark.parametrize("label", [1.0, "1", None])
def test_record_bytes_refuses_non_integer_labels(label):
    with pytest.raises(LaminateError, match="label must be an integer"):
        measure.record_bytes([0.0], label)


def records(n, shape=(8, 8), classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.random(shape, dtype=np.float32), int(rng.integers(classes))) for _ in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 33])
def test_dataset_root_matches_rfc9162_reference(n):
    data = records(n)
    claim = measure.dataset_claim("d", iter(data), 10)
    leaves = [merkle.leaf_hash(measure.record_bytes(x, y)) for x, y in data]
    assert claim["merkle_root"] == merkle.root_of(leaves).hex()
    assert claim["records"] == n
    assert claim["schema"] == {"features": [8, 8], "dtype": "float32", "classes": 10}
    assert claim["label_histogram"] == np.bincount([y for _, y in data], minlength=10).tolist()
    # A single record's membership is provable against the claimed root.
    proof = merkle.inclusion_proof(leaves, n - 1)
    assert merkle.verify_inclusion(leaves[-1], n - 1, n, proof, bytes.fromhex(claim["merkle_root"]))


def test_dataset_root_changes_with_one_feature_one_label_or_order():
    data = records(10)
    base = measure.dataset_claim("d", data, 10)["merkle_root"]
    flipped = [(x.copy(), y) for x, y in data]
    flipped[4][0][0, 0] += 1e-3
    assert measure.dataset_claim("d", flipped, 10)["merkle_root"] != base
    relabelled = list(data)
    relabelled[4] = (data[4][0], (data[4][1] + 1) % 10)
    assert measure.dataset_claim("d", relabelled, 10)["merkle_root"] != base
    assert measure.dataset_claim("d", data[::-1], 10)["merkle_root"] != base


def test_dataset_claim_streams_in_small_memory():
    rng = np.random.default_rng(0)

    def generate(n):
        for i in range(n):
            yield rng.random(4, dtype=np.float32), i % 3

    tracemalloc.start()
    try:
        claim = measure.dataset_claim("big", generate(60_000), 3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert claim["records"] == 60_000
    # Keeping the 60k leaf hashes alone would take > 4 MB.
    assert peak < 512 * 1024, peak


@pytest.mark.parametrize("data,classes,reason", [
    ([], 10, "no records"),
    ([(np.zeros(4), 0), (np.zeros(5), 0)], 10, "record 1 has shape"),
    ([(np.zeros(4), 10)], 10, "label 10, outside 0..9"),
    ([(np.zeros(4), -1)], 10, "label -1"),
    ([(np.zeros(4), 0)], 0, "classes must be a positive int"),
])
def test_dataset_claim_refuses_inconsistent_records(data, classes, reason):
    with pytest.raises(LaminateError, match=reason):
        measure.dataset_claim("train", data, classes)


def test_config_claim_digest_is_order_independent_and_canonical():
    a = measure.config_claim({"lr": 0.1, "epochs": 3, "layers": (64, 10)})
    b = measure.config_claim({"layers": [64, 10], "epochs": 3, "lr": 0.1})
    assert a == b
    assert a["config"]["layers"] == [64, 10]
    assert a["config_sha256"] == hashlib.sha256(cbor.dumps(a["config"])).hexdigest()
    assert measure.config_claim({"lr": 0.2})["config_sha256"] != \
        measure.config_claim({"lr": 0.1})["config_sha256"]
    with pytest.raises(LaminateError, match="expected a mapping"):
        measure.config_claim([1, 2])


def test_code_claim_covers_the_wrapper_packages(tmp_path):
    claim = measure.code_claim()
    files = claim["wrapper_files"]
    for required in ("attest/session.py", "attest/measure.py", "cards/card.py",
                     "enclave_sim/device.py"):
        assert files[required] == measure.file_sha256(REPO / required)
    assert not any(path.startswith("verifier/") for path in files)
    assert list(files) == sorted(files)
    assert claim["wrapper_sha256"] == hashlib.sha256(cbor.dumps(files)).hexdigest()
    assert claim["entry_point"] is None

    script = tmp_path / "train_me.py"
    script.write_text("print('hi')\n")
    with_entry = measure.code_claim(script)
    assert with_entry["entry_point"]["sha256"] == hashlib.sha256(b"print('hi')\n").hexdigest()
    assert with_entry["entry_point"]["path"].endswith("train_me.py")
    # The identity a policy pins does not depend on the driving script.
    assert with_entry["wrapper_sha256"] == claim["wrapper_sha256"]
    with pytest.raises(LaminateError, match="cannot read"):
        measure.code_claim(tmp_path / "missing.py")


def test_code_identity_is_stable_across_processes():
    out = subprocess.run([sys.executable, "-c", "from attest.measure import code_claim;"
                          "print(code_claim()['wrapper_sha256'])"],
                         capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == measure.code_claim()["wrapper_sha256"]


def test_file_sha256_streams_large_files(tmp_path):
    path = tmp_path / "blob"
    data = np.random.default_rng(1).bytes(3 * (1 << 20) + 5)
    path.write_bytes(data)
    assert measure.file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_model_claim_reads_the_real_graph(tmp_path):
    path = make_onnx_model(tmp_path / "m.onnx", features=12, classes=3)
    claim = measure.model_claim(path, "tiny")
    assert claim == {
        "name": "tiny", "format": "onnx", "sha256": measure.file_sha256(path),
        "size": path.stat().st_size, "parameters": 12 * 3 + 3, "opset": 17,
        "inputs": [{"name": "input", "shape": ["batch", 12], "dtype": "float32"}],
        "outputs": [{"name": "logits", "shape": ["batch", 3], "dtype": "float32"}],
    }
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((2, 12), np.float32)})[0].shape == (2, 3)


def test_model_claim_excludes_initializers_listed_as_inputs(tmp_path):
    import onnx
    path = make_onnx_model(tmp_path / "m.onnx", features=4, classes=2)
    model = onnx.load(str(path))
    model.graph.input.append(onnx.helper.make_tensor_value_info("W", onnx.TensorProto.FLOAT, [4, 2]))
    onnx.save(model, str(path))
    assert [i["name"] for i in measure.model_claim(path, "m")["inputs"]] == ["input"]


def test_model_claim_refuses_what_is_not_onnx(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\x00not a model" * 10)
    with pytest.raises(LaminateError, match="garbage.onnx: not an ONNX model"):
        measure.model_claim(garbage, "g")
    with pytest.raises(LaminateError, match="cannot read"):
        measure.model_claim(tmp_path / "absent.onnx", "g")


def test_measure_bench_quick_writes_results(tmp_path):
    out = tmp_path / "measure.json"
    run = subprocess.run([sys.executable, str(REPO / "bench" / "measure.py"), "--quick",
                          "--out", str(out)], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "floor sha256" in run.stdout and "ratio" in run.stdout
    result = json.loads(out.read_text())
    for case in ("small", "large"):
        figures = result["cases"][case]
        assert figures["merkle_MBps"] > 0 and figures["floor_MBps"] > 0
        assert figures["ratio_vs_floor"] == pytest.approx(
            figures["merkle_s"] / figures["floor_sha256_s"])
