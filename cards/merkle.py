"""RFC 9162 Merkle Tree Hash, inclusion and consistency proofs.

The dataset root is built while records stream past, so memory is one hash per set bit
of the record count (O(log n)). leaf = H(0x00 || data), node = H(0x01 || left || right),
empty tree = H("").
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_sha256 = hashlib.sha256
# Below this, one concatenation is cheaper than a second update() call; above it,
# copying the record would cost more than the extra call.
_CONCAT_LIMIT = 4096


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 leaf hash H(0x00 || data) of one record's bytes."""
    if len(data) < _CONCAT_LIMIT:
        return _sha256(b"\x00" + data).digest()
    h = _sha256(b"\x00")
    h.update(data)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash H(0x01 || left || right) of two 32-byte hashes."""
    return _sha256(b"\x01" + left + right).digest()


class MerkleTree:
    """Streaming RFC 9162 root: keeps the roots of the perfect subtrees that make up
    the tree so far (one per set bit of ``size``)."""

    __slots__ = ("_stack", "size")

    def __init__(self):
        self._stack: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> None:
        """Append one record (its bytes, hashed here as a leaf)."""
        self.add_leaf_hash(leaf_hash(data))

    def add_leaf_hash(self, h: bytes) -> None:
        """Append a leaf already hashed with leaf_hash()."""
        stack = self._stack
        n = self.size
        while n & 1:
            h = _sha256(b"\x01" + stack.pop() + h).digest()
            n >>= 1
        stack.append(h)
        self.size += 1

    def extend(self, records: Iterable[bytes]) -> None:
        """add() for many records, with the per-record work inlined (this is the hot
        loop of dataset measurement)."""
        stack = self._stack
        pop, push = stack.pop, stack.append
        sha = _sha256
        n = self.size
        for data in records:
            if len(data) < _CONCAT_LIMIT:
                h = sha(b"\x00" + data).digest()
            else:
                hasher = sha(b"\x00")
                hasher.update(data)
                h = hasher.digest()
            m = n
            while m & 1:
                h = sha(b"\x01" + pop() + h).digest()
                m >>= 1
            push(h)
            n += 1
        self.size = n

    def root(self) -> bytes:
        """The RFC 9162 root of the records added so far (EMPTY_ROOT if none)."""
        stack = self._stack
        if not stack:
            return EMPTY_ROOT
        h = stack[-1]
        for left in reversed(stack[:-1]):
            h = node_hash(left, h)
        return h


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """The RFC 9162 root of a list of leaf hashes (EMPTY_ROOT for none), level by level:
    pairing neighbours and carrying an odd last node up unchanged is the same tree as
    RFC 9162's split at the largest power of two, with one loop per level instead of
    one per leaf (a prediction server computes one per answered batch)."""
    level = list(leaf_hashes)
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        odd = level[-1:] if len(level) & 1 else []
        level = [_sha256(b"\x01" + a + b).digest()
                 for a, b in zip(level[0::2], level[1::2])] + odd
    return bytes(level[0])


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) of RFC 9162 §2.1.3.1, leaf-side sibling first."""
    n = len(leaf_hashes)
    if not 0 <= index < n:
        raise ValueError(f"leaf index {index} outside a tree of size {n}")
    proof: list[bytes] = []
    lo, hi = 0, n
    while hi - lo > 1:
        k = _split(hi - lo)
        if index - lo < k:
            proof.append(root_of(leaf_hashes[lo + k:hi]))
            hi = lo + k
        else:
            proof.append(root_of(leaf_hashes[lo:lo + k]))
            lo += k
    proof.reverse()
    return proof


def consistency_proof(leaf_hashes: Sequence[bytes], size1: int, size2: int) -> list[bytes]:
    """PROOF(size1, D[size2]) of RFC 9162 §2.1.4.1 (empty when the sizes are equal)."""
    if not 0 < size1 <= size2 <= len(leaf_hashes):
        raise ValueError(f"consistency proof needs 0 < size1 <= size2 <= {len(leaf_hashes)}, "
                         f"got {size1}, {size2}")
    proof: list[bytes] = []
    lo, hi, m, complete = 0, size2, size1, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            proof.append(root_of(leaf_hashes[lo + k:hi]))
            hi = lo + k
        else:
            proof.append(root_of(leaf_hashes[lo:lo + k]))
            lo += k
            m -= k
            complete = False
    if not complete:
        proof.append(root_of(leaf_hashes[lo:hi]))
    proof.reverse()
    return proof


def _hashes_ok(*hashes) -> bool:
    return all(isinstance(h, (bytes, bytearray)) and len(h) == HASH_SIZE for h in hashes)


def inclusion_root(leaf_hash_: bytes, index: int, tree_size: int,
                   proof: Sequence[bytes]) -> bytes | None:
    """The root an inclusion proof leads to (RFC 9162 §2.1.3.2 steps 1-6), or None when
    the input is malformed or the proof's length does not fit the tree's depth. Receipts
    need it on its own because they carry no root (RFC 9942)."""
    proof = list(proof or ())
    if not (_is_count(index) and _is_count(tree_size) and index < tree_size):
        return None
    if not _hashes_ok(leaf_hash_, *proof):
        return None
    fn, sn = index, tree_size - 1
    r = bytes(leaf_hash_)
    for p in proof:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def verify_inclusion(leaf_hash_: bytes, index: int, tree_size: int, proof: Sequence[bytes],
                     root: bytes) -> bool:
    """RFC 9162 §2.1.3.2; any malformed input is simply False."""
    if not _hashes_ok(root):
        return False
    computed = inclusion_root(leaf_hash_, index, tree_size, proof)
    return computed is not None and computed == root


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes,
                       root2: bytes) -> bool:
    """RFC 9162 §2.1.4.2. A proof from the empty tree proves nothing and is refused;
    equal sizes need an empty proof and equal roots."""
    proof = list(proof or ())
    if not (_is_count(size1) and _is_count(size2)) or size1 == 0 or size1 > size2:
        return False
    if size1 == size2:
        return not proof and root1 == root2
    if not proof or not _hashes_ok(root1, root2, *proof):
        return False
    if size1 & (size1 - 1) == 0:          # size1 is a power of two: its root is implied
        proof.insert(0, bytes(root1))
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == root1 and sr == root2 and sn == 0


def _is_count(x) -> bool:
    return type(x) is int and x >= 0
