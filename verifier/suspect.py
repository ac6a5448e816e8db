"""The suspect model, seen the way an arbiter sees a deployed model: labels only.

An ownership test must work against a model the claimant does not control, so the only
thing we ask of a suspect is the predicted label for a batch of inputs: either by running
an ONNX file locally (onnxruntime, CPU) or by calling an HTTP prediction endpoint that
returns labels. Scores or logits are never needed, which keeps the test usable against
black-box APIs.
"""
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol

import numpy as np

from cards.errors import LaminateError


class Suspect(Protocol):
    """Anything that returns one integer label per input row."""

    name: str
    batch_size: int

    def predict(self, x: np.ndarray) -> np.ndarray:
        """One integer label per row of ``x``."""


class OnnxSuspect:
    """An ONNX classifier run with onnxruntime on CPU; the label is the argmax of the first
    output (or that output itself when it is already a vector of integer labels)."""

    batch_size = 64

    def __init__(self, path):
        import onnxruntime  # imported here: only ONNX suspects need it

        self.path = Path(path)
        self.name = str(path)
        if not self.path.is_file():
            raise LaminateError(f"{path}: suspect model file not found")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = onnxruntime.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise LaminateError(f"{path}: not a loadable ONNX model ({_first_line(exc)})") from exc
        first = self._session.get_inputs()[0]
        self._input = first.name
        self._input_shape = first.shape

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The model's labels for ``x``; raises LaminateError when the triggers do not
        fit the model's input shape, inference fails, or the output has the wrong length."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        expected = self._input_shape[1:]
        if len(expected) != x.ndim - 1 or any(
                isinstance(d, int) and d != got for d, got in zip(expected, x.shape[1:])):
            raise LaminateError(
                f"{self.name}: model input {self._input!r} expects shape "
                f"[batch, {', '.join(str(d) for d in expected)}], the triggers have "
                f"{list(x.shape[1:])}")
        try:
            scores = self._session.run(None, {self._input: x})[0]
        except Exception as exc:
            raise LaminateError(f"{self.name}: inference failed ({_first_line(exc)})") from exc
        scores = np.asarray(scores)
        if scores.ndim == 1 and np.issubdtype(scores.dtype, np.integer):
            return _labels(scores, len(x), self.name)  # the model already outputs labels
        return _labels(scores.argmax(axis=-1), len(x), self.name)


class HttpSuspect:
    """A prediction endpoint: POST {"inputs": [...]} as JSON, answer {"labels": [int, ...]}.

    The endpoint may be hostile (it is the suspect): its answer is read up to a bound and
    parsed without letting deep nesting escape as a traceback."""

    batch_size = 8
    max_answer_bytes = 1 << 20

    def __init__(self, url: str, *, timeout: float = 30.0):
        if not url.startswith(("http://", "https://")):
            raise LaminateError(f"{url}: suspect URL must start with http:// or https://")
        self.name = url
        self.url = url
        self.timeout = timeout

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The endpoint's labels for ``x``; raises LaminateError when the endpoint is
        unreachable, answers an HTTP error, more than max_answer_bytes, or anything but
        {"labels": [int, ...]} of the right length."""
        body = json.dumps({"inputs": np.asarray(x, dtype=np.float32).tolist()}).encode()
        request = urllib.request.Request(
            self.url, data=body, method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read(self.max_answer_bytes + 1)
        except urllib.error.HTTPError as exc:
            raise LaminateError(f"{self.url}: suspect endpoint answered HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise LaminateError(f"{self.url}: suspect endpoint unreachable ({reason})") from exc
        if len(raw) > self.max_answer_bytes:
            raise LaminateError(f"{self.url}: suspect endpoint answered more than "
                                f"{self.max_answer_bytes} bytes for {len(x)} labels")
        try:
            answer = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise LaminateError(f"{self.url}: suspect endpoint did not answer JSON") from exc
        if not isinstance(answer, dict) or "labels" not in answer:
            raise LaminateError(f'{self.url}: labels: the answer must be an object with "labels"')
        labels = answer["labels"]
        if not isinstance(labels, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in labels):
            raise LaminateError(f"{self.url}: labels: expected a list of integers")
        return _labels(np.asarray(labels, dtype=np.int64), len(x), self.url)


def open_suspect(spec: str) -> Suspect:
    """An HTTP(S) URL opens an endpoint; anything else is an ONNX file path."""
    spec = str(spec)
    if spec.startswith(("http://", "https://")):
        return HttpSuspect(spec)
    return OnnxSuspect(spec)


def _labels(labels: np.ndarray, expected: int, name: str) -> np.ndarray:
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != expected:
        raise LaminateError(f"{name}: labels: expected {expected} labels, got {labels.shape[0]}")
    return labels.astype(np.int64)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
