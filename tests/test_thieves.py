"""Extraction thieves on small digits setups: each does what its red-team row says.

Equation solving must recover a softmax victim's function from its probability API
(Tramèr et al.), exactly, from d + 1 answers; adaptive retraining and Knockoff
extraction must spend exactly their query budget through the label-only API."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from redteam import suspects as sus  # noqa: E402
from redteam import thieves as th  # noqa: E402


@pytest.fixture(scope="module")
def part():
    return sus.digits_partition(0)


@pytest.fixture(scope="module")
def softmax_victim(part):
    return sus.fit(sus.build_arch("linear", 0), part.x_victim, part.y_victim, epochs=8, seed=0)


def test_equation_solving_recovers_a_softmax_victim(tmp_path, part, softmax_victim):
    """Through the released ONNX file's probability API, 65 = 8x8 + 1 answers pin the
    weights: the copy's probabilities equal the victim's (up to float32 rounding)."""
    api = sus.LogitsApi(sus.export_onnx(softmax_victim, tmp_path / "victim.onnx"))
    stolen = sus.solve_equations(api, part.x_pool, budget=65, seed=1)
    assert stolen.queries == api.queries == 65
    gap = np.abs(sus.probabilities(stolen.model, part.x_test)
                 - sus.probabilities(softmax_victim, part.x_test)).max()
    assert gap < 1e-3, f"equation solving: probabilities differ by {gap:.2g} from the victim's"


def test_equation_solving_is_not_exact_with_too_few_answers(part, softmax_victim):
    """Fewer answers than unknowns leave the system underdetermined: the check above
    could fail, so it tests the solve, not the data."""
    stolen = sus.solve_equations(lambda x: sus.probabilities(softmax_victim, x), part.x_pool,
                                 budget=20, seed=1)
    gap = np.abs(sus.probabilities(stolen.model, part.x_test)
                 - sus.probabilities(softmax_victim, part.x_test)).max()
    assert gap > 1e-2


def test_equation_solving_fits_a_non_softmax_victim(part):
    """Against an MLP the solve is a linear fit of its log-odds: a usable copy, not exact."""
    mlp = sus.fit(sus.build_arch("mlp", 0), part.x_victim, part.y_victim, epochs=8, seed=0)
    stolen = sus.solve_equations(lambda x: sus.probabilities(mlp, x), part.x_pool,
                                 budget=1000, seed=2)
    agree = np.mean(sus.probabilities(stolen.model, part.x_test).argmax(1)
                    == sus.probabilities(mlp, part.x_test).argmax(1))
    assert 0.8 < agree < 1.0, f"fidelity {agree:.3f}"


def test_knockoff_spends_its_budget_in_and_out_of_distribution(part, softmax_victim):
    api = sus.LabelApi(type("S", (), {"predict": staticmethod(
        lambda x: sus.probabilities(softmax_victim, x).argmax(1))})())
    for kind in ("in", "ood"):
        before = api.queries
        copy = th.knockoff(api, part.x_pool, budget=300, kind=kind, arch="mlp", shape=(1, 8, 8),
                           classes=10, epochs=3, seed=3)
        assert api.queries - before == 300, f"knockoff-{kind}: queries"
        assert isinstance(copy, torch.nn.Module)
    ood = th.queries(part.x_pool, 300, "ood", 3)
    rows = {r.tobytes() for r in part.x_pool}
    assert not any(q.tobytes() in rows for q in ood), "out-of-distribution queries reuse a record"


def test_adaptive_retraining_on_mnist_shaped_inputs():
    """Adaptive retraining builds its copy in the thief's input shape (not only 8x8)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (200, 1, 28, 28)).astype(np.float32)
    api = sus.LabelApi(type("S", (), {"predict": staticmethod(
        lambda q: (q.reshape(len(q), -1).mean(1) * 20).astype(int) % 10)})())
    stolen = sus.extract_labels(api, x, budget=120, arch="mlp", epochs=2, seed=1)
    assert api.queries == stolen.queries == 120
    assert stolen.model(torch.as_tensor(x[:2])).shape == (2, 10)
