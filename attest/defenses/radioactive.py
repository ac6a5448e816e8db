"""Radioactive data (Sablayrolles et al., ICML 2020), marked and measured in the session.

`create` is the one entry point: it draws the seed from the attested session, derives the
carriers and the records to mark (cards.radioactive), trains a marking network on the
clean train split, and marks the chosen records by the paper's loss, minimised over an
L-infinity ball of radius `epsilon` around each record:

    -(phi(x') - phi(x)) . u_y  +  l_ft ||phi(x') - phi(x)||^2  +  l_img ||x' - x||^2

(phi: the marking network's penultimate features, u_y: the carrier of the record's
class). Training then sees the train split with those records replaced. After export,
`measure` runs both of the paper's tests on the released model:
  white-box: the final layer's class weights, mapped into the marking feature space by
    the least-squares alignment of the two networks' features on the test split, against
    the carriers (cosines, exact p-value: cards.radioactive);
  black-box: the loss difference Szyller and Asokan report, the released ONNX model's
    mean cross-entropy on the clean originals of the marked records minus that on their
    marked versions (positive: the model has learned the marks).
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from attest import datasets as ds
from cards import radioactive as scheme
from cards.errors import LaminateError

OPENING_NAME = "radioactive.opening"
MARKED_NAME = "radioactive.npy"       # the marked records, in the opening's index order
LAMBDA_FT, LAMBDA_IMG = 0.01, 0.0005        # the paper's defaults for the two penalties
MARK_STEP = 1 / 6          # Adam step on the perturbation, as a share of epsilon


def _features(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """(everything before the final linear layer, that layer) of a Sequential model."""
    if not isinstance(model, nn.Sequential) or not isinstance(model[-1], nn.Linear):
        raise LaminateError("radioactive: needs a Sequential model ending in a Linear layer "
                            "(its inputs are the feature space the carriers live in)")
    return model[:-1], model[-1]


def _embed(features: nn.Module, x: np.ndarray) -> np.ndarray:
    features.eval()
    with torch.no_grad():
        return np.concatenate([features(torch.from_numpy(x[i:i + 1024])).double().numpy()
                               for i in range(0, len(x), 1024)])


def _train_marker(model: nn.Module, train: ds.ArrayData, epochs: int, seed: int) -> nn.Module:
    """A fresh copy of the architecture trained on the clean split (Adam, batch 64); the
    global torch RNG is left as it was, so the released model's training is unchanged."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        marker = copy.deepcopy(model)
        for layer in marker.modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
        opt = torch.optim.Adam(marker.parameters(), lr=1e-3)
        x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
        marker.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(x)).split(64):
                opt.zero_grad()
                nn.functional.cross_entropy(marker(x[idx]), y[idx]).backward()
                opt.step()
    marker.eval()
    for p in marker.parameters():
        p.requires_grad_(False)
    return marker


def mark(features: nn.Module, x: np.ndarray, carriers: np.ndarray, *, epsilon: float,
         steps: int) -> np.ndarray:
    """The marked versions of `x` (float32, within `epsilon` of x and in [0, 1]); `carriers`
    holds the carrier of each record's class, one row per record."""
    x0 = torch.from_numpy(x)
    u = torch.from_numpy(carriers).float()
    with torch.no_grad():
        ft0 = features(x0)
    delta = torch.zeros_like(x0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=epsilon * MARK_STEP)
    for _ in range(steps):
        xm = (x0 + delta).clamp(0.0, 1.0)
        shift = features(xm) - ft0
        loss = (-(shift * u).sum(1) + LAMBDA_FT * shift.pow(2).sum(1)
                + LAMBDA_IMG * (xm - x0).flatten(1).pow(2).sum(1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            delta.clamp_(-epsilon, epsilon)
    marked = (x0 + delta.detach()).clamp(0.0, 1.0).numpy()
    return np.clip(marked, x - np.float32(epsilon), x + np.float32(epsilon)).astype(np.float32)


def onnx_losses(model_path, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-record cross-entropy of the exported ONNX model's logits (float64)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    logits = np.concatenate([session.run(None, {name: x[i:i + 512]})[0]
                             for i in range(0, len(x), 512)]).astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(y)), y]


def cosines(model: nn.Module, marker_features: nn.Module, carriers: np.ndarray,
            x: np.ndarray) -> np.ndarray:
    """Per class, the cosine between the model's class weights in the marking feature space
    (least-squares feature alignment on `x`, with an offset) and the class's carrier."""
    features, head = _features(model)
    phi_m, phi_t = _embed(marker_features, x), _embed(features, x)
    design = np.hstack([phi_m, np.ones((len(x), 1))])
    align = np.linalg.lstsq(design, phi_t, rcond=None)[0][:-1]      # d_m x d_t
    weights = head.weight.detach().double().numpy() @ align.T       # classes x d_m
    norms = np.linalg.norm(weights, axis=1) * np.linalg.norm(carriers, axis=1)
    return np.sum(weights * carriers, axis=1) / np.maximum(norms, 1e-300)


@dataclass
class Radioactive:
    opening: scheme.Opening
    carriers: np.ndarray
    indices: np.ndarray
    marker: nn.Module
    clean_x: np.ndarray
    marked_x: np.ndarray
    marked_y: np.ndarray
    train: ds.ArrayData          # the train split with the marked records in place
    settings: dict

    def save(self, out_dir) -> None:
        """The opening (0600) and the marked records, before the card is sealed, like the
        watermark's opening: a lost opening is a lost mark."""
        from attest.defenses.adversarial import save

        self.opening.save(Path(out_dir) / OPENING_NAME)
        save(Path(out_dir) / MARKED_NAME, self.marked_x)

    def measure(self, module: nn.Module, test: ds.ArrayData, model_path) -> dict:
        """The `defenses.radioactive` claim, both tests run on the released model."""
        from attest.measure import dataset_claim

        cos = cosines(module, _features(self.marker)[0], self.carriers, test.x)
        loss_diff = float(np.mean(onnx_losses(model_path, self.clean_x, self.marked_y))
                          - np.mean(onnx_losses(model_path, self.marked_x, self.marked_y)))
        params = self.opening.parameters
        root = dataset_claim("radioactive", zip(self.marked_x, self.marked_y), params["classes"])
        return {
            "scheme": scheme.SCHEME, "commitment": self.opening.commitment,
            "carriers_sha256": scheme.carriers_digest(self.carriers),
            "classes": params["classes"], "feature_dim": params["feature_dim"],
            "fraction": float(self.settings["fraction"]), "marked_records": params["marked_records"],
            "epsilon": float(self.settings["epsilon"]), "marking_steps": int(self.settings["steps"]),
            "marking_epochs": int(self.settings["marking_epochs"]),
            "marked_merkle_root": root["merkle_root"], "test": "white-box-cosine-fisher",
            "alignment_records": int(len(test)), "cosines": [float(c) for c in cos],
            "p_value": scheme.combined_p_value(cos, params["feature_dim"]),
            "loss_difference": loss_diff,
        }


def create(session, section: dict, model: nn.Module, train: ds.ArrayData) -> Radioactive:
    """Draw seed and salt from the attested session, train the marking network and mark
    round(fraction x records) train records (config section `radioactive`)."""
    dim = _features(model)[1].in_features
    seed, salt = session.random(scheme.SEED_BYTES), session.random(scheme.SALT_BYTES)
    count = scheme.marked_count(section["fraction"], len(train))
    params = scheme.make_parameters(train.classes, dim, len(train), count)
    opening = scheme.Opening(seed, salt, params)
    carriers = opening.carriers()
    indices = opening.marked_indices()
    marker_seed = int.from_bytes(hashlib.sha256(b"marking network" + seed).digest()[:8], "big")
    marker = _train_marker(model, train, section["marking_epochs"], marker_seed)
    clean_x, y = train.x[indices], train.y[indices]
    marked_x = mark(_features(marker)[0], clean_x, carriers[y], epsilon=section["epsilon"],
                    steps=section["steps"])
    x = train.x.copy()
    x[indices] = marked_x
    marked_train = ds.ArrayData(train.name, x, train.y, train.classes, train.preprocessing)
    return Radioactive(opening, carriers, indices, marker, clean_x, marked_x, y, marked_train,
                       dict(section))
