"""Loaders for the public conformance vectors in this folder (see README.md).

A missing file is an error, never a skip: a plain clone must run every conformance test.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent
MERKLE_KINDS = ("inclusion", "consistency", "subtreeinclusion", "subtreeconsistency")


def merkle_cases(kind: str) -> list[tuple[str, dict]]:
    """(upstream path, case) for every case of one transparency-dev vector kind."""
    if kind not in MERKLE_KINDS:
        raise ValueError(f"unknown Merkle vector kind {kind!r}")
    cases = json.loads((ROOT / "merkle" / f"{kind}.json").read_text())
    return sorted(cases.items())


def b64(value: str | None) -> bytes | None:
    """A base64 hash of the Merkle vectors; None stays None (some cases omit a root)."""
    return base64.b64decode(value) if value is not None else None


def b64_list(values: list[str] | None) -> list[bytes]:
    """A base64 proof of the Merkle vectors; ``null`` is the empty proof."""
    return [base64.b64decode(v) for v in values or ()]


def cose_files(pattern: str) -> list[Path]:
    """The COSE working group example files matching a glob under ``cose/``."""
    return sorted((ROOT / "cose").glob(pattern))
