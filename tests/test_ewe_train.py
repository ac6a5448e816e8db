"""An EWE victim trained through the wrapper on digits: a copy stolen by extraction is
shown, a model trained independently is not, and `laminate ownership` agrees."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from attest.backend import open_backend
from attest.train import train
from cards import keys
from cards.ewe import load_opening
from redteam import thieves as th
from verifier.ownership import ownership_test

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


class Suspect:
    batch_size = 100
    name = "torch"

    def __init__(self, model):
        self.model = model

    def predict(self, x):
        return th.predict(self.model, x)


@pytest.fixture(scope="module")
def victim(tmp_path_factory):
    from attest.datasets import load_digits

    tmp = tmp_path_factory.mktemp("ewe")
    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data))
    test, victim_idx, pool = order[:360], order[360:1080], order[1080:]
    config = {"name": "v", "dataset": {"name": "digits", "classes": 10},
              "model": {"arch": "mlp", "hidden": [64]},
              "training": {"epochs": 12, "batch_size": 64, "lr": 1e-2, "optimizer": "adam", "seed": 0},
              "watermark": {"enabled": True, "scheme": "ewe", "trigger_count": 100},
              "attestation": {"backend": "sim", "sim_dir": str(tmp / "sim")}}
    torch.manual_seed(0)
    model = th.fresh("mlp", (1, 8, 8), 10, 0)
    backend = open_backend("sim", sim_dir=tmp / "sim")
    try:
        result = train(model, (data.x[victim_idx], data.y[victim_idx]), (data.x[test], data.y[test]),
                       config, out_dir=tmp / "run", backend=backend,
                       release_key=keys.generate_private_key("ed25519"), progress=lambda _l: None)
    finally:
        backend.close()
    model.eval()
    return result, model, data.x[pool], data.y[pool], data.x[test], data.y[test]


def test_card_claims_ewe_and_cli_shows_the_victim(victim):
    result = victim[0]
    claim = result.claims["defenses"]["watermark"]
    assert claim["scheme"] == "laminate-ewe-v1" and claim["keys"] == 10
    assert claim["train_root"] == result.claims["dataset"]["train"]["merkle_root"]
    out = subprocess.run([sys.executable, "-m", "laminate", "ownership", "--card", str(result.card_path),
                          "--opening", str(result.opening_path), "--suspect", str(result.model_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "exact conditional p-value" in out.stdout


def test_extracted_copy_is_shown_independent_is_not(victim):
    result, model, x_pool, y_pool, x_test, y_test = victim
    opening = load_opening(result.opening_path)
    claim = result.claims["defenses"]["watermark"]
    half = len(x_pool) // 2
    stolen = th.knockoff(lambda x: th.predict(model, x), x_pool[:half], budget=10000, kind="in",
                         arch="mlp", shape=(1, 8, 8), classes=10, epochs=10, seed=1)
    accuracy = float(np.mean(th.predict(stolen, x_test) == y_test))
    assert accuracy >= 0.9 * result.claims["evaluation"]["accuracy"]
    shown = ownership_test(opening, claim, Suspect(stolen), alpha=1e-6)
    assert shown.shown, shown.to_text()
    independent = th.fit(th.fresh("mlp", (1, 8, 8), 10, 9), x_pool[half:], y_pool[half:], epochs=10, seed=9)
    assert not ownership_test(opening, claim, Suspect(independent), alpha=1e-6).shown
