"""The rules of distributed training's card section (FORMAT.md, "Distributed training"),
shared by the wrapper that follows them and the verifier that checks them."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable

ASSIGNMENT = "contiguous-v1"
SHARD_DIGEST = "range-roots-v1"


def shard_bounds(records: int, world_size: int, rank: int) -> tuple[int, int]:
    """[first, stop) of rank `rank`'s contiguous shard of `records` records over
    `world_size` ranks ("contiguous-v1")."""
    return records * rank // world_size, records * (rank + 1) // world_size


def shard_digest(range_roots: Iterable[bytes]) -> bytes:
    """H(concatenated range roots): one digest of a shard's compact range ("range-roots-v1")."""
    return hashlib.sha256(b"".join(range_roots)).digest()


def steps_per_epoch(records: int, world_size: int, batch_size: int) -> int:
    """Every rank takes as many steps as the largest shard needs (DDP all-reduces each)."""
    largest = -(-records // world_size)
    return -(-largest // batch_size)


def expected_fed(shard_records: int, steps: int, batch_size: int) -> int:
    """Records a rank feeds per epoch: its shard once, plus one repeated record when its
    last step would otherwise be empty (a shard one smaller than the largest)."""
    return max(shard_records, (steps - 1) * batch_size + 1) if shard_records else 0
