"""The suspect model, seen the way an arbiter sees a deployed model: labels only.

An ownership test must work against a model the claimant does not control, so the only
thing we ask of a suspect is the predicted label for a batch of inputs: either by running
an ONNX file locally (onnxruntime, CPU) or by calling an HTTP prediction endpoint that
returns labels. Scores or logits are never needed, which keeps the test usable against
black-box APIs.
"""
import contextlib
import http.client
import io
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import weakref
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
    output (or that output itself when it is already a vector of integer labels).

    The model file is the suspect's, so it may be hostile (a Loop of 10^15 iterations,
    an op that allocates without bound): it runs in a child process
    (``verifier.onnx_worker``) under an address-space limit, and every answer is awaited
    against one deadline for the whole evaluation; past either bound the child is killed
    and the evaluation fails with one clean error."""

    batch_size = 64

    def __init__(self, path, *, time_limit_s: float = 120.0, memory_mb: int = 2048):
        self.path = Path(path)
        self.name = str(path)
        if not self.path.is_file():
            raise LaminateError(f"{path}: suspect model file not found")
        self.time_limit_s = float(time_limit_s)
        self._deadline = time.monotonic() + self.time_limit_s
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        self._child = subprocess.Popen(
            [sys.executable, "-m", "verifier.onnx_worker", str(self.path), str(int(memory_mb))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        self._finalizer = weakref.finalize(self, _kill, self._child)
        ok, hello = self._receive()
        if not ok:
            self.close()
            raise LaminateError(f"{path}: {hello.decode('utf-8', 'replace')}")
        info = json.loads(hello)
        self._input, self._input_shape = info["input"], info["shape"]

    @property
    def input_shape(self) -> list:
        """The model's input shape after the batch axis (ints, or names for free axes)."""
        return list(self._input_shape[1:])

    def close(self) -> None:
        self._finalizer()

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
        buffer = io.BytesIO()
        np.save(buffer, x, allow_pickle=False)
        self._send(buffer.getvalue())
        ok, answer = self._receive()
        if not ok:
            raise LaminateError(f"{self.name}: inference failed ({answer.decode('utf-8', 'replace')})")
        scores = np.load(io.BytesIO(answer), allow_pickle=False)
        if scores.ndim == 1 and np.issubdtype(scores.dtype, np.integer):
            return _labels(scores, len(x), self.name)  # the model already outputs labels
        if scores.ndim == 0 or not np.issubdtype(scores.dtype, np.number):
            raise LaminateError(f"{self.name}: the first output is not a score array or labels")
        return _labels(scores.argmax(axis=-1), len(x), self.name)

    def _send(self, data: bytes) -> None:
        stdin = self._child.stdin
        assert stdin is not None  # the child is always started with pipes
        try:
            stdin.write(struct.pack(">Q", len(data)) + data)
            stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise self._died() from None

    def _receive(self) -> tuple[bool, bytes]:
        head = self._read(9)
        status, size = head[:1], struct.unpack(">Q", head[1:])[0]
        return status == b"o", self._read(size)

    def _read(self, size: int) -> bytes:
        """Exactly ``size`` bytes from the child, or the child is killed at the deadline."""
        out = self._child.stdout
        assert out is not None  # the child is always started with pipes
        chunks, want = [], size
        while want:
            left = self._deadline - time.monotonic()
            if left <= 0 or not select.select([out], [], [], left)[0]:
                self.close()
                raise LaminateError(f"{self.name}: suspect evaluation exceeded its "
                                    f"{self.time_limit_s:g} s limit; stopped")
            chunk = os.read(out.fileno(), min(want, 1 << 20))
            if not chunk:
                raise self._died()
            chunks.append(chunk)
            want -= len(chunk)
        return b"".join(chunks)

    def _died(self) -> LaminateError:
        self.close()
        return LaminateError(f"{self.name}: the model's evaluation stopped (killed or out of "
                             f"memory: {self._child.returncode})")


def _kill(child) -> None:
    if child.poll() is None:
        child.kill()
    child.wait()
    for stream in (child.stdin, child.stdout):
        try:
            stream.close()
        except OSError:
            pass


class HttpSuspect:
    """A prediction endpoint: POST {"inputs": [...]} as JSON, answer {"labels": [int, ...]}.

    The endpoint may be hostile (it is the suspect): each request has one deadline for
    connecting, sending and reading the whole answer (a watchdog shuts the socket when
    it passes, so an endpoint dripping bytes cannot hold the caller), the answer is read
    up to a bound, and it is parsed without letting deep nesting or huge numbers escape
    as a traceback. Redirects are not followed."""

    batch_size = 8
    max_answer_bytes = 1 << 20
    max_label = (1 << 31) - 1

    def __init__(self, url: str, *, timeout: float = 30.0, total_s: float | None = None):
        if not url.startswith(("http://", "https://")):
            raise LaminateError(f"{url}: suspect URL must start with http:// or https://")
        parts = urllib.parse.urlsplit(url)
        if not parts.hostname:
            raise LaminateError(f"{url}: suspect URL names no host")
        self.name = url
        self.url = url
        self.timeout = timeout
        self._parts = parts
        # With ``total_s`` the whole evaluation (every batch) shares one deadline too.
        self._end = None if total_s is None else time.monotonic() + total_s

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The endpoint's labels for ``x``; raises LaminateError when the endpoint is
        unreachable, answers an HTTP error, more than max_answer_bytes, or anything but
        {"labels": [int, ...]} of the right length."""
        body = json.dumps({"inputs": np.asarray(x, dtype=np.float32).tolist()}).encode()
        raw = self._post(body)
        try:
            answer = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise LaminateError(f"{self.url}: suspect endpoint did not answer JSON") from exc
        if not isinstance(answer, dict) or "labels" not in answer:
            raise LaminateError(f'{self.url}: labels: the answer must be an object with "labels"')
        labels = answer["labels"]
        if not isinstance(labels, list) or not all(
                type(v) is int and 0 <= v <= self.max_label for v in labels):
            raise LaminateError(f"{self.url}: labels: expected a list of integers "
                                f"0..{self.max_label} (class indices)")
        return _labels(np.asarray(labels, dtype=np.int64), len(x), self.url)

    def _post(self, body: bytes) -> bytes:
        """The answer's bytes, all read before the one deadline."""
        parts = self._parts
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        try:
            conn = kind(parts.hostname or "", parts.port, timeout=self.timeout)
        except ValueError as exc:
            raise LaminateError(f"{self.url}: bad suspect URL ({exc})") from None
        expired = threading.Event()
        limit = self.timeout
        if self._end is not None:
            limit = min(limit, self._end - time.monotonic())
            if limit <= 0:
                raise LaminateError(f"{self.url}: suspect evaluation exceeded its time limit")

        sockets: list[socket.socket] = []  # kept here: http.client drops conn.sock once the answer starts

        def expire():
            expired.set()
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        watchdog = threading.Timer(limit, expire)
        watchdog.daemon = True
        watchdog.start()
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        try:
            conn.connect()
            sockets.append(conn.sock)
            if expired.is_set():
                raise OSError("deadline passed while connecting")
            conn.request("POST", target, body=body, headers={
                "Content-Type": "application/json", "Accept": "application/json"})
            response = conn.getresponse()
            if response.status != 200:
                raise LaminateError(f"{self.url}: suspect endpoint answered HTTP "
                                    f"{response.status} {response.reason[:100]}")
            raw = response.read(self.max_answer_bytes + 1)
        except (OSError, http.client.HTTPException) as exc:
            if expired.is_set():
                raise LaminateError(f"{self.url}: suspect endpoint did not answer within "
                                    f"{limit:.3g} s") from None
            raise LaminateError(f"{self.url}: suspect endpoint unreachable "
                                f"({_first_line(exc)})") from None
        finally:
            watchdog.cancel()
            conn.close()
        if expired.is_set():
            raise LaminateError(f"{self.url}: suspect endpoint did not answer within "
                                f"{limit:.3g} s")
        if len(raw) > self.max_answer_bytes:
            raise LaminateError(f"{self.url}: suspect endpoint answered more than "
                                f"{self.max_answer_bytes} bytes")
        return raw


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
