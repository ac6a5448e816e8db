"""Merkle proof verification against proofs of the wrong length.

A proof with a node too many or too few must not verify, whatever root the attacker
names: the loop guards (the tree's remaining depth reaching zero early, the end-of-path
checks) are what refuse it. The public vectors hold few such cases, so each guard gets
its own adversarial proof here, for every index of several tree sizes.
"""
import hashlib

import pytest

from cards import merkle

LEAVES = [merkle.leaf_hash(bytes([i])) for i in range(17)]
EXTRA = hashlib.sha256(b"attacker's node").digest()
SIZES = [1, 2, 3, 4, 5, 7, 8, 9, 16, 17]


def _pairs():
    return [(size, index) for size in SIZES for index in range(size)]


@pytest.mark.parametrize("size, index", _pairs())
def test_inclusion_proof_with_a_node_too_many(size, index):
    leaves = LEAVES[:size]
    proof = merkle.inclusion_proof(leaves, index)
    root = merkle.root_of(leaves)
    assert merkle.verify_inclusion(leaves[index], index, size, proof, root)
    # the extra node makes a root one level above the tree's; name exactly that root
    for forged_root in (merkle.node_hash(EXTRA, root), merkle.node_hash(root, EXTRA), root):
        assert not merkle.verify_inclusion(leaves[index], index, size, [*proof, EXTRA],
                                           forged_root)
    assert merkle.inclusion_root(leaves[index], index, size, [*proof, EXTRA]) is None


@pytest.mark.parametrize("size, index", [p for p in _pairs() if p[0] > 1])
def test_inclusion_proof_with_a_node_too_few(size, index):
    leaves = LEAVES[:size]
    proof = merkle.inclusion_proof(leaves, index)
    assert merkle.inclusion_root(leaves[index], index, size, proof[:-1]) is None
    assert merkle.inclusion_root(leaves[index], index, size, proof[1:]) is None


@pytest.mark.parametrize("size, index", _pairs())
def test_inclusion_proof_at_the_wrong_index_or_size(size, index):
    leaves = LEAVES[:size]
    proof = merkle.inclusion_proof(leaves, index)
    root = merkle.root_of(leaves)
    for other in range(size):
        if other != index:
            assert not merkle.verify_inclusion(leaves[index], other, size, proof, root)
    assert not merkle.verify_inclusion(leaves[index], size, size, proof, root)


@pytest.mark.parametrize("size1, size2", [(a, b) for b in SIZES for a in range(1, b)])
def test_consistency_proof_with_a_node_too_many_or_too_few(size1, size2):
    leaves = LEAVES[:size2]
    proof = merkle.consistency_proof(leaves, size1, size2)
    root1, root2 = merkle.root_of(leaves[:size1]), merkle.root_of(leaves)
    assert merkle.verify_consistency(size1, size2, proof, root1, root2)
    assert not merkle.verify_consistency(size1, size2, [*proof, EXTRA], root1, root2)
    assert not merkle.verify_consistency(size1, size2, [*proof, EXTRA], root1,
                                         merkle.node_hash(root2, EXTRA))
    assert not merkle.verify_consistency(size1, size2, [*proof, EXTRA], root1,
                                         merkle.node_hash(EXTRA, root2))
    assert not merkle.verify_consistency(size1, size2, proof[:-1], root1, root2)
    assert not merkle.verify_consistency(size1, size2, proof[1:], root1, root2)
    assert not merkle.verify_consistency(size1 + 1, size2, proof, root1, root2)
    assert not merkle.verify_consistency(size1, size2, proof, root2, root2)


def test_consistency_edge_sizes():
    root = merkle.root_of(LEAVES[:4])
    assert merkle.verify_consistency(4, 4, [], root, root)
    assert not merkle.verify_consistency(4, 4, [EXTRA], root, root)
    assert not merkle.verify_consistency(4, 4, [], root, EXTRA)
    assert not merkle.verify_consistency(0, 4, [], merkle.EMPTY_ROOT, root)
    assert not merkle.verify_consistency(5, 4, [EXTRA], root, root)
    assert not merkle.verify_consistency(True, 4, [EXTRA], root, root)
    assert not merkle.verify_consistency(2, 4, [], merkle.root_of(LEAVES[:2]), root)
    assert not merkle.verify_consistency(2, 4, [b"short"], merkle.root_of(LEAVES[:2]), root)


def test_inclusion_edge_inputs():
    root = merkle.root_of(LEAVES[:1])
    assert merkle.verify_inclusion(LEAVES[0], 0, 1, [], root)
    assert not merkle.verify_inclusion(LEAVES[0], 0, 0, [], root)
    assert not merkle.verify_inclusion(LEAVES[0], -1, 1, [], root)
    assert not merkle.verify_inclusion(LEAVES[0], True, 2, [LEAVES[1]], root)
    assert not merkle.verify_inclusion(LEAVES[0][:31], 0, 1, [], root)
    assert not merkle.verify_inclusion(LEAVES[0], 0, 1, [], root[:31])
    # The right 32 bytes, but not as bytes: compared as given, a memoryview would match.
    assert not merkle.verify_inclusion(LEAVES[0], 0, 1, [], memoryview(root))
    assert not merkle.verify_inclusion(LEAVES[0], 0, 2, [b"x" * 33],
                                       merkle.root_of(LEAVES[:2]))


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
def test_streaming_add_and_extend_agree_with_the_definition(size):
    """MTH by its recursive definition, from the builder fed one leaf at a time, in
    one batch, and in two batches split at every point."""
    def mth(leaves):
        if not leaves:
            return hashlib.sha256(b"").digest()
        if len(leaves) == 1:
            return leaves[0]
        k = 1 << ((len(leaves) - 1).bit_length() - 1)
        return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()
    records = [bytes([i]) * (1 + 1500 * i) for i in range(size)]  # a few past 4 KiB
    expected = mth([hashlib.sha256(b"\x00" + r).digest() for r in records])
    one = merkle.MerkleTree()
    for r in records:
        one.add(r)
    assert (one.root(), one.size) == (expected, size)
    for cut in range(size + 1):
        tree = merkle.MerkleTree()
        tree.extend(records[:cut])
        tree.extend(records[cut:])
        assert (tree.root(), tree.size) == (expected, size)


@pytest.mark.parametrize("bad", ["x" * 32, None, 32, b"x" * 31, b"x" * 33])
def test_malformed_hashes_are_refused_not_raised(bad):
    """Receipts and proofs arrive from the network: any malformed node is a refusal."""
    two = merkle.root_of(LEAVES[:2])
    assert merkle.inclusion_root(LEAVES[0], 0, 2, [bad]) is None
    assert merkle.inclusion_root(bad, 0, 2, [LEAVES[1]]) is None
    assert merkle.verify_inclusion(LEAVES[0], 0, 2, [bad], two) is False
    assert merkle.verify_consistency(2, 4, [bad], two, merkle.root_of(LEAVES[:4])) is False
    assert merkle.verify_consistency(3, 4, [LEAVES[2], bad], merkle.root_of(LEAVES[:3]),
                                     merkle.root_of(LEAVES[:4])) is False


def test_consistency_proof_replayed_for_smaller_sizes():
    """The honest proof from 7 to 8 leaves is [leaf 6, leaf 7, node(4..5), node(0..3)].
    Read for sizes 3 and 4 its first three nodes rebuild the right subtrees of both roots
    and the fourth, one node past the depth of a 4-leaf tree, is the left subtree they
    share: only RFC 9162's "if sn is 0, stop and fail" refuses the false sizes."""
    leaves = [merkle.leaf_hash(b"%d" % i) for i in range(8)]
    root7, root8 = merkle.root_of(leaves[:7]), merkle.root_of(leaves[:8])
    proof = merkle.consistency_proof(leaves, 7, 8)
    assert proof == [leaves[6], leaves[7], merkle.root_of(leaves[4:6]), merkle.root_of(leaves[:4])]
    assert merkle.verify_consistency(7, 8, proof, root7, root8)
    assert not merkle.verify_consistency(3, 4, proof, root7, root8)
