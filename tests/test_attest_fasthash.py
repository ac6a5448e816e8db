"""The batch leaf hasher: the native and the Python path give the very leaves, roots and
membership proofs FORMAT.md defines (compact ranges: test_cards_merkle.py)."""
import numpy as np
import pytest

from attest import fasthash, measure
from cards import merkle


def _reference_leaves(x, y):
    return [merkle.leaf_hash(measure.record_bytes(x[i], int(y[i]))) for i in range(len(y))]


def test_native_extension_is_built():
    # The install builds it (gcc and OpenSSL headers); without it measurement is ~10x slower.
    assert fasthash.NATIVE, "attest._fasthash missing: reinstall with pip install -e ."


@pytest.mark.parametrize("n,shape", [(1, (1,)), (5, (3,)), (300, (2, 4, 4)), (7, (0,)),
                                     (40, (5000,))])    # the last one goes through the threads
def test_native_and_python_leaves_match_the_record_encoding(n, shape):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    # Labels across every CBOR head width: 1, 2, 3, 5 and 9 bytes.
    y = rng.choice([0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**40], size=n)
    native = fasthash.leaf_hashes(x, y)
    python = fasthash.leaf_hashes(x, y, native=False)
    assert [bytes(r) for r in native] == _reference_leaves(x, y)
    assert (native == python).all()


def test_big_endian_and_float64_inputs_hash_as_little_endian_float32():
    x = np.arange(12, dtype=">f8").reshape(3, 4)
    y = np.array([1, 2, 3])
    assert [bytes(r) for r in fasthash.leaf_hashes(x, y)] == _reference_leaves(x.astype("<f4"), y)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 9, 64, 65, 1000])
def test_tree_roots_and_proofs_agree_on_both_paths_whatever_the_batch_cuts(n):
    rng = np.random.default_rng(n)
    leaves = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    listed = [bytes(r) for r in leaves]
    roots = set()
    for native in (True, False):
        for cuts in ([], [n // 2], sorted({min(1, n), n // 3, max(n - 1, 0)})):
            tree = fasthash.Tree()
            for a, b in zip([0, *cuts], [*cuts, n]):
                tree.extend_hashes(leaves[a:b], native=native)
            assert tree.size == n
            roots.add(tree.root())
    assert roots == {merkle.root_of(listed)}
    for i in {0, n // 2, n - 1} if n else ():
        proof = fasthash.inclusion_proof(leaves, i)
        assert proof == merkle.inclusion_proof(listed, i)
        assert merkle.verify_inclusion(listed[i], i, n, proof, merkle.root_of(listed))


def test_dataset_claim_is_the_same_per_record_and_per_batch():
    rng = np.random.default_rng(3)
    x = rng.random((2500, 6), dtype=np.float32)
    y = rng.integers(0, 4, 2500)
    batched = measure.dataset_claim_batches("d", [(x[:999], y[:999]), (x[999:], y[999:])], 4)
    assert measure.dataset_claim("d", zip(x, y), 4) == batched
    assert batched["merkle_root"] == merkle.root_of(_reference_leaves(x, y)).hex()


def test_tree_refuses_hashes_that_are_not_whole():
    with pytest.raises(ValueError, match="multiple of 32"):
        fasthash.Tree().extend_hashes(b"\x00" * 33)
