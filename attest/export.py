"""Export the trained model to ONNX and prove the file computes what torch computed.

The card describes `model.onnx`, not the torch object, so before anything is sealed
onnxruntime must reproduce torch's outputs on real test inputs within `TOLERANCE`;
otherwise the claims (accuracy, watermark accuracy) would describe a different model.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from cards.errors import LaminateError

TOLERANCE = 1e-4
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module under an Opacus `GradSampleModule` (which adds hooks, not layers)."""
    while hasattr(model, "_module") and isinstance(model._module, torch.nn.Module):
        model = model._module
    return model


def export_onnx(model: torch.nn.Module, example: np.ndarray, path: Path) -> Path:
    """Write a single-file ONNX model with a dynamic batch dimension."""
    module = unwrap(model).eval()
    sample = torch.from_numpy(np.ascontiguousarray(example[:2], dtype=np.float32))
    batch = torch.export.Dim("batch", min=1)
    path = Path(path)
    # The exporter logs optional-operator notices (e.g. torchvision absent) that are not ours.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, (sample,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},), external_data=False, verbose=False)
    program.save(str(path), external_data=False)
    return path


def check_onnx(model: torch.nn.Module, path: Path, inputs: np.ndarray) -> float:
    """Max |onnxruntime - torch| over `inputs`; raises if above `TOLERANCE`."""
    import onnxruntime as ort

    x = np.ascontiguousarray(inputs, dtype=np.float32)
    module = unwrap(model).eval()
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    if got.shape != expected.shape:
        raise LaminateError(f"{path}: onnxruntime output shape {got.shape} != torch {expected.shape}")
    diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
    if not diff <= TOLERANCE:
        raise LaminateError(f"{path}: onnxruntime differs from torch by {diff:.3g} > {TOLERANCE} on test inputs; refusing to seal")
    return diff


def export_checked(model: torch.nn.Module, inputs: np.ndarray, path: Path, check_records: int = 256) -> float:
    """Export, then check against torch on up to `check_records` inputs; returns max diff."""
    export_onnx(model, inputs, path)
    return check_onnx(model, path, inputs[:check_records])
