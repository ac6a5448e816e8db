"""The two architectures a config can name, built from the dataset's shape.

Both use only layers Opacus computes per-sample gradients for (no BatchNorm) and that
export to plain ONNX, so the same model trains with or without DP and ships as ONNX.
"""
from __future__ import annotations

import math

from torch import nn

from cards.errors import LaminateError


def mlp(input_shape: tuple[int, ...], classes: int, hidden: list[int]) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def cnn(input_shape: tuple[int, ...], classes: int, hidden: list[int]) -> nn.Module:
    """Two conv+pool blocks, then dense layers of widths `hidden`; needs (C, H, W), H, W >= 4."""
    shape = (1, *input_shape) if len(input_shape) == 2 else tuple(input_shape)
    if len(shape) != 3 or min(shape[1:]) < 4:
        raise LaminateError(
            f"model.arch: cnn needs image inputs shaped (channels, height, width) of at least 4x4, got {list(input_shape)}")
    channels, height, width = shape
    # (n, H, W) inputs get their channel axis inside the model, so ONNX takes them as given.
    layers: list[nn.Module] = [nn.Unflatten(1, (1, height))] if len(input_shape) == 2 else []
    layers += [
        nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
    ]
    return nn.Sequential(*layers, *mlp((32, height // 4, width // 4), classes, hidden)[1:])


def build(arch: str, input_shape: tuple[int, ...], classes: int, hidden: list[int]) -> nn.Module:
    """The model a config names; weights drawn from torch's RNG (seed it first)."""
    if arch == "mlp":
        return mlp(input_shape, classes, hidden)
    if arch == "cnn":
        return cnn(input_shape, classes, hidden)
    raise LaminateError(f"model.arch: unknown architecture {arch!r} (mlp or cnn)")
