"""Adversarial training: the verifier's re-check of the claim on the ONNX model (without
torch), each of its tamper cases, and one real attested run."""
import numpy as np
import pytest

import cardkit
from verifier import adversarial
from verifier.result import AFFIRMING, CONTRAINDICATED

EPS = 0.1


def _predictor(path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input": x})[0].argmax(axis=1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A real ONNX model, a test split, examples within EPS and the claims that commit them."""
    tmp = tmp_path_factory.mktemp("adv")
    predict = _predictor(cardkit.make_onnx_model(tmp / "model.onnx"))
    rng = np.random.default_rng(3)
    x = rng.random((40, cardkit.FEATURES), dtype=np.float32)
    y = predict(x).astype(np.int64)
    y[::4] = (y[::4] + 1) % cardkit.CLASSES             # some records the model gets wrong
    examples = np.clip(x + rng.uniform(-EPS, EPS, x.shape).astype(np.float32), 0, 1)
    examples = np.clip(examples, x - np.float32(EPS), x + np.float32(EPS)).astype(np.float32)
    claim = {**cardkit.ADVERSARIAL, "epsilon": EPS, "test_records": len(x),
             "examples_merkle_root": adversarial.records_root(examples, y),
             "adversarial_accuracy": float(np.mean(predict(examples) == y))}
    claims = {"defenses": {"dp": None, "watermark": None, "adversarial": claim},
              "dataset": {"test": {"records": len(x), "merkle_root": adversarial.records_root(x, y)}}}
    return predict, x, y, examples, claims


def _check(setup, *, claims=None, x=None, examples=None):
    predict, tx, ty, ex, cl = setup
    return adversarial.check(claims or cl, predict=predict, test_x=tx if x is None else x,
                             test_y=ty, examples=ex if examples is None else examples)


def test_honest_claim_is_re_measured(setup):
    result = _check(setup)
    assert result.status == AFFIRMING, result
    assert result.field == "claims.defenses.adversarial.adversarial_accuracy"


def test_claimed_accuracy_higher_than_measured(setup):
    claims = {**setup[4], "defenses": {"adversarial": {**setup[4]["defenses"]["adversarial"]}}}
    claims["defenses"]["adversarial"]["adversarial_accuracy"] += 0.1
    result = _check(setup, claims=claims)
    assert (result.status, result.field) == (CONTRAINDICATED,
                                             "claims.defenses.adversarial.adversarial_accuracy")


def test_example_outside_the_epsilon_ball(setup):
    """Tamper: examples committed by a prover who let the attack wander past epsilon."""
    _, x, y, examples, claims = setup
    wide = examples.copy()
    wide[5, 3] = np.float32(min(1.0, x[5, 3] + 0.3)) if x[5, 3] < 0.7 else np.float32(x[5, 3] - 0.3)
    forged = {**claims, "defenses": {"adversarial": {
        **claims["defenses"]["adversarial"], "examples_merkle_root": adversarial.records_root(wide, y)}}}
    result = _check(setup, claims=forged, examples=wide)
    assert (result.status, result.field) == (CONTRAINDICATED, "claims.defenses.adversarial.epsilon")


def test_examples_swapped_for_easier_ones(setup):
    """Tamper: the clean test inputs handed in as the 'adversarial' examples."""
    result = _check(setup, examples=setup[1].copy())
    assert (result.status, result.field) == (CONTRAINDICATED,
                                             "claims.defenses.adversarial.examples_merkle_root")


def test_another_test_split(setup):
    result = _check(setup, x=setup[1][::-1].copy())
    assert (result.status, result.field) == (CONTRAINDICATED, "claims.dataset.test.merkle_root")


def test_records_root_is_the_dataset_claims_root():
    """One leaf encoding: the verifier's root equals the prover's dataset claim root."""
    from attest.measure import dataset_claim

    rng = np.random.default_rng(0)
    x, y = rng.random((7, 3, 4), dtype=np.float32), np.arange(7) % 3
    assert adversarial.records_root(x, y) == dataset_claim("t", zip(x, y), 3)["merkle_root"]


@pytest.mark.slow
def test_attested_run_with_pgd_training(tmp_path):
    """A real run: the claim is sealed, PGD lowers accuracy, and the verifier re-check
    affirms it on the exported model and the examples written beside it."""
    import yaml

    from attest import datasets as ds
    from attest.train import _onnx_predictor, train_from_config
    from cards import keys

    keys.save_private_key(keys.generate_private_key("ed25519"), tmp_path / "k.pem")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "dataset": {"name": "digits"}, "training": {"epochs": 2, "lr": 0.5},
        "adversarial": {"enabled": True, "epsilon": 0.2, "step_size": 0.05, "steps": 3},
        "attestation": {"backend": "sim", "sim_dir": str(tmp_path / "sim")},
        "release_key": str(tmp_path / "k.pem")}))
    result = train_from_config(tmp_path / "c.yaml", tmp_path / "out", progress=lambda _: None)
    claim = result.claims["defenses"]["adversarial"]
    assert claim["steps"] == 3 and claim["epsilon"] == 0.2
    assert claim["adversarial_accuracy"] < result.claims["evaluation"]["accuracy"]
    _, test = ds.split(ds.load_digits(), 0.2, 0)
    examples = np.load(tmp_path / "out" / "adversarial.npy")
    check = adversarial.check(result.claims, predict=_onnx_predictor(result.model_path),
                              test_x=test.x, test_y=test.y, examples=examples)
    assert check.status == AFFIRMING, check


def _cli(*args):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-m", "laminate", "adversarial", *map(str, args)],
                          cwd=root, capture_output=True, text=True, timeout=120)


def test_cli_re_measures_a_sealed_card_and_refuses_tampered_examples(tmp_path):
    """`laminate adversarial` on a card sealed with the kit: exit 0 for the committed
    examples, 1 for examples moved past epsilon, 2 for a missing file."""
    from attest.measure import dataset_claim

    records = list(cardkit.fake_records(cardkit.TEST_RECORDS, seed=2))
    x = np.stack([r for r, _ in records]).astype(np.float32)
    y = np.array([c for _, c in records], dtype=np.int64)
    predict = _predictor(cardkit.make_onnx_model(tmp_path / "probe.onnx"))
    rng = np.random.default_rng(5)
    examples = np.clip(x + rng.uniform(-EPS, EPS, x.shape), 0, 1).astype(np.float32)
    examples = np.clip(examples, x - np.float32(EPS), x + np.float32(EPS)).astype(np.float32)
    claim = {"epsilon": EPS, "adversarial_accuracy": float(np.mean(predict(examples) == y)),
             "examples_merkle_root": dataset_claim("e", zip(examples, y), 10)["merkle_root"]}
    config = {**cardkit.CONFIG, "dp": {"enabled": False},
              "adversarial": {"enabled": True, "epsilon": EPS, "step_size": 0.025, "steps": 10,
                              "train_fraction": 1.0}}
    kit = cardkit.make_card(tmp_path / "kit", dp=None, adversarial=claim, config=config)
    np.savez(tmp_path / "test.npz", x=x, y=y)
    np.save(tmp_path / "adv.npy", examples)
    common = ["--model", kit.model_path, "--test", tmp_path / "test.npz"]
    ok = _cli(kit.card_path, *common, "--examples", tmp_path / "adv.npy")
    assert ok.returncode == 0 and "adversarial_accuracy: affirming" in ok.stdout, ok.stdout + ok.stderr
    far = examples.copy()
    far[0] = np.where(x[0] > 0.5, 0.0, 1.0)
    np.save(tmp_path / "far.npy", far)
    bad = _cli(kit.card_path, *common, "--examples", tmp_path / "far.npy")
    assert bad.returncode == 1 and "examples_merkle_root" in bad.stdout, bad.stdout
    missing = _cli(kit.card_path, *common, "--examples", tmp_path / "none.npy")
    assert missing.returncode == 2 and "none.npy: examples file not found" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_card_view_shows_the_adversarial_claim(tmp_path):
    from cards import views
    from cards.card import open_card

    kit = cardkit.make_card(tmp_path, dp=None, adversarial={"adversarial_accuracy": 0.62})
    markdown = views.to_markdown(open_card(kit.card_bytes).payload)
    assert "## Adversarial training" in markdown and "| adversarial accuracy | 0.62 |" in markdown
