"""Dataset leaf hashes in batches, off the Python loop and across cores.

A leaf is SHA-256(0x00 || dcbor([label, x as little-endian float32 bytes])) (FORMAT.md).
Hashing one small record per Python call caps measurement near half a million records a
second; here a whole batch is hashed by the `attest._fasthash` C extension (OpenSSL's
SHA-256, built at install time), which releases the GIL so a batch is split over threads,
one per core. Without the extension the same bytes are hashed in Python: same leaves, same
roots, same proofs, only slower (`NATIVE` says which path runs).
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cards import merkle
from cards.errors import LaminateError

try:
    from attest import _fasthash as _native
except ImportError:          # no compiler or OpenSSL headers at install time
    _native = None

NATIVE = _native is not None
# Below this many bytes a batch is hashed on the calling thread: handing it to a pool
# costs more than it saves.
_PARALLEL_BYTES = 1 << 18
THREADS = max(1, min(os.cpu_count() or 1, 8))
_pool: ThreadPoolExecutor | None = None


def cbor_head(major: int, value: int) -> bytes:
    """Shortest-form CBOR head (RFC 8949 §4.2.1) for a major type and argument."""
    if value < 24:
        return bytes([major << 5 | value])
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes([major << 5 | extra]) + value.to_bytes(size, "big")
    raise LaminateError(f"CBOR argument {value} does not fit in 64 bits")


def record_prefix(label: int, nbytes: int) -> bytes:
    """dcbor([label, bstr of nbytes]) up to the byte string's contents."""
    head = cbor_head(0, label) if label >= 0 else cbor_head(1, -1 - label)
    return b"\x82" + head + cbor_head(2, nbytes)


def _python_leaves(flat: np.ndarray, nbytes: int, y: np.ndarray, out: np.ndarray,
                   start: int, stop: int) -> None:
    prefixes: dict[int, bytes] = {}
    sha256 = hashlib.sha256
    for i in range(start, stop):
        label = int(y[i])
        prefix = prefixes.get(label)
        if prefix is None:
            prefix = prefixes[label] = b"\x00" + record_prefix(label, nbytes)
        h = sha256(prefix)
        h.update(flat[i * nbytes:(i + 1) * nbytes])
        out[i] = np.frombuffer(h.digest(), np.uint8)


def _slices(n: int, total_bytes: int) -> list[tuple[int, int]]:
    """[0, n) cut into one slice per thread for big batches, else one slice."""
    k = THREADS if THREADS > 1 and total_bytes >= _PARALLEL_BYTES and n >= THREADS else 1
    cuts = [n * i // k for i in range(k + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _run(fn, slices: list[tuple[int, int]]) -> list:
    """[fn(a, b) for each slice], on the pool's threads when there is more than one."""
    global _pool
    if len(slices) == 1:
        return [fn(*slices[0])]
    if _pool is None:
        _pool = ThreadPoolExecutor(THREADS, thread_name_prefix="laminate-hash")
    return [f.result() for f in [_pool.submit(fn, a, b) for a, b in slices]]


def _prepare(x, labels):
    x = np.ascontiguousarray(x, dtype="<f4")
    y = np.ascontiguousarray(labels, dtype=np.int64)
    n = int(y.shape[0])
    if x.shape[:1] != (n,):
        raise ValueError(f"{x.shape[0] if x.ndim else 0} feature rows but {n} labels")
    return x.reshape(-1).view(np.uint8), x.nbytes // n if n else 0, y, n


def leaf_hashes(x: np.ndarray, labels: np.ndarray, *, native: bool | None = None) -> np.ndarray:
    """The (n, 32) uint8 leaf hashes of n records: `x` (n, ...) float32 (converted to
    little-endian and C order if it is not), `labels` (n,) integers. `native=False` forces
    the Python path."""
    flat, nbytes, y, n = _prepare(x, labels)
    out = np.empty((n, 32), np.uint8)
    if NATIVE if native is None else native and NATIVE:
        _run(lambda a, b: _native.leaf_hashes(flat, y, out, nbytes, a, b), _slices(n, flat.nbytes))
    else:
        _run(lambda a, b: _python_leaves(flat, nbytes, y, out, a, b), _slices(n, flat.nbytes))
    return out


def measure_into(tree: merkle.MerkleTree, x, labels) -> np.ndarray:
    """Append n records to `tree` and return their leaf hashes. Natively, each thread
    hashes its slice and folds it into the roots of the aligned subtrees that tile it
    (`merkle.range_blocks`), so the tree's node hashes are spread over the cores too."""
    if not NATIVE:
        leaves = leaf_hashes(x, labels)
        for row in leaves:
            tree.add_leaf_hash(row.tobytes())
        return leaves
    flat, nbytes, y, n = _prepare(x, labels)
    out = np.empty((n, 32), np.uint8)
    base = tree.size

    def job(a: int, b: int) -> list:
        _native.leaf_hashes(flat, y, out, nbytes, a, b)
        return [(_native.fold(b"", 0, out[s - base:s - base + (1 << h)])[0], h)
                for s, h in merkle.range_blocks(base + a, base + b)]

    for roots in _run(job, _slices(n, flat.nbytes)):
        for root, height in roots:
            tree.add_subtree(root, height)
    return out


class Tree(merkle.MerkleTree):
    """`cards.merkle.MerkleTree` that takes leaf hashes a batch at a time."""

    __slots__ = ()

    def extend_hashes(self, leaves, *, native: bool | None = None) -> None:
        """Append leaf hashes: an (n, 32) array or n * 32 bytes."""
        if isinstance(leaves, (bytes, bytearray, memoryview)):
            data = memoryview(leaves).cast("B")
        else:
            data = memoryview(np.ascontiguousarray(leaves, dtype=np.uint8).reshape(-1))
        if len(data) % 32:
            raise ValueError("leaf hashes must be a multiple of 32 bytes")
        if NATIVE if native is None else native and NATIVE:
            packed, self.size = _native.fold(b"".join(self._stack), self.size, data)
            self._stack = [packed[i:i + 32] for i in range(0, len(packed), 32)]
        else:
            for i in range(0, len(data), 32):
                self.add_leaf_hash(bytes(data[i:i + 32]))


def range_roots(leaves: np.ndarray, first: int) -> list[bytes]:
    """The roots of `merkle.range_blocks(first, first + n)` over n leaf hashes that sit at
    positions first.. of the whole tree: a shard's part of the dataset root."""
    roots = []
    for start, height in merkle.range_blocks(first, first + len(leaves)):
        tree = Tree()
        tree.extend_hashes(leaves[start - first:start - first + (1 << height)])
        roots.append(tree.root())
    return roots


def inclusion_proof(leaves: np.ndarray, index: int) -> list[bytes]:
    """The RFC 9162 membership proof of record `index` from the (n, 32) leaf hashes."""
    return merkle.inclusion_proof([bytes(row) for row in leaves], index)
