"""Child process that runs one suspect ONNX model for ``verifier.suspect.OnnxSuspect``.

Usage: ``python -m verifier.onnx_worker MODEL.onnx MEMORY_MB``. The address space is
limited before onnxruntime loads, so a model that allocates without bound fails here,
not in the arbiter's process. Frames on stdin/stdout: requests are an 8-byte big-endian
length and an ``.npy`` array; answers are one status byte (``o`` ok, ``e`` error), an
8-byte length and either ``.npy`` scores or an error message. The first answer describes
the model's input (or says why it cannot be used).
"""
import io
import json
import resource
import struct
import sys


def _answer(ok: bool, data: bytes) -> None:
    sys.stdout.buffer.write((b"o" if ok else b"e") + struct.pack(">Q", len(data)) + data)
    sys.stdout.buffer.flush()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _open(path: str):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ValueError(f"not a loadable ONNX model ({_first_line(exc)})") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise ValueError(f"the model must take exactly one input (the batch of images); "
                         f"it takes {len(inputs)}")
    if not outputs:
        raise ValueError("the model has no outputs")
    shape = [d if isinstance(d, int) else str(d) for d in (inputs[0].shape or [])]
    if len(shape) < 2:
        raise ValueError(f"model input {inputs[0].name!r} must be [batch, ...], got {shape}")
    return session, inputs[0].name, shape


def _read(size: int) -> bytes:
    data = sys.stdin.buffer.read(size)
    if len(data) != size:
        raise EOFError
    return data


def main(path: str, memory_mb: int) -> None:
    limit = memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import numpy as np

    try:
        session, name, shape = _open(path)
    except (ValueError, MemoryError) as exc:
        _answer(False, str(exc).encode())
        return
    _answer(True, json.dumps({"input": name, "shape": shape}).encode())
    while True:
        try:
            size = struct.unpack(">Q", _read(8))[0]
            x = np.load(io.BytesIO(_read(size)), allow_pickle=False)
        except EOFError:
            return
        try:
            scores = np.asarray(session.run(None, {name: x})[0])
        except MemoryError:
            _answer(False, b"out of memory")
            continue
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            _answer(False, _first_line(exc).encode())
            continue
        if scores.dtype == object:
            _answer(False, b"the first output is not a numeric tensor")
            continue
        out = io.BytesIO()
        np.save(out, scores, allow_pickle=False)
        _answer(True, out.getvalue())


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
