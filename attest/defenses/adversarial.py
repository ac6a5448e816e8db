"""Adversarial training with PGD (Madry et al.), and its claim measured on the released model.

Training replaces (a share of) each batch with its L-infinity PGD version. After export,
the same attack, seeded from the attested session's randomness so the prover cannot pick
a weak draw, runs against the released weights on the test split; the adversarial
examples are committed by Merkle root (the dataset leaf encoding), and the adversarial
accuracy is the share of them the exported ONNX model still labels correctly. A verifier
given those examples and the test split re-checks, without torch, that each one lies in
the committed epsilon ball of its test record and that the ONNX model's accuracy on them
is the claimed figure (verifier.adversarial); what it cannot re-check without gradients
is that no stronger attack exists, so the figure is an upper bound on robust accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cards.files import write_atomic

EXAMPLES_NAME = "adversarial.npy"
VALUE_RANGE = (0.0, 1.0)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float, step_size: float,
        steps: int, generator: torch.Generator) -> torch.Tensor:
    """L-infinity PGD with a uniform random start, clipped to the input range; the model's
    parameters get no gradient and its train/eval mode is left as it was."""
    loss_fn = nn.CrossEntropyLoss()
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1
    adv = (x + epsilon * noise).clamp(*VALUE_RANGE).detach()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = loss_fn(model(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + step_size * grad.sign()
        adv = torch.min(torch.max(adv, x - epsilon), x + epsilon).clamp(*VALUE_RANGE).detach()
    return adv


@dataclass
class Adversarial:
    """The attack settings (config section `adversarial`) and the session-drawn seeds."""

    epsilon: float
    step_size: float
    steps: int
    train_fraction: float
    train_seed: int
    attack_seed: bytes

    def perturb(self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """The batch with its first `train_fraction` share replaced by PGD examples."""
        k = round(self.train_fraction * len(xb))
        if k == 0:
            return xb
        was_training = model.training
        model.eval()       # attack the function being trained, not its dropout/batch-norm noise
        generator = torch.Generator().manual_seed(self.train_seed)
        self.train_seed += 1
        adv = pgd(model, xb[:k], yb[:k], epsilon=self.epsilon, step_size=self.step_size,
                  steps=self.steps, generator=generator)
        model.train(was_training)
        return torch.cat([adv, xb[k:]])

    def measure(self, module: nn.Module, test, predict, out_dir: Path) -> dict:
        """Attack `module` on `test` (ArrayData) with the session seed, write the examples
        beside the model, and return the `defenses.adversarial` claim with the accuracy
        `predict` (the exported ONNX model) gives on them."""
        from attest.measure import dataset_claim

        generator = torch.Generator().manual_seed(int.from_bytes(self.attack_seed[:8], "big"))
        module.eval()
        chunks = []
        for i in range(0, len(test), 256):
            x = torch.from_numpy(test.x[i:i + 256])
            y = torch.from_numpy(test.y[i:i + 256])
            chunks.append(pgd(module, x, y, epsilon=self.epsilon, step_size=self.step_size,
                              steps=self.steps, generator=generator).numpy())
        examples = np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
        # Rounding to float32 can step a hair outside the ball; pull it back in.
        examples = np.clip(examples, test.x - np.float32(self.epsilon),
                           test.x + np.float32(self.epsilon)).clip(*VALUE_RANGE).astype(np.float32)
        save(Path(out_dir) / EXAMPLES_NAME, examples)
        root = dataset_claim("adversarial", zip(examples, test.y), test.classes)["merkle_root"]
        return {
            "method": "pgd", "norm": "linf", "epsilon": float(self.epsilon),
            "step_size": float(self.step_size), "steps": int(self.steps),
            "train_fraction": float(self.train_fraction), "attack_seed": self.attack_seed.hex(),
            "examples_merkle_root": root,
            "adversarial_accuracy": float(np.mean(predict(examples) == test.y)),
            "test_records": int(len(test)),
        }


def save(path: Path, examples: np.ndarray) -> Path:
    """The adversarial examples as one .npy array (float32, the test split's order)."""
    import io

    buffer = io.BytesIO()
    np.save(buffer, examples, allow_pickle=False)
    write_atomic(path, buffer.getvalue())
    return path


def create(session, section: dict, *, seed: int) -> Adversarial:
    """Settings from the config's `adversarial` section; the evaluation attack's seed
    comes from the attested session, the training attack's from the training seed."""
    return Adversarial(epsilon=section["epsilon"], step_size=section["step_size"],
                       steps=section["steps"], train_fraction=section["train_fraction"],
                       train_seed=seed * 1_000_003 + 7, attack_seed=session.random(32))
