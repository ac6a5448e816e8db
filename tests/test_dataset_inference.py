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
    private, public = rng.normal(0, 1, (80, 6)), rng.normal(0.4, 1, (80, 6))
    r = di.fit(private[:40], public[:40])
    result = di.test(r, private[40:], public[40:])
    ref = stats.ttest_ind(r.score(public[40:]), r.score(private[40:]), equal_var=False,
                          alternative="greater")
    assert result.p_value == pytest.approx(ref.pvalue, rel=1e-8)
    assert result.mean_public > result.mean_private


def test_regressor_learns_the_owner_split_and_not_noise():
    """The authors' regressor: private -> -1, public -> +1; a shift in the held-out
    records is found, the same distribution on both sides is not."""
    rng = np.random.default_rng(3)
    private, public = rng.normal(0, 1, (400, 9)), rng.normal(0.5, 1, (400, 9))
    r = di.fit(private[:200], public[:200])
    assert r.score(private[:200]).mean() < 0 < r.score(public[:200]).mean()
    assert di.test(r, private[200:], public[200:]).p_value < 1e-6, "shift not found"
    same = rng.normal(0, 1, (200, 9))
    assert di.test(r, private[200:], same).p_value > 1e-3, "flagged two samples of one law"


def test_p_at_m_is_the_harmonic_mean_of_draws_and_falls_with_m():
    rng = np.random.default_rng(4)
    private, public = rng.normal(0, 1, (300, 6)), rng.normal(0.4, 1, (300, 6))
    r = di.fit(private[:150], public[:150])
    p10 = di.p_at_m(r, private[150:], public[150:], 10, repeats=1, seed=5)
    pick = np.random.default_rng(5).permutation(150)[:10]
    assert p10 == pytest.approx(di.welch(r.score(public[150:][pick]),
                                         r.score(private[150:][pick])).p_value)
    assert di.p_at_m(r, private[150:], public[150:], 150) < di.p_at_m(r, private[150:],
                                                                      public[150:], 10)
    with pytest.raises(ValueError, match="m must be 2..150"):
        di.p_at_m(r, private[150:], public[150:], 151)


def _max_pixel(threshold):
    """Label 1 once any pixel exceeds `threshold`: the L-inf distance is threshold - v."""
    def predict(x):
        return (x.reshape(len(x), -1).max(axis=1) > threshold).astype(np.int64)
    return predict


def test_blind_walk_measures_the_distance_to_the_label_change():
    predict = _max_pixel(0.6)
    x = np.full((6, 2, 4), 0.2, dtype=np.float32)
    x[3:] = 0.5
    y = predict(x)
    features = di.blind_walk(predict, x, y, k=4, seed=0)
    assert features.shape == (6, 12), "3 noise kinds x k directions per record"
    linf = features[:, :4]            # uniform noise, measured in L-inf
    gap = np.repeat([0.4, 0.1], 3)[:, None]
    assert np.all(linf > gap - 1e-6), "no walk can change the label before moving a pixel by the gap"
    assert np.all(linf[3:].max() < linf[:3].min()), "records nearer the boundary must flip sooner"
    assert np.all(features[3:].mean(axis=0) < features[:3].mean(axis=0))
    again = di.blind_walk(predict, x, y, k=4, seed=0)
    assert np.array_equal(features, again), "the same seed must walk the same directions"
    assert not np.array_equal(features, di.blind_walk(predict, x, y, k=4, seed=1))


def test_blind_walk_caps_a_walk_that_never_changes_the_label():
    def constant(x):
        return np.zeros(len(x), dtype=np.int64)

    x = np.full((2, 5), 0.5, dtype=np.float32)
    features = di.blind_walk(constant, x, np.zeros(2, dtype=np.int64), k=1, seed=0, steps=3)
    assert np.all(features[:, 0] <= 0.5 + 1e-6), "the walk stays inside [0, 1]"
    assert np.all(features > 0)


def test_mingd_finds_the_distance_to_a_linear_boundary():
    """Two classes split by w.x = b: the exact L2 distance is |w.x - b| / |w|_2 and the
    L-inf one |w.x - b| / |w|_1; MinGD's steps overshoot by at most one step."""
    rng = np.random.default_rng(2)
    w, b = rng.normal(0, 1, 16), 0.0
    x = (0.5 + rng.uniform(-0.1, 0.1, (5, 16))).astype(np.float32)
    x -= (np.outer((x @ w - b) / (w @ w), w) * 0.6).astype(np.float32)   # nearer the line

    def logits(v):
        return np.stack([np.zeros(len(v)), v.reshape(len(v), -1) @ w - b], axis=1)

    def predict(v):
        return logits(v).argmax(axis=1)

    def gradient(v, target):
        sign = np.where(target == 1, 1.0, -1.0)
        return sign[:, None] * np.tile(w, (len(v), 1))   # d(target - max) / dx on the path

    features = di.mingd(gradient, predict, x, classes=2, steps=400,
                        alpha={np.inf: 0.002, 2: 0.01, 1: 0.05})
    margin = np.abs(x @ w - b)
    exact_inf, exact_2 = margin / np.abs(w).sum(), margin / np.linalg.norm(w)
    assert features.shape == (5, 6), "3 norms x 2 target classes, sorted per norm"
    assert np.allclose(features[:, 0], 0), "the record's own class is reached at once"
    assert np.all(features[:, 1] >= exact_inf - 1e-6) and np.all(features[:, 1] <= exact_inf + 0.002 + 1e-6)
    assert np.all(features[:, 3] >= exact_2 - 1e-6) and np.all(features[:, 3] <= exact_2 + 0.01 + 1e-6)


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
                                 independent_models=10, true_positive_rate=0.3, stolen_models=10)
    assert not j.won and j.reason.startswith("ownership:")
    assert "cannot make it win" in text and "90% of 10 independent models" in text
    assert "30% of 10 stolen copies" in text, "the verdict must say what the evidence is worth"
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
    assert "independent same-distribution models" in ok.stdout and "stolen copies" in ok.stdout
    x[7, 0] = 1.0 - x[7, 0]      # tamper: one private record the session never measured
    np.savez(tmp_path / "forged.npz", x=x, y=y)
    bad = _cli(kit.card_path, "--model", kit.model_path, "--train", tmp_path / "forged.npz", *common)
    assert bad.returncode == 2 and "claims.dataset.train.merkle_root" in bad.stderr, bad.stderr
    other = cardkit.make_onnx_model(tmp_path / "other.onnx", seed=5)
    wrong = _cli(kit.card_path, "--model", other, "--train", tmp_path / "train.npz", *common)
    assert wrong.returncode == 2 and "claims.model.sha256" in wrong.stderr
    assert "Traceback" not in bad.stderr + wrong.stderr


def test_notebook_layout_pools_consecutive_records_into_one_row():
    """What the bench measures as the authors' notebook layout: each row holds one norm's
    values of (norms x directions) consecutive records, not one record's features."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from di_study import notebook_rows

    records = np.arange(60, dtype=np.float64)[:, None]
    features = records * 10 + np.arange(6)          # record r, column c -> 10 r + c
    rows = notebook_rows(features)
    assert rows.shape == (60, 6)
    assert list(rows[0]) == [0, 10, 20, 30, 40, 50], "row 0: column 0 of records 0..5"
    assert list(rows[-1]) == [10 * r + 5 for r in range(54, 60)], "last row: last column"


def test_regressor_steps_match_the_authors_torch_loop():
    """Five full-batch SGD steps on -mean((2y - 1) * tanh-MLP(x)), as the authors' notebook
    runs them in torch, land on the same weights as the numpy fit."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    private, public = rng.normal(0, 1, (30, 6)), rng.normal(0.3, 1, (30, 6))
    start = di.fit(private, public, epochs=0, seed=9)
    ours = di.fit(private, public, epochs=5, seed=9)
    lin1, lin2 = torch.nn.Linear(6, 100).double(), torch.nn.Linear(100, 1).double()
    with torch.no_grad():
        lin1.weight.copy_(torch.from_numpy(start.w1.T))
        lin1.bias.copy_(torch.from_numpy(start.b1))
        lin2.weight.copy_(torch.from_numpy(start.w2[None, :]))
        lin2.bias.fill_(start.b2)
    model = torch.nn.Sequential(lin1, torch.nn.ReLU(), lin2, torch.nn.Tanh())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.from_numpy(start._z(np.vstack([private, public])))
    y = torch.cat([torch.zeros(30), torch.ones(30)]).double()
    for _ in range(5):
        opt.zero_grad()
        (-((2 * y - 1) * model(x).squeeze(-1)).mean()).backward()
        opt.step()
    assert np.allclose(lin1.weight.detach().numpy().T, ours.w1, atol=1e-12), "first layer differs"
    assert np.allclose(lin2.weight.detach().numpy()[0], ours.w2, atol=1e-12), "second layer differs"
    assert lin2.bias.item() == pytest.approx(ours.b2, abs=1e-12)
