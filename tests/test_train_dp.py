"""DP-SGD: the claim is what Opacus did (parameters, steps counted, its epsilon), the
epsilon is reproducible from the claimed parameters alone, and a split schedule is
marked as not tight."""
import pytest
import torch

from attest import datasets as ds
from attest.config import from_dict
from attest.defenses.dp import DPTraining, dp_note
from attest.models import build
from attest.train import Trainer
from cards.errors import LaminateError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits_split():
    return ds.split(ds.load_digits(), 0.2, 0)


def run(train, config: dict, mark=None):
    config = from_dict({"dataset": {"name": "digits"}, **config})
    torch.manual_seed(config["training"]["seed"])
    model = build("mlp", train.input_shape, 10, [32])
    lines = []
    trainer = Trainer(model, train, config, mark, lines.append)
    module = trainer.run()
    return trainer, module, lines


@pytest.mark.slow
def test_target_epsilon_claim_matches_opacus_and_recomputes(digits_split):
    from opacus.accountants.analysis import rdp as analysis
    from opacus.accountants.rdp import RDPAccountant

    train, _ = digits_split
    trainer, module, lines = run(train, {"training": {"epochs": 2, "optimizer": "adam", "lr": 0.005},
                                         "dp": {"enabled": True, "target_epsilon": 3.0}})
    claim = trainer.dp.claim(tight=True, note="n")
    assert claim["accountant"] == "rdp" and claim["mechanism"] == "dp-sgd"
    assert claim["sample_rate"] == pytest.approx(1 / 23)          # ceil(1437 / 64) batches
    assert claim["steps"] == 2 * 23                               # every optimizer step counted
    assert claim["max_grad_norm"] == 1.0 and claim["delta"] == 1e-5
    # Calibrated for the whole run: the spent epsilon lands just under the target.
    assert 2.5 < claim["epsilon"] <= 3.0
    # Recomputed from the claimed parameters alone, with the accountant's public analysis.
    rdp = analysis.compute_rdp(q=claim["sample_rate"], noise_multiplier=claim["noise_multiplier"],
                               steps=claim["steps"], orders=RDPAccountant.DEFAULT_ALPHAS)
    eps, _ = analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=claim["delta"])
    assert eps == pytest.approx(claim["epsilon"], rel=1e-9)
    assert any("epsilon" in line for line in lines) and lines[-1].startswith("[dp] epoch 2/2")
    # The released module is the plain user module, free of Opacus hooks.
    assert type(module) is torch.nn.Sequential
    assert not any(hasattr(p, "grad_sample") for p in module.parameters())


@pytest.mark.slow
def test_noise_multiplier_is_used_as_given_and_runs_are_deterministic(digits_split):
    train, _ = digits_split
    config = {"training": {"epochs": 1, "seed": 3}, "dp": {"enabled": True, "noise_multiplier": 2.5}}
    first, m1, _ = run(train, config)
    second, m2, _ = run(train, config)
    assert first.dp.noise_multiplier == 2.5
    assert first.dp.claim(tight=True, note="")["epsilon"] > 0
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    third, m3, _ = run(train, {**config, "training": {"epochs": 1, "seed": 4}})
    assert not all(torch.equal(a, b) for a, b in zip(m1.parameters(), m3.parameters()))


def test_claim_refuses_a_step_count_the_accountant_did_not_see(digits_split):
    train, _ = digits_split
    model = build("mlp", train.input_shape, 10, [8])
    loader = torch.utils.data.DataLoader(train.to_torch(), batch_size=64)
    dp = DPTraining(model, torch.optim.SGD(model.parameters(), lr=0.1), loader,
                    {"target_epsilon": None, "noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5},
                    epochs=1)
    assert dp.epsilon() == 0.0
    dp.steps = 5                                 # claimed steps without noisy steps taken
    with pytest.raises(LaminateError, match="defenses.dp.steps"):
        dp.claim(tight=True, note="")


def test_notes_say_what_epsilon_covers():
    assert "every batch" in dp_note(opacus_version="1.6", watermark="joint")
    split = dp_note(opacus_version="1.6", watermark="split", split_records=100, split_epochs=10)
    assert "DP phase only" in split and "100 training records" in split and "10 epochs" in split
    assert "RDP" in dp_note(opacus_version="1.6", watermark=None)



def test_ewe_notes_say_the_watermark_records_are_not_covered():
    """EWE watermark inputs are training records: a joint note that said the epsilon
    covers the training records (as for data-independent triggers) would be false."""
    joint = dp_note(opacus_version="1.6", watermark="joint", ewe_records=400)
    assert "not for those 400" in joint and "data-independent" not in joint
    split = dp_note(opacus_version="1.6", watermark="split", split_records=100, split_epochs=5,
                    ewe_records=400)
    assert "stamped copies of 400 training records" in split and "DP phase only" in split
