"""Watermark: seed and salt come from the attestation module, the card gets only the
commitment, the opening regenerates exactly the trained triggers, and the schedules
behave as published (joint+DP loses the watermark, split keeps it)."""
import numpy as np
import pytest
import torch

from attest import datasets as ds
from attest.config import from_dict
from attest.defenses import watermark as wm
from attest.models import build
from attest.sim_backend import SimBackend
from attest.train import Trainer, predict_labels
from cards import watermark as scheme

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    return SimBackend(tmp_path_factory.mktemp("sim"))


@pytest.fixture(scope="module")
def digits_split():
    return ds.split(ds.load_digits(), 0.2, 0)


def make(backend, **kw):
    args = dict(trigger_count=100, classes=10, input_shape=(1, 8, 8), schedule="joint",
                weight=0.25, split_epochs=10)
    return wm.create(backend, **{**args, **kw})


def test_opening_opens_the_claimed_commitment_and_regenerates_the_triggers(backend, tmp_path):
    mark = make(backend)
    claim = mark.claim()
    assert claim == {"scheme": scheme.SCHEME, "commitment": mark.opening.commitment,
                     "trigger_count": 100, "classes": 10, "schedule": "joint"}
    assert mark.opening.seed.hex() not in repr(claim) and mark.opening.salt.hex() not in repr(claim)
    path = mark.opening.save(tmp_path / "w.opening")
    assert path.stat().st_mode & 0o777 == 0o600
    opened = scheme.Opening.load(path)
    assert opened.matches(claim["commitment"])
    x, y = opened.triggers()
    assert np.array_equal(x, mark.x) and np.array_equal(y, mark.y)
    assert x.shape == (100, 1, 8, 8) and x.min() >= 0.0 and x.max() <= 1.0
    assert mark.opening.parameters["value_range"] == [0.0, 1.0]


def test_each_session_draws_a_fresh_seed(backend):
    a, b = make(backend), make(backend)
    assert a.opening.seed != b.opening.seed and a.opening.salt != b.opening.salt
    assert a.opening.commitment != b.opening.commitment
    assert not np.array_equal(a.y, b.y)


def test_cycling_sampler_covers_every_trigger_before_repeating():
    sampler = wm.CyclingSampler(10, seed=0)
    first = sampler.take(10)
    assert sorted(first.tolist()) == list(range(10))
    more = sampler.take(25)
    assert len(more) == 25 and sorted(more[:10].tolist()) == list(range(10))
    assert wm.CyclingSampler(10, seed=0).take(7).tolist() == first[:7].tolist()


def test_per_batch_share(backend):
    mark = make(backend, weight=0.25)
    assert mark.per_batch(64) == 16 and make(backend, weight=0.01).per_batch(8) == 1


def train(backend, train_set, config, arch="mlp", hidden=(128,)):
    config = from_dict({"dataset": {"name": "digits"}, **config})
    w = config["watermark"]
    mark = make(backend, schedule=w["schedule"], weight=w["weight"], split_epochs=w["split_epochs"],
                trigger_count=w["trigger_count"], input_shape=train_set.input_shape)
    torch.manual_seed(0)
    model = build(arch, train_set.input_shape, 10, list(hidden))
    trainer = Trainer(model, train_set, config, mark, lambda line: None)
    module = trainer.run()
    return trainer, mark, mark.accuracy(lambda x: predict_labels(module, x))


@pytest.mark.slow
def test_joint_without_dp_embeds_the_watermark(backend, digits_split):
    _, mark, acc = train(backend, digits_split[0], {
        "training": {"epochs": 15, "optimizer": "adam", "lr": 0.005},
        "watermark": {"enabled": True}})
    assert acc >= 0.9


@pytest.mark.slow
def test_dp_joint_loses_the_watermark_and_split_restores_it(backend, digits_split):
    base = {"training": {"epochs": 15, "optimizer": "adam", "lr": 0.005},
            "dp": {"enabled": True, "target_epsilon": 3.0}}
    joint, _, joint_acc = train(backend, digits_split[0], {**base, "watermark": {"enabled": True}})
    split, _, split_acc = train(backend, digits_split[0],
                                {**base, "watermark": {"enabled": True, "schedule": "split"}})
    assert joint_acc < 0.5 < 0.9 <= split_acc
    assert split.split_records == 100
    # The DP phase's accounting is untouched by the non-DP phase that followed it.
    assert split.dp.steps == joint.dp.steps == 15 * 23


@pytest.mark.slow
def test_split_phase_after_dp_sgd_keeps_a_cnn_from_collapsing(backend):
    """A large DP-SGD learning rate is safe on clipped gradients; the non-DP phase reuses
    it, and its first unclipped gradients on random-label triggers once blew the CNN's
    weights up to a constant (chance-level) output."""
    train_set, test_set = ds.split(ds.load_mnist_5k(), 0.2, 0)
    train_set = train_set.subset("mnist-5k:train", np.random.default_rng(0).permutation(len(train_set))[:1000])
    trainer, mark, wm_acc = train(backend, train_set, {
        "training": {"epochs": 5, "optimizer": "sgd", "lr": 0.5},
        "dp": {"enabled": True, "target_epsilon": 3.0},
        "watermark": {"enabled": True, "schedule": "split", "split_epochs": 25}}, arch="cnn", hidden=(64,))
    module = trainer.model
    assert np.mean(predict_labels(module, test_set.x) == test_set.y) > 0.6
    assert wm_acc > 0.5, wm_acc
