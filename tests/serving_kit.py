"""A real digits victim behind `serve-model`, for the serving tests (no torch).

The victim and every thief or independent model are one-hidden-layer networks on the
8x8 digits (64 features in [0, 1]) exported to ONNX as Gemm/Relu graphs, so the suspects go
through the same onnxruntime path an arbiter uses. The victim's card comes from the
card kit (the genuine prover path on a simulated device).
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

import cardkit
from cards import keys
from serving import deploy
from serving.app import Server, create_app
from serving.log import QueryLog
from verifier.policy import Policy

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab"}


@functools.lru_cache(maxsize=1)
def digits():
    """(x, y) of all 1,797 digits in a fixed shuffled order, x float32 [n, 64] in [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.target))
    return (d.data[order] / 16.0).astype(np.float32), d.target[order].astype(np.int64)


def split():
    """victim training 0-499, test 500-796, the thief's 1,000 queries 797-1796."""
    x, y = digits()
    return (x[:500], y[:500]), (x[500:797], y[500:797]), (x[797:], y[797:])


@dataclass
class Net:
    """One hidden ReLU layer of random features, output layer fit by ridge regression in
    closed form: a second to train on a shared CPU, and wide enough (4,096) to memorise
    its training answers, flips included, as an extracted copy does."""
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray

    def predict(self, x):
        return (np.maximum(x @ self.w1 + self.b1, 0) @ self.w2).argmax(axis=1)


def fit(x, y, *, hidden=4096, seed=0, ridge=0.1, scale=0.25) -> Net:
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, scale, (x.shape[1], hidden)).astype(np.float32)
    b1 = (rng.normal(0, 0.5, hidden)).astype(np.float32)
    h = np.maximum(x @ w1 + b1, 0).astype(np.float64)
    w2 = h.T @ np.linalg.solve(h @ h.T + ridge * np.eye(len(x)), np.eye(10)[y])
    return Net(w1, b1, w2.astype(np.float32))


def export(net: Net, path) -> Path:
    """The network as ONNX logits: Gemm, Relu, Gemm."""
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n) for a, n in (
        (net.w1, "W1"), (net.b1, "b1"), (net.w2, "W2"), (np.zeros(10), "b2"))]
    nodes = [helper.make_node("Gemm", ["input", "W1", "b1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "b2"], ["logits"])]
    return cardkit.save_onnx_classifier(path, nodes, inits, input_shape=[64], classes=10,
                                        name="random-features")


@functools.lru_cache(maxsize=1)
def victim_model() -> Net:
    (x, y), _, _ = split()
    return fit(x, y, hidden=2048, seed=0, ridge=1.0, scale=0.125)


@dataclass
class Served:
    kit: object
    deployment: deploy.Deployment
    server: Server
    client: TestClient
    state: Path

    @property
    def policy(self):
        return Policy.load(self.kit.policy_path)

    def predict(self, x, token=TOKENS["alice"]):
        response = self.client.post("/v1/predict", json={"inputs": np.asarray(x).tolist()},
                                    headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        return response.json()


def make_kit(tmp_path, model=None, monkeypatch=None):
    """A card for the digits victim (or ``model``), sealed by the card kit."""
    model = model if model is not None else victim_model()
    original = cardkit.make_onnx_model
    cardkit.make_onnx_model = lambda path, **_: export(model, path)
    try:
        return cardkit.make_card(tmp_path)
    finally:
        cardkit.make_onnx_model = original


def serve(tmp_path, *, rate=0.05, probabilities=False, kit=None, plain=False) -> Served:
    kit = kit or make_kit(tmp_path / "kit")
    state = tmp_path / "state"
    state.mkdir(parents=True, exist_ok=True)
    deployment = deploy.start(kit.card_path, kit.model_path, kit.private_key, rate=rate,
                              probabilities=probabilities, sim_dir=kit.tmp_path / "sim",
                              state_dir=state)
    server = Server(deployment, QueryLog(state / "log.sqlite"), plain=plain)
    tokens = {hashlib.sha256(t.encode()).digest(): c for c, t in TOKENS.items()}
    return Served(kit, deployment, server, TestClient(create_app(server, tokens)), state)


def release_key(kit):
    return keys.load_private_key(kit.tmp_path / "release.key")
