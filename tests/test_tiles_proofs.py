"""Tiled log: proofs read from tiles equal the all-leaves proofs, and a client written
here from the tlog-tiles, signed-note and RFC 9162 texts (sharing no code with ours)
verifies inclusion and consistency against the tiles and checkpoints we produce."""
import base64
import hashlib
import random

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cards import merkle
from verifier import logproof, tiles

ORIGIN = "example.test/laminate"


class Store:
    """Tiles kept as the database keeps them: the latest bytes of each (level, index)."""

    def __init__(self):
        self.tiles: dict[tuple[int, int], bytes] = {}
        self.bundles: dict[int, list[bytes]] = {}
        self.size = 0
        self.reads = 0

    def read_tile(self, level, index, width):
        self.reads += 1
        return self.tiles[(level, index)][:width * 32]

    def append(self, entries):
        hashes = [merkle.leaf_hash(e) for e in entries]
        for i, e in enumerate(entries):
            self.bundles.setdefault((self.size + i) // 256, []).append(e)
        self.size, changed = tiles.append_leaves(self.read_tile, self.size, hashes)
        self.tiles.update(changed)

    def serve(self, path):
        """The HTTP answer for ``path``: only what the tree holds at its current size."""
        level, index, width = tiles.parse_tile_path(path)
        if level == "entries":
            have = self.bundles.get(index, [])
            if len(have) < width:
                raise KeyError(path)
            return tiles.encode_bundle(have[:width])
        tile = self.tiles.get((int(level), index), b"")
        if len(tile) < width * 32:
            raise KeyError(path)
        return tile[:width * 32]


# ------------------------------------------------------------ an independent client

def spec_index_path(n):
    s = f"{n:03d}"
    s = "0" * (-len(s) % 3) + s
    groups = [s[i:i + 3] for i in range(0, len(s), 3)]
    return "/".join(["x" + g for g in groups[:-1]] + [groups[-1]])


def spec_verify_checkpoint(note, name, pub_raw):
    body, sigs = note.split("\n\n", 1)
    body += "\n"
    keyhash = hashlib.sha256(name.encode() + b"\n\x01" + pub_raw).digest()[:4]
    for line in sigs.splitlines():
        dash, signer, b64 = line.split(" ")
        blob = base64.b64decode(b64)
        if dash == "\u2014" and signer == name and blob[:4] == keyhash:
            ed25519.Ed25519PublicKey.from_public_bytes(pub_raw).verify(blob[4:], body.encode())
            origin, size, root = body.splitlines()[:3]
            return origin, int(size), base64.b64decode(root)
    raise AssertionError("no signature by the log key")


def spec_hash_tile(fetch, level, n, size):
    """The hashes of tile (level, n) in a tree of ``size`` leaves, per the tiles spec."""
    count = size >> (8 * level)
    width = min(256, count - 256 * n)
    path = f"tile/{level}/{spec_index_path(n)}" + ("" if width == 256 else f".p/{width}")
    data = fetch(path)
    assert len(data) == 32 * width, path
    return [data[i:i + 32] for i in range(0, len(data), 32)]


def spec_leaf(fetch, size, index):
    """Entry ``index``, read from its bundle (2-byte big-endian lengths)."""
    n, width = index // 256, min(256, size - index // 256 * 256)
    data = fetch(f"tile/entries/{spec_index_path(n)}" + ("" if width == 256 else f".p/{width}"))
    pos, out = 0, []
    while pos < len(data):
        ln = int.from_bytes(data[pos:pos + 2], "big")
        out.append(data[pos + 2:pos + 2 + ln])
        pos += 2 + ln
    assert len(out) == width
    return out[index % 256]


def H(b):
    return hashlib.sha256(b).digest()


def spec_mth(leaves):
    """MTH of RFC 9162 §2.1.1, recursively."""
    if not leaves:
        return H(b"")
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return H(b"\x01" + spec_mth(leaves[:k]) + spec_mth(leaves[k:]))


def spec_verify_inclusion(leaf, index, size, proof, root):
    """RFC 9162 §2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = H(b"\x01" + p + r)
            while fn % 2 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = H(b"\x01" + r + p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def spec_verify_consistency(m, n, proof, r1, r2):
    """RFC 9162 §2.1.4.2."""
    if m == n:
        return not proof and r1 == r2
    proof = list(proof)
    if m & (m - 1) == 0:
        proof = [r1] + proof
    fn, sn = m - 1, n - 1
    while fn % 2 == 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            fr, sr = H(b"\x01" + c + fr), H(b"\x01" + c + sr)
            while fn % 2 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = H(b"\x01" + sr + c)
        fn >>= 1
        sn >>= 1
    return fr == r1 and sr == r2 and sn == 0


def spec_root_from_tiles(fetch, size):
    """The root rebuilt from the level-0 tiles, after checking every level-1 hash is
    the MTH of the 256 leaves under it."""
    leaves = []
    for n in range((size + 255) // 256):
        leaves += spec_hash_tile(fetch, 0, n, size)
    for n in range(((size >> 8) + 255) // 256):
        for i, h in enumerate(spec_hash_tile(fetch, 1, n, size)):
            j = (n * 256 + i) * 256
            assert h == spec_mth(leaves[j:j + 256]), f"level-1 hash {n * 256 + i}"
    return leaves, spec_mth(leaves)


# ------------------------------------------------------------ tests

@pytest.fixture(scope="module")
def log_key():
    return ed25519.Ed25519PrivateKey.generate()


def raw(key):
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def test_independent_client_verifies_tiles_and_checkpoints(log_key):
    store = Store()
    entries = [f"entry {i}".encode() * (1 + i % 5) for i in range(1300)]
    store.append(entries[:700])
    old_note = logproof.sign_checkpoint(ORIGIN, 700, tiles.tree_root(store.read_tile, 700),
                                        "log.test", log_key)
    store.append(entries[700:])
    note = logproof.sign_checkpoint(ORIGIN, store.size, tiles.tree_root(store.read_tile,
                                                                        store.size),
                                    "log.test", log_key)
    origin, size, root = spec_verify_checkpoint(note, "log.test", raw(log_key))
    assert (origin, size) == (ORIGIN, 1300)
    leaves, rebuilt = spec_root_from_tiles(store.serve, size)
    assert rebuilt == root, "checkpoint root is not the MTH of the served level-0 tiles"
    for index in (0, 255, 256, 699, 1299):
        entry = spec_leaf(store.serve, size, index)
        assert entry == entries[index] and H(b"\x00" + entry) == leaves[index]
        proof = tiles.inclusion_proof(store.read_tile, size, index)
        assert spec_verify_inclusion(leaves[index], index, size, proof, root), index
    _, old_size, old_root = spec_verify_checkpoint(old_note, "log.test", raw(log_key))
    proof = tiles.consistency_proof(store.read_tile, old_size, size)
    assert spec_verify_consistency(old_size, size, proof, old_root, root)
    # the old tree's partial tiles are still served at the old width
    assert spec_root_from_tiles(store.serve, old_size)[1] == old_root


def test_tile_proofs_equal_all_leaves_proofs_for_sizes_1_to_1000():
    rng = random.Random(16)
    store, leaves = Store(), []
    for n in range(1, 1001):
        leaves.append(merkle.leaf_hash(b"%d" % n))
        store.append([b"%d" % n])
        assert tiles.tree_root(store.read_tile, n) == merkle.root_of(leaves), n
        i, m = rng.randrange(n), rng.randint(1, n)
        assert tiles.inclusion_proof(store.read_tile, n, i) == merkle.inclusion_proof(leaves, i)
        assert tiles.consistency_proof(store.read_tile, m, n) == \
            merkle.consistency_proof(leaves, m, n), (m, n)


def test_level_two_tiles_and_log_n_reads():
    """Past 65,536 leaves level-2 tiles appear; a proof still reads O(log n) tiles."""
    store = Store()
    data = [b"%d" % i for i in range(70_001)]
    store.append(data[:40_000])
    store.append(data[40_000:])
    leaves = [merkle.leaf_hash(d) for d in data]
    assert (2, 0) in store.tiles and len(store.tiles[(2, 0)]) == 32
    for i in (0, 65_535, 65_536, 70_000, 12_345):
        store.reads = 0
        assert tiles.inclusion_proof(store.read_tile, 70_001, i) == merkle.inclusion_proof(leaves, i)
        assert store.reads <= 2 * 3, f"inclusion of {i} read {store.reads} tiles"
    for m in (1, 256, 65_536, 65_537, 70_000):
        assert tiles.consistency_proof(store.read_tile, m, 70_001) == \
            merkle.consistency_proof(leaves, m, 70_001)


@pytest.mark.parametrize("n,path", [(0, "000"), (999, "999"), (1000, "x001/000"),
                                    (1234067, "x001/x234/067")])
def test_index_path_encoding(n, path):
    assert tiles.encode_index(n) == path == spec_index_path(n)
    assert tiles.parse_tile_path(f"tile/3/{path}.p/7") == ("3", n, 7)


@pytest.mark.parametrize("path,why", [
    ("tile/0/x000/001", "leading zero group"), ("tile/0/1", "bad tile index element"),
    ("tile/0/001/002", "bad tile index element"), ("tile/0/x001", "bad tile index element"),
    ("tile/01/000", "bad tile level"), ("tile/0/000.p/256", "bad partial width"),
    ("tile/0/000.p/0", "bad partial width"), ("files/0/000", "not a tile path")])
def test_non_canonical_tile_paths_are_refused(path, why):
    with pytest.raises(tiles.TileError, match=why):
        tiles.parse_tile_path(path)


def test_short_tile_is_refused():
    store = Store()
    store.append([b"a", b"b", b"c"])
    with pytest.raises(tiles.TileError, match=r"tile/0/000.p/3: 64 bytes, expected 96"):
        tiles.inclusion_proof(lambda lv, i, w: store.read_tile(lv, i, w)[:64], 3, 1)


def test_bundle_roundtrip_and_truncation():
    blob = tiles.encode_bundle([b"", b"xy"])
    assert tiles.decode_bundle(blob, 2) == [b"", b"xy"]
    with pytest.raises(tiles.TileError, match="runs past the end"):
        tiles.decode_bundle(blob[:-1], 2)
    with pytest.raises(tiles.TileError, match="holds 2 entries, expected 3"):
        tiles.decode_bundle(blob, 3)
