"""RFC 9162 Merkle trees: the public transparency-dev vectors, our own proofs for many
(index, size) pairs, and the streaming root against the recursive definition."""
import base64
import hashlib

import pytest

from cards import merkle
from vectors import b64, b64_list, merkle_cases


def _params(kind, applies=lambda case: True):
    return [pytest.param(case, id=name) for name, case in merkle_cases(kind) if applies(case)]


def _bit_ceil(n):
    return 1 << (n - 1).bit_length()


@pytest.mark.parametrize("case", _params("inclusion"))
def test_inclusion_vector(case):
    ok = merkle.verify_inclusion(b64(case["leafHash"]), case["leafIdx"], case["treeSize"],
                                 b64_list(case["proof"]), b64(case["root"]))
    assert ok is (not case["wantErr"]), case["desc"]


@pytest.mark.parametrize("case", _params("consistency"))
def test_consistency_vector(case):
    ok = merkle.verify_consistency(case["size1"], case["size2"], b64_list(case["proof"]),
                                   b64(case["root1"]), b64(case["root2"]))
    assert ok is (not case["wantErr"]), case["desc"]


# The subtree vectors (Merkle Tree Certificates) prove statements about the leaves
# [start, end) of a tree. Two kinds are plain RFC 9162 statements, so they check the
# same functions at other sizes and offsets:
# - a leaf's path inside a well-formed subtree (start a multiple of bit_ceil(end - start))
#   is its RFC 9162 path at index leafIdx - start in the tree of end - start leaves;
# - the subtree [0, end) inside a tree of size leaves is the RFC 9162 consistency of the
#   tree of end leaves with it.
# The rest (ill-formed subtrees, subtrees not starting at 0, the empty subtree) are rules
# of an API laminate does not have.

def _subtree_inclusion_applies(case):
    start, end = case["start"], case["end"]
    return start == 0 or start >= end or start % _bit_ceil(end - start) == 0


def _subtree_consistency_applies(case):
    return case["start"] == 0 < case["end"]


@pytest.mark.parametrize("case", _params("subtreeinclusion", _subtree_inclusion_applies))
def test_subtree_inclusion_vector(case):
    start, end = case["start"], case["end"]
    ok = merkle.verify_inclusion(b64(case["leafHash"]), case["leafIdx"] - start, end - start,
                                 b64_list(case["proof"]), b64(case["root"]))
    assert ok is (not case["wantErr"]), case["desc"]


@pytest.mark.parametrize("case", _params("subtreeconsistency", _subtree_consistency_applies))
def test_subtree_consistency_vector(case):
    ok = merkle.verify_consistency(case["end"], case["size"], b64_list(case["proof"]),
                                   b64(case["root1"]), b64(case["root2"]))
    assert ok is (not case["wantErr"]), case["desc"]


def test_vector_sets_are_complete():
    """Guards against a silently emptied or filtered vector set: each kind must keep
    both accepted and rejected cases, and the subtree cases left out must all be ones
    upstream rejects or ones that need the empty-subtree rule."""
    for kind in ("inclusion", "consistency"):
        cases = [c for _, c in merkle_cases(kind)]
        assert len(cases) >= 90
        assert sum(not c["wantErr"] for c in cases) >= 5
        assert sum(c["wantErr"] for c in cases) > 80
    inclusion = [c for _, c in merkle_cases("subtreeinclusion")]
    used = [c for c in inclusion if _subtree_inclusion_applies(c)]
    assert len(used) >= 190 and sum(not c["wantErr"] for c in used) >= 10
    assert all(c["wantErr"] for c in inclusion if not _subtree_inclusion_applies(c))
    consistency = [c for _, c in merkle_cases("subtreeconsistency")]
    used = [c for c in consistency if _subtree_consistency_applies(c)]
    assert len(used) >= 90 and sum(not c["wantErr"] for c in used) >= 5
    assert all(c["start"] > 0 or c["start"] == c["end"]
               for c in consistency if not _subtree_consistency_applies(c))


def _mth(leaves):
    """RFC 9162 §2.1.1 Merkle Tree Hash, written recursively as in the RFC."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def test_rfc_reference_tree_root():
    # the 8-leaf tree used by RFC 6962 / transparency-dev test suites
    leaves = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243",
                                          "5051525354555657", "606162636465666768696a6b6c6d6e6f")]
    tree = merkle.MerkleTree()
    tree.extend(leaves)
    assert tree.root() == base64.b64decode("XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=")
    assert merkle.leaf_hash(b"") == base64.b64decode(
        "bjQLnP+zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB0=")


def test_streaming_root_matches_recursive_definition_for_every_size():
    leaves = [bytes([i % 256]) * (i % 7) + i.to_bytes(4, "big") for i in range(70)]
    one_by_one, bulk = merkle.MerkleTree(), merkle.MerkleTree()
    assert one_by_one.root() == merkle.EMPTY_ROOT == _mth([])
    for n, data in enumerate(leaves, start=1):
        one_by_one.add(data)
        assert one_by_one.size == n
        assert one_by_one.root() == _mth(leaves[:n])
    bulk.extend(leaves[:33])
    bulk.extend(leaves[33:])
    assert bulk.root() == one_by_one.root()
    assert merkle.root_of([merkle.leaf_hash(x) for x in leaves]) == _mth(leaves)


def test_streaming_memory_is_logarithmic():
    tree = merkle.MerkleTree()
    for i in range(5000):
        tree.add(i.to_bytes(4, "big"))
        assert len(tree._stack) == bin(tree.size).count("1")


def test_large_records_take_the_no_copy_path():
    big = bytes(range(256)) * 100
    assert merkle.leaf_hash(big) == hashlib.sha256(b"\x00" + big).digest()
    tree = merkle.MerkleTree()
    tree.extend([big, b"x", big])
    assert tree.root() == _mth([big, b"x", big])


def _tree(n):
    return [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def test_own_inclusion_proofs_verify_for_every_index_and_tampering_fails():
    for n in range(1, 40):
        leaves = _tree(n)
        root = merkle.root_of(leaves)
        for i in range(n):
            proof = merkle.inclusion_proof(leaves, i)
            assert merkle.verify_inclusion(leaves[i], i, n, proof, root), (i, n)
            if n > 1:
                assert not merkle.verify_inclusion(leaves[(i + 1) % n], i, n, proof, root)
                assert not merkle.verify_inclusion(leaves[i], (i + 1) % n, n, proof, root)
                assert not merkle.verify_inclusion(leaves[i], i, n, proof[:-1], root)
                bad = list(proof)
                bad[0] = bytes([bad[0][0] ^ 1]) + bad[0][1:]
                assert not merkle.verify_inclusion(leaves[i], i, n, bad, root)
            assert not merkle.verify_inclusion(leaves[i], i, n, proof + [root], root)


def test_own_consistency_proofs_verify_for_every_size_pair_and_tampering_fails():
    leaves = _tree(36)
    roots = [merkle.root_of(leaves[:n]) for n in range(len(leaves) + 1)]
    for size2 in range(1, len(leaves) + 1):
        for size1 in range(1, size2 + 1):
            proof = merkle.consistency_proof(leaves, size1, size2)
            assert merkle.verify_consistency(size1, size2, proof, roots[size1], roots[size2])
            if size1 < size2:
                assert not merkle.verify_consistency(size1, size2, proof, roots[size1 - 1]
                                                     if size1 > 1 else roots[size2],
                                                     roots[size2])
                assert not merkle.verify_consistency(size1, size2, proof, roots[size1],
                                                     roots[size2 - 1])
                assert not merkle.verify_consistency(size1, size2, proof[1:], roots[size1],
                                                     roots[size2]) or len(proof) == 0
                bad = list(proof)
                bad[-1] = bytes(32)
                assert not merkle.verify_consistency(size1, size2, bad, roots[size1],
                                                     roots[size2])


def test_large_tree_proofs():
    leaves = _tree(1000)
    root = merkle.root_of(leaves)
    for i in (0, 1, 511, 512, 999):
        assert merkle.verify_inclusion(leaves[i], i, 1000, merkle.inclusion_proof(leaves, i),
                                       root)
    for s1 in (1, 7, 512, 513, 999):
        proof = merkle.consistency_proof(leaves, s1, 1000)
        assert merkle.verify_consistency(s1, 1000, proof, merkle.root_of(leaves[:s1]), root)


@pytest.mark.parametrize("args", [(-1, 3), (3, 3), (0, 0)])
def test_inclusion_proof_refuses_bad_index(args):
    index, n = args
    with pytest.raises(ValueError):
        merkle.inclusion_proof(_tree(n), index)


@pytest.mark.parametrize("sizes", [(0, 3), (4, 3), (2, 9)])
def test_consistency_proof_refuses_bad_sizes(sizes):
    with pytest.raises(ValueError):
        merkle.consistency_proof(_tree(8), *sizes)


def test_verifiers_reject_garbage_types_without_raising():
    h = merkle.leaf_hash(b"x")
    assert not merkle.verify_inclusion(h, "0", 1, [], h)
    assert not merkle.verify_inclusion(h, True, 2, [h], h)
    assert not merkle.verify_inclusion(None, 0, 1, [], h)
    assert not merkle.verify_consistency(1.0, 2, [h], h, h)
    assert not merkle.verify_consistency(1, 2, [None], h, h)


@pytest.mark.parametrize("n", [1, 5, 16, 100, 1023])
def test_compact_ranges_of_any_split_rebuild_the_root(n):
    listed = [hashlib.sha256(b"leaf %d" % i).digest() for i in range(n)]
    for cut in range(5):  # three cuts per round, spread differently each time
        cuts = sorted({(n * (cut + k) * 7 // 23) % (n + 1) for k in range(3)})
        bounds = [0, *cuts, n]
        ranges, sizes = [], []
        for a, b in zip(bounds, bounds[1:]):
            ranges.append([merkle.root_of(listed[s:s + (1 << h)])
                           for s, h in merkle.range_blocks(a, b)])
            sizes.append(b - a)
        assert merkle.root_of_ranges(ranges, sizes) == merkle.root_of(listed), bounds


def test_compact_range_blocks_are_the_aligned_subtrees():
    assert merkle.range_blocks(0, 6) == [(0, 2), (4, 1)]
    assert merkle.range_blocks(3, 13) == [(3, 0), (4, 2), (8, 2), (12, 0)]
    assert merkle.range_blocks(5, 5) == []


@pytest.mark.parametrize("begin, end", [(3, 2), (-1, 2), (0, -1), (True, 2), (0, 1.5)])
def test_compact_range_refuses_a_bad_range(begin, end):
    """A range that ends before it begins, or with a bound that is not a leaf count, has
    no blocks: it is refused, not tiled from a negative or fractional index."""
    with pytest.raises(ValueError, match=r"bad leaf range \["):
        merkle.range_blocks(begin, end)


def test_compact_range_with_a_missing_extra_or_malformed_root_is_refused():
    h = b"\x00" * 32
    with pytest.raises(ValueError, match="range of 6 leaves at 0 needs 2 subtree roots, got 1"):
        merkle.root_of_ranges([[h]], [6])
    with pytest.raises(ValueError, match="range of 1 leaves at 0 needs 1 subtree roots, got 2"):
        merkle.root_of_ranges([[h, h]], [1])
    with pytest.raises(ValueError, match="range of 1 leaves at 0 needs 1 subtree roots, got 1"):
        merkle.root_of_ranges([[h[:31]]], [1])  # the count fits; the hash is short
    with pytest.raises(ValueError, match=r"a subtree of 2\*\*-1 leaves cannot follow 0"):
        merkle.MerkleTree().add_subtree(h, -1)
    tree = merkle.MerkleTree()
    tree.add_leaf_hash(h)
    with pytest.raises(ValueError, match=r"a subtree of 2\*\*1 leaves cannot follow 1 leaves"):
        tree.add_subtree(h, 1)
