"""The service's settings, from `laminate serve` options or LAMINATE_* variables, and
its signing key file."""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cards import keys
from cards.errors import LaminateError

from .db import DEFAULT_DATABASE_URL


@dataclass
class ServiceConfig:
    database_url: str = DEFAULT_DATABASE_URL
    policy_path: str | None = None
    api_tokens: list = field(default_factory=list)
    key_path: str | None = None
    max_upload_mb: float = 64.0
    allow_prediction_urls: bool = False
    # Every suspect evaluation (an uploaded ONNX model runs in a child process, a
    # prediction URL is queried batch by batch) stops at these bounds.
    suspect_seconds: float = 30.0
    suspect_memory_mb: int = 2048
    # The log's own Ed25519 signed-note key (checkpoints), whatever the service key is.
    log_key_path: str | None = None
    # Log writes are batched: one transaction every interval, or sooner at this size.
    log_batch_interval: float = 0.02
    log_batch_size: int = 256

    @classmethod
    def from_env(cls, env=None) -> ServiceConfig:
        env = os.environ if env is None else env
        tokens = [t.strip() for t in env.get("LAMINATE_API_TOKEN", "").split(",") if t.strip()]
        try:
            max_mb = float(env.get("LAMINATE_MAX_UPLOAD_MB", "64"))
        except ValueError:
            raise LaminateError("LAMINATE_MAX_UPLOAD_MB: expected a number of megabytes") from None
        if max_mb <= 0:
            raise LaminateError("LAMINATE_MAX_UPLOAD_MB: must be positive")
        try:
            suspect_seconds = float(env.get("LAMINATE_SUSPECT_SECONDS", "30"))
        except ValueError:
            raise LaminateError("LAMINATE_SUSPECT_SECONDS: expected a number of seconds") from None
        if not 0 < suspect_seconds <= 3600:
            raise LaminateError("LAMINATE_SUSPECT_SECONDS: expected 0 < seconds <= 3600")
        try:
            interval = float(env.get("LAMINATE_LOG_BATCH_MS", "20")) / 1000
            batch = int(env.get("LAMINATE_LOG_BATCH_SIZE", "256"))
        except ValueError:
            raise LaminateError("LAMINATE_LOG_BATCH_MS / LAMINATE_LOG_BATCH_SIZE: expected "
                                "numbers") from None
        check_batching(interval, batch)
        return cls(
            log_key_path=env.get("LAMINATE_LOG_KEY") or None,
            log_batch_interval=interval,
            log_batch_size=batch,
            database_url=env.get("LAMINATE_DATABASE_URL") or DEFAULT_DATABASE_URL,
            policy_path=env.get("LAMINATE_POLICY") or None,
            api_tokens=tokens,
            key_path=env.get("LAMINATE_SERVICE_KEY") or None,
            max_upload_mb=max_mb,
            allow_prediction_urls=env.get("LAMINATE_ALLOW_PREDICTION_URLS", "") in ("1", "true", "yes"),
            suspect_seconds=suspect_seconds,
        )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def check_batching(interval: float, batch: int) -> None:
    if not 0 < interval <= 10:
        raise LaminateError(f"log batch interval: expected 0 < ms <= 10000, got {interval * 1000:g}")
    if not 1 <= batch <= 65_536:
        raise LaminateError(f"log batch size: expected 1..65536 entries, got {batch}")


def load_or_create_key(path: Path):
    """Load the service key, or create it once: the file appears atomically (link of a
    finished temp file), so two processes starting together end up with the same key."""
    if path.exists():
        return keys.load_private_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = keys.generate_private_key("ed25519")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    keys.save_private_key(key, tmp)
    try:
        os.link(tmp, path)
    except FileExistsError:
        key = keys.load_private_key(path)
    finally:
        tmp.unlink(missing_ok=True)
    return key
