"""Dataset inference: its statistics, private-record proofs, and that the dispute rule
never lets it decide."""
import numpy as np
import pytest

from cards import merkle
from verifier import dataset_inference as di
from verifier.disputes import Judgement, add_dataset_inference


@pytest.mark.parametrize("t, df", [(0.3, 4), (2.5, 12.5), (-1.7, 30), (8.0, 200), (40.0, 900)])
def test_student_t_tail_matches_scipy(t, df):
    stats = pytest.importorskip("scipy.stats")
    assert di.student_t_sf(t, df) == pytest.approx(stats.t.sf(t, df), rel=1e-9, abs=1e-300)


def test_welch_test_matches_scipy_and_sees_a_shift():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    private, public = rng.normal(0, 1, (80, 6)), rng.normal(0.4, 1, (70, 6))
    d = di.fit(private, public)
    result = di.test(d, private, public)
    ref = stats.ttest_ind(d.score(public), d.score(private), equal_var=False, alternative="greater")
    assert result.p_value == pytest.approx(ref.pvalue, rel=1e-8)
    assert result.p_value < 1e-3 and result.mean_public > result.mean_private


def test_walk_counts_steps_to_the_label_change():
    """A threshold model on the mean pixel: every walk ends where the mean crosses 0.5."""
    def predict(x):
        return (x.reshape(len(x), -1).mean(axis=1) > 0.5).astype(np.int64)

    x = np.full((4, 8), 0.2, dtype=np.float32)
    x[2:] = 0.45
    y = predict(x)
    features = di.walk_features(predict, x, y, directions=2, seed=0)
    assert features.shape == (4, 6)
    assert np.all(features[2:] <= features[:2]), "records nearer the boundary flip sooner"


def test_private_records_are_proved_against_the_train_root():
    rng = np.random.default_rng(1)
    x, y = rng.random((9, 5), dtype=np.float32), np.arange(9) % 3
    leaves = [di.record_leaf(r, int(c)) for r, c in zip(x, y)]
    claim = {"merkle_root": merkle.root_of(leaves).hex(), "records": 9}
    idx = [1, 4, 8]
    proofs = [merkle.inclusion_proof(leaves, i) for i in idx]
    assert di.prove_private(claim, x[idx], y[idx], idx, proofs) is None
    forged = x[idx].copy()
    forged[1, 0] += 0.5          # tamper: a record the model never trained on
    assert "private record 1 (train index 4)" in di.prove_private(claim, forged, y[idx], idx, proofs)


def _judgement(won: bool) -> Judgement:
    checks = {c: (True, "ok") for c in ("card", "start", "order", "opening", "ownership")}
    if not won:
        checks["ownership"] = (False, "watermark not shown")
    return Judgement(checks)


def test_dataset_inference_alone_never_convicts():
    j = _judgement(won=False)
    text = add_dataset_inference(j, 1e-30, alpha=1e-3, false_positive_rate=0.9,
                                 independent_models=10)
    assert not j.won and j.reason.startswith("ownership:")
    assert "cannot make it win" in text and "90% of 10 independent models" in text
    assert j.supplementary == [text]


def test_dataset_inference_never_acquits_a_watermark_win():
    j = _judgement(won=True)
    add_dataset_inference(j, 0.7, alpha=1e-3, false_positive_rate=0.0, independent_models=10)
    assert j.won


def _cli(*args):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-m", "laminate", "dataset-inference", *map(str, args)],
                          cwd=root, capture_output=True, text=True, timeout=300)


def test_cli_checks_the_training_split_and_never_claims_to_decide(tmp_path):
    """The arbiter's command: the owner's records must be the card's training split
    (Merkle root) and its model the card's; the answer carries the measured FPR."""
    import cardkit

    kit = cardkit.make_card(tmp_path / "kit")
    train = list(cardkit.fake_records(cardkit.TRAIN_RECORDS, seed=1))
    x = np.stack([r for r, _ in train]).astype(np.float32)
    y = np.array([c for _, c in train])
    np.savez(tmp_path / "train.npz", x=x, y=y)
    public = list(cardkit.fake_records(40, seed=9))
    np.savez(tmp_path / "public.npz", x=np.stack([r for r, _ in public]),
             y=np.array([c for _, c in public]))
    common = ["--public", tmp_path / "public.npz", "--suspect", kit.model_path,
              "--records", 10, "--directions", 1]
    ok = _cli(kit.card_path, "--model", kit.model_path, "--train", tmp_path / "train.npz", *common)
    assert ok.returncode in (0, 1), ok.stderr
    assert ok.stdout.startswith("dataset inference: p = ") and "not decisive" in ok.stdout
    x[7, 0] = 1.0 - x[7, 0]      # tamper: one private record the session never measured
    np.savez(tmp_path / "forged.npz", x=x, y=y)
    bad = _cli(kit.card_path, "--model", kit.model_path, "--train", tmp_path / "forged.npz", *common)
    assert bad.returncode == 2 and "claims.dataset.train.merkle_root" in bad.stderr, bad.stderr
    other = cardkit.make_onnx_model(tmp_path / "other.onnx", seed=5)
    wrong = _cli(kit.card_path, "--model", other, "--train", tmp_path / "train.npz", *common)
    assert wrong.returncode == 2 and "claims.model.sha256" in wrong.stderr
    assert "Traceback" not in bad.stderr + wrong.stderr
