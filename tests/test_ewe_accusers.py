"""EWE false accusers (redteam.ewe_accusers) against a small digits model: each is
stopped by the dispute check its row names, and the post-hoc ones show why those checks
exist (the exact test alone is fooled by records chosen after seeing the suspect)."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from cards import ewe  # noqa: E402
from enclave_sim.device import SeededRandom  # noqa: E402
from redteam import accusers as acc  # noqa: E402
from redteam import ewe_accusers as ewe_acc  # noqa: E402
from redteam import suspects as sus  # noqa: E402
from verifier.ownership import ownership_test  # noqa: E402

pytestmark = pytest.mark.slow
PARAMS = ewe.make_parameters(10, 10, 10, [1, 8, 8], [0.0, 1.0], 3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    part = sus.digits_partition(0)
    model = sus.fit(sus.build_arch("mlp", 0), part.x_victim, part.y_victim, epochs=5, seed=0)
    path = sus.export_onnx(model, tmp_path_factory.mktemp("acc") / "suspect.onnx")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return part, model, path, digest


class Torch:
    batch_size = 100
    name = "torch"

    def __init__(self, model):
        self.model = model

    def predict(self, x):
        return sus.probabilities(self.model, x).argmax(1)


def _judge(claim, world):
    part, _, path, digest = world
    log = acc.DisputeLog()
    log.observe(digest)
    if claim.card_bytes is None:                  # the accuser commits after seeing it
        log.append("commitment", claim.opening.commitment)
    return acc.judge(claim, path, digest, log, policy=None, alpha=1e-6)


def test_chosen_records_fool_the_test_alone_but_not_the_order(world):
    part, model, _, _ = world
    log = acc.DisputeLog()
    claim = ewe_acc.chosen_records(Torch(model), PARAMS, part.x_pool, part.y_pool, log,
                                   SeededRandom(b"chosen"))
    presented = claim.presented
    assert presented.records_problem(presented.train_root, presented.train_records) is None
    alone = ownership_test(presented, acc.alone_claim(presented, None), Torch(model), alpha=1e-6)
    # Positions and records picked for the suspect's answers: far below any honest p-value.
    assert alone.p_value < 1e-3, alone.reason
    judged = _judge(claim, world)
    assert judged.verdict == "not shown"
    assert not judged.checks["card"][0] and not judged.checks["order"][0], judged.checks


def test_invented_opening_is_stopped_by_the_test(world):
    part, model, _, _ = world
    claim = ewe_acc.wrong_opening(b"", PARAMS, part.x_pool, part.y_pool, SeededRandom(b"w"))
    presented = claim.presented
    alone = ownership_test(presented, acc.alone_claim(presented, None), Torch(model), alpha=1e-6)
    assert not alone.shown, "an invented EWE opening showed ownership of an innocent model"


def test_ground_seeds_stay_below_alpha(world):
    part, model, _, _ = world
    claim = ewe_acc.ground_seed(Torch(model), PARAMS, b"", part.x_pool, part.y_pool, 20,
                                SeededRandom(b"g"))
    presented = claim.presented
    alone = ownership_test(presented, acc.alone_claim(presented, None), Torch(model), alpha=1e-6)
    assert not alone.shown and "best of 20" in claim.description


def test_adversarial_records_stay_within_eps_and_in_their_own_tree(world):
    part, model, _, _ = world
    surrogate = sus.fit(sus.build_arch("linear", 1), part.x_pool, part.y_pool, epochs=3, seed=1)
    rand = SeededRandom(b"adv")
    claim = ewe_acc.adversarial([surrogate], PARAMS, part.x_pool, part.y_pool, acc.DisputeLog(),
                                eps=0.25, steps=3, rand=rand)
    presented = claim.presented
    assert presented.records_problem(presented.train_root, presented.train_records) is None
    original = ewe_acc.invented(PARAMS, part.x_pool, part.y_pool, SeededRandom(b"adv"))
    assert np.abs(presented.features - original.features).max() <= 0.25 + 1e-6
    assert not np.array_equal(presented.features, original.features)
