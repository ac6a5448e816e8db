"""Write-then-rename, so an interruption never leaves a truncated card, key or opening
where a good one was, and a secret is never readable by others, not even briefly."""
import contextlib
import os
from pathlib import Path

from .errors import LaminateError


def write_atomic(path, data: bytes, *, mode: int = 0o644) -> Path:
    """Write `data` to a temporary file beside `path` created with `mode`, flush it to
    disk, then rename it over `path`. Errors name the file (exit 2, no traceback)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # a stale temporary file keeps its old mode otherwise
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise LaminateError(f"{path}: cannot write: {exc.strerror or exc}") from None
    return path
