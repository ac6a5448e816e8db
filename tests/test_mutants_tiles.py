"""The tile layout's bounds and refusals, each at its edge and with its own message:
paths (one name per tile), entry bundles (16-bit lengths, at most 256 entries), and
requests outside the tree, which must be refused, not answered from a wrong tile."""
import pytest

from cards import merkle
from test_tiles_proofs import Store
from verifier import tiles
from verifier.tiles import TileError

LEAVES = [merkle.leaf_hash(b"%d" % i) for i in range(300)]


@pytest.fixture(scope="module")
def store():
    s = Store()
    s.append([b"%d" % i for i in range(300)])
    return s


def test_tile_geometry():
    assert (tiles.TILE_HEIGHT, tiles.TILE_WIDTH, tiles.HASH_SIZE) == (8, 256, 32)
    assert tiles.tile_width(0, 0, 300) == 256 and tiles.tile_width(0, 1, 300) == 44
    assert tiles.tile_width(0, 2, 300) == 0 and tiles.tile_width(1, 0, 300) == 1
    assert tiles.tile_width(1, 0, 255) == 0 and tiles.tile_width(2, 0, 65_536) == 1


@pytest.mark.parametrize("n, path", [(0, "000"), (1000, "x001/000"), (999_999, "x999/999"),
                                     (1_000_000, "x001/x000/000")])
def test_index_groups(n, path):
    assert tiles.encode_index(n) == path
    assert tiles.parse_tile_path(f"tile/0/{path}") == ("0", n, 256)


def test_negative_tile_index():
    with pytest.raises(TileError, match=r"^tile index -1 is negative$"):
        tiles.encode_index(-1)


def test_tile_path_bounds():
    assert tiles.tile_path(63, 0) == "tile/63/000"
    assert tiles.tile_path(0, 1, 1) == "tile/0/001.p/1"
    assert tiles.tile_path(0, 1, 255) == "tile/0/001.p/255"
    assert tiles.tile_path(0, 1, 256) == "tile/0/001"
    for level, width in [(64, 256), (-1, 256), (0, 0), (0, 257)]:
        with pytest.raises(TileError, match=rf"^tile level {level} / width {width} out of range$"):
            tiles.tile_path(level, 0, width)


def test_entries_path_bounds():
    assert tiles.entries_path(2) == "tile/entries/002"
    assert tiles.entries_path(2, 1) == "tile/entries/002.p/1"
    assert tiles.entries_path(2, 255) == "tile/entries/002.p/255"
    for width in (0, 257):
        with pytest.raises(TileError, match=rf"^entry bundle width {width} out of range$"):
            tiles.entries_path(2, width)


@pytest.mark.parametrize("path, parsed", [
    ("tile/entries/002.p/5", ("entries", 2, 5)), ("tile/63/000", ("63", 0, 256)),
    ("tile/0/000.p/1", ("0", 0, 1)), ("tile/0/000.p/255", ("0", 0, 255)),
    ("tile/0/x001" + "/x000" * 8 + "/000", ("0", 10 ** 27, 256)),
])
def test_tile_paths_that_parse(path, parsed):
    assert tiles.parse_tile_path(path) == parsed


@pytest.mark.parametrize("path, why", [
    ("tile/000", "not a tile path"), ("tiles/0/000", "not a tile path"),
    ("tile/0/x001" + "/x000" * 9 + "/000", "not a tile path"),
    ("tile/64/000", "bad tile level"), ("tile/-1/000", "bad tile level"),
    ("tile/0/000.p/01", "bad partial width"), ("tile/0/000.p/x", "bad partial width"),
    ("tile/0/0000", "bad tile index element '0000'"),
    ("tile/0/x01/000", "bad tile index element 'x01'"),
    ("tile/0/0a0", "bad tile index element '0a0'"),
    ("tile/0/001/x000", "bad tile index element '001'"),
    ("tile/0/y001/000", "bad tile index element 'y001'"),
    ("tile/0/1001/000", "bad tile index element '1001'"),
    ("tile/0/x000/x001/000", "tile index has a leading zero group"),
])
def test_tile_paths_that_do_not(path, why):
    with pytest.raises(TileError, match=f"^{path!r}: {why}".replace("[", r"\[")):
        tiles.parse_tile_path(path)


def test_bundle_entry_limit():
    biggest = b"x" * tiles.MAX_ENTRY
    assert tiles.MAX_ENTRY == 0xFFFF
    blob = tiles.encode_bundle([biggest])
    assert blob[:2] == b"\xff\xff" and tiles.decode_bundle(blob, 1) == [biggest]
    with pytest.raises(TileError, match=r"^entry of 65536 bytes is over the 65535-byte limit$"):
        tiles.encode_bundle([biggest + b"x"])


def test_bundle_of_a_full_tile_and_one_entry_too_many():
    full = tiles.encode_bundle([b"%d" % i for i in range(256)])
    assert len(tiles.decode_bundle(full, 256)) == 256
    with pytest.raises(TileError, match=r"^entry bundle holds 256 entries, expected 257$"):
        tiles.decode_bundle(full + tiles.encode_bundle([b"more"]), 257)


def test_bundle_cut_inside_a_length_prefix():
    blob = tiles.encode_bundle([b"ab", b"cd"])
    with pytest.raises(TileError, match=r"^entry bundle: truncated length prefix$"):
        tiles.decode_bundle(blob[:5], 2)
    with pytest.raises(TileError, match=r"^entry bundle: entry 1 runs past the end$"):
        tiles.decode_bundle(blob[:7], 2)
    assert tiles.decode_bundle(b"", 0) == []


def test_bundle_ending_with_an_empty_entry():
    """The last entry's two-byte length prefix may be all that is left."""
    blob = tiles.encode_bundle([b"ab", b""])
    assert blob[-2:] == b"\x00\x00" and tiles.decode_bundle(blob, 2) == [b"ab", b""]


def test_reader_bounds(store):
    with pytest.raises(TileError, match=r"^tree size -1 is negative$"):
        tiles.TileReader(store.read_tile, -1)
    reader = tiles.TileReader(store.read_tile, 300)
    assert reader.node(0, 299) == LEAVES[299]
    assert reader.node(8, 0) == merkle.root_of(LEAVES[:256])
    assert reader.node(5, 8) == merkle.root_of(LEAVES[256:288])
    with pytest.raises(TileError, match=r"^subtree 300 of height 0 is not in a tree of size 300$"):
        reader.node(0, 300)
    with pytest.raises(TileError, match=r"^subtree 1 of height 8 is not in a tree of size 300$"):
        reader.node(8, 1)
    assert reader.range_root(256, 300) == merkle.root_of(LEAVES[256:300])
    assert reader.range_root(0, 300) == merkle.root_of(LEAVES)
    for lo, hi in [(0, 301), (-1, 3), (5, 5)]:
        with pytest.raises(TileError, match=rf"^leaf range \[{lo}, {hi}\) is not in a tree"):
            reader.range_root(lo, hi)
    with pytest.raises(TileError, match=r"^leaf range \[1, 3\) is not aligned$"):
        reader.range_root(1, 3)


def test_reading_beyond_the_tree_names_the_tile(store):
    reader = tiles.TileReader(store.read_tile, 300)
    with pytest.raises(TileError, match=r"^tile tile/0/002 is beyond tree size 300$"):
        reader._tile(0, 2)
    assert tiles.tree_root(store.read_tile, 0) == merkle.EMPTY_ROOT


def test_each_tile_is_read_once_per_reader(store):
    store.reads = 0
    reader = tiles.TileReader(store.read_tile, 300)
    for index in range(300):
        reader.node(0, index)
    assert store.reads == reader.reads == 2


@pytest.mark.parametrize("index, size", [(300, 300), (-1, 300), (0, 0)])
def test_inclusion_outside_the_tree(store, index, size):
    with pytest.raises(TileError, match=rf"^leaf index {index} is not in a tree of size {size}$"):
        tiles.inclusion_proof(store.read_tile, size, index)


@pytest.mark.parametrize("size1, size2", [(0, 300), (301, 300), (-1, 5)])
def test_consistency_outside_the_tree(store, size1, size2):
    with pytest.raises(TileError, match=rf"^consistency proof needs 0 < size1 <= size2, got "
                                        rf"{size1}, {size2}$"):
        tiles.consistency_proof(store.read_tile, size1, size2)


def test_edges_of_the_proofs(store):
    assert tiles.inclusion_proof(store.read_tile, 1, 0) == []
    assert tiles.consistency_proof(store.read_tile, 300, 300) == []
    for size1 in (1, 255, 256, 257, 299):
        assert tiles.consistency_proof(store.read_tile, size1, 300) == \
            merkle.consistency_proof(LEAVES, size1, 300), size1
    for index in (0, 255, 256, 299):
        assert tiles.inclusion_proof(store.read_tile, 300, index) == \
            merkle.inclusion_proof(LEAVES, index), index


def test_append_refuses_a_leaf_hash_of_another_length():
    for bad in (b"\x00" * 31, b"\x00" * 33):
        with pytest.raises(TileError, match=rf"^leaf hash of {len(bad)} bytes, expected 32$"):
            tiles.append_leaves(Store().read_tile, 0, [bad])


def test_append_refuses_a_short_edge_tile(store):
    def short(level, index, width):
        return store.read_tile(level, index, width)[:-1]
    with pytest.raises(TileError, match=r"^tile/0/001\.p/44: 1407 bytes, expected 1408$"):
        tiles.append_leaves(short, 300, [LEAVES[0]])


def test_append_writes_only_the_edge_tiles():
    s = Store()
    size, changed = tiles.append_leaves(s.read_tile, 0, LEAVES[:256])
    assert size == 256 and set(changed) == {(0, 0), (1, 0)}
    assert changed[(1, 0)] == merkle.root_of(LEAVES[:256]) and s.reads == 0
    s.tiles.update(changed)
    size, changed = tiles.append_leaves(s.read_tile, 256, LEAVES[256:300])
    assert size == 300 and set(changed) == {(0, 1)} and s.reads == 0
    assert changed[(0, 1)] == b"".join(LEAVES[256:300])
