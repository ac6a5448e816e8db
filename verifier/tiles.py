"""The log's tree as tiles (the tlog-tiles layout), and proofs read from them.

A tile at level L holds up to 256 hashes of perfect subtrees of 256**L leaves each, in
leaf order; tile N covers the level's hashes 256*N .. 256*N+255. A partial tile (fewer
than 256 hashes) is named by its width. Every RFC 9162 proof node is the root of a range
of leaves that splits into O(log n) perfect subtrees, and each perfect subtree's root is
one stored hash or the root of at most 128 hashes of one tile, so a proof costs O(log n)
tile reads however large the log. No storage here: callers pass ``read_tile``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from cards import merkle
from cards.errors import LaminateError

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
HASH_SIZE = 32
MAX_ENTRY = 0xFFFF

ReadTile = Callable[[int, int, int], bytes]


class TileError(LaminateError):
    """A tile that is missing, of the wrong length, or a request outside the tree."""


# ---------------------------------------------------------------- paths

def encode_index(n: int) -> str:
    """The path form of a tile index: 3-digit groups, all but the last prefixed 'x'."""
    if n < 0:
        raise TileError(f"tile index {n} is negative")
    groups = [f"{n % 1000:03d}"]
    n //= 1000
    while n:
        groups.append(f"x{n % 1000:03d}")
        n //= 1000
    return "/".join(reversed(groups))


def tile_path(level: int, index: int, width: int = TILE_WIDTH) -> str:
    """``tile/<L>/<N>[.p/<W>]``; the level-'entries' form is ``entries_path``."""
    if not 0 <= level < 64 or not 1 <= width <= TILE_WIDTH:
        raise TileError(f"tile level {level} / width {width} out of range")
    suffix = "" if width == TILE_WIDTH else f".p/{width}"
    return f"tile/{level}/{encode_index(index)}{suffix}"


def entries_path(index: int, width: int = TILE_WIDTH) -> str:
    if not 1 <= width <= TILE_WIDTH:
        raise TileError(f"entry bundle width {width} out of range")
    suffix = "" if width == TILE_WIDTH else f".p/{width}"
    return f"tile/entries/{encode_index(index)}{suffix}"


def parse_tile_path(path: str) -> tuple[str, int, int]:
    """('<level>' or 'entries', index, width) of a tile path; TileError on anything else,
    including non-canonical index forms (so one tile has exactly one name)."""
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != "tile" or len(parts) > 12:
        raise TileError(f"{path!r}: not a tile path")
    level = parts[1]
    if level != "entries" and not (level.isdigit() and str(int(level)) == level
                                   and int(level) < 64):
        raise TileError(f"{path!r}: bad tile level")
    rest, width = parts[2:], TILE_WIDTH
    if len(rest) >= 2 and rest[-2].endswith(".p"):
        w = rest[-1]
        if not (w.isdigit() and str(int(w)) == w and 1 <= int(w) < TILE_WIDTH):
            raise TileError(f"{path!r}: bad partial width")
        width = int(w)
        rest = rest[:-2] + [rest[-2][:-2]]
    index = 0
    for i, group in enumerate(rest):
        digits = group[1:] if i < len(rest) - 1 and group.startswith("x") else group
        if len(digits) != 3 or not digits.isdigit() or (i < len(rest) - 1) != (digits != group):
            raise TileError(f"{path!r}: bad tile index element {group!r}")
        index = index * 1000 + int(digits)
    if len(rest) > 1 and rest[0] == "x000":
        raise TileError(f"{path!r}: tile index has a leading zero group")
    return level, index, width


def tile_width(level: int, index: int, tree_size: int) -> int:
    """How many hashes tile (level, index) holds in a tree of ``tree_size`` leaves
    (0 when the tree does not reach it)."""
    count = tree_size >> (TILE_HEIGHT * level)
    return max(0, min(TILE_WIDTH, count - index * TILE_WIDTH))


# ---------------------------------------------------------------- entry bundles

def encode_bundle(entries: Iterable[bytes]) -> bytes:
    """An entry bundle: each entry as a big-endian 16-bit length and its bytes."""
    out = bytearray()
    for data in entries:
        if len(data) > MAX_ENTRY:
            raise TileError(f"entry of {len(data)} bytes is over the {MAX_ENTRY}-byte limit")
        out += len(data).to_bytes(2, "big") + data
    return bytes(out)


def decode_bundle(blob: bytes, width: int) -> list[bytes]:
    """The ``width`` entries of a bundle; TileError unless it holds exactly that many."""
    entries: list[bytes] = []
    pos = 0
    while pos < len(blob) and len(entries) < TILE_WIDTH:
        if pos + 2 > len(blob):
            raise TileError("entry bundle: truncated length prefix")
        n = int.from_bytes(blob[pos:pos + 2], "big")
        if pos + 2 + n > len(blob):
            raise TileError(f"entry bundle: entry {len(entries)} runs past the end")
        entries.append(bytes(blob[pos + 2:pos + 2 + n]))
        pos += 2 + n
    if pos != len(blob) or len(entries) != width:
        raise TileError(f"entry bundle holds {len(entries)} entries, expected {width}")
    return entries


# ---------------------------------------------------------------- reading the tree

class TileReader:
    """Subtree roots of the tree of ``tree_size`` leaves, from tiles; each tile is read
    and its internal tree hashed once per reader (a reader serves one proof or one
    root). ``memo`` (get / item assignment) keeps internal trees across readers: a tile
    of a given width never changes. With ``plan`` nothing is hashed: the reader only
    asks ``read_tile`` for every tile the computation needs, and answers zeros."""

    def __init__(self, read_tile: ReadTile, tree_size: int, memo=None, plan: bool = False):
        if tree_size < 0:
            raise TileError(f"tree size {tree_size} is negative")
        self.read_tile = read_tile
        self.tree_size = tree_size
        self.memo, self.plan = memo, plan
        self._tiles: dict[tuple[int, int], bytes] = {}
        self._trees: dict[tuple[int, int, int], list[list[bytes]]] = {}
        self.reads = 0

    def _tile(self, level: int, index: int) -> bytes:
        key = (level, index)
        tile = self._tiles.get(key)
        if tile is None:
            width = tile_width(level, index, self.tree_size)
            if width == 0:
                raise TileError(f"tile {tile_path(level, index)} is beyond tree size "
                                f"{self.tree_size}")
            tile = bytes(self.read_tile(level, index, width))
            self.reads += 1
            if len(tile) != width * HASH_SIZE:
                raise TileError(f"{tile_path(level, index, width)}: {len(tile)} bytes, "
                                f"expected {width * HASH_SIZE}")
            self._tiles[key] = tile
        return tile

    def _layers(self, level: int, index: int) -> list[list[bytes]]:
        """The tile's internal tree: layer k holds the roots of its aligned runs of
        2**k hashes (only whole runs: a partial tile's last run may be missing)."""
        key = (level, index, tile_width(level, index, self.tree_size))
        layers = self._trees.get(key)
        if layers is None and self.memo is not None:
            layers = self.memo.get(key)
        if layers is None:
            tile = self._tile(level, index)
            layer = [tile[i:i + HASH_SIZE] for i in range(0, len(tile), HASH_SIZE)]
            layers = [layer]
            while len(layer) > 1:
                layer = [merkle.node_hash(layer[i], layer[i + 1])
                         for i in range(0, len(layer) - 1, 2)]
                layers.append(layer)
            if self.memo is not None:
                self.memo[key] = layers
        self._trees[key] = layers
        return layers

    def node(self, height: int, index: int) -> bytes:
        """Root of the perfect subtree of 2**height leaves starting at leaf
        index * 2**height; it must lie inside the tree."""
        if (index + 1) << height > self.tree_size:
            raise TileError(f"subtree {index} of height {height} is not in a tree of "
                            f"size {self.tree_size}")
        level, rem = divmod(height, TILE_HEIGHT)
        first = index << rem                     # first hash at this tile level
        if self.plan:
            self._tile(level, first >> TILE_HEIGHT)
            return bytes(HASH_SIZE)
        layers = self._layers(level, first >> TILE_HEIGHT)
        return layers[rem][(first & (TILE_WIDTH - 1)) >> rem]

    def range_root(self, lo: int, hi: int) -> bytes:
        """RFC 9162 root of leaves [lo, hi) where lo is a multiple of the largest power
        of two not above hi - lo (true of every range a proof names)."""
        if not 0 <= lo < hi <= self.tree_size:
            raise TileError(f"leaf range [{lo}, {hi}) is not in a tree of size {self.tree_size}")
        parts = []
        pos = lo
        for height in range((hi - lo).bit_length() - 1, -1, -1):
            if (hi - lo) >> height & 1:
                if pos % (1 << height):
                    raise TileError(f"leaf range [{lo}, {hi}) is not aligned")
                parts.append(self.node(height, pos >> height))
                pos += 1 << height
        root = parts[-1]
        for left in reversed(parts[:-1]):
            root = merkle.node_hash(left, root)
        return root

    def root(self) -> bytes:
        return merkle.EMPTY_ROOT if self.tree_size == 0 else self.range_root(0, self.tree_size)


def _split(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(read_tile: ReadTile, tree_size: int, index: int,
                    memo=None, plan: bool = False) -> list[bytes]:
    """PATH(index, D[tree_size]) of RFC 9162, leaf-side sibling first, from tiles."""
    if not 0 <= index < tree_size:
        raise TileError(f"leaf index {index} is not in a tree of size {tree_size}")
    reader = TileReader(read_tile, tree_size, memo, plan)
    proof, lo, hi = [], 0, tree_size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index - lo < k:
            proof.append(reader.range_root(lo + k, hi))
            hi = lo + k
        else:
            proof.append(reader.range_root(lo, lo + k))
            lo += k
    proof.reverse()
    return proof


def consistency_proof(read_tile: ReadTile, size1: int, size2: int,
                      memo=None, plan: bool = False) -> list[bytes]:
    """PROOF(size1, D[size2]) of RFC 9162 from the tiles of the tree of ``size2``."""
    if not 0 < size1 <= size2:
        raise TileError(f"consistency proof needs 0 < size1 <= size2, got {size1}, {size2}")
    reader = TileReader(read_tile, size2, memo, plan)
    proof: list[bytes] = []
    lo, hi, m, complete = 0, size2, size1, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            proof.append(reader.range_root(lo + k, hi))
            hi = lo + k
        else:
            proof.append(reader.range_root(lo, lo + k))
            lo += k
            m -= k
            complete = False
    if not complete:
        proof.append(reader.range_root(lo, hi))
    proof.reverse()
    return proof


def tree_root(read_tile: ReadTile, tree_size: int, memo=None, plan: bool = False) -> bytes:
    return TileReader(read_tile, tree_size, memo, plan).root()


# ---------------------------------------------------------------- appending

def append_leaves(read_tile: ReadTile, tree_size: int,
                  leaf_hashes: Iterable[bytes]) -> tuple[int, dict[tuple[int, int], bytes]]:
    """Append leaf hashes to the tree of ``tree_size`` leaves. Returns the new size and
    the tiles that changed, {(level, index): full or partial tile bytes}; only the
    rightmost tile of each level is read, so a batch costs O(batch + log n)."""
    edge: dict[int, bytearray] = {}          # level -> its rightmost tile, growing
    edge_index: dict[int, int] = {}
    changed: dict[tuple[int, int], bytes] = {}
    size = tree_size

    def push(level: int, h: bytes, count: int) -> None:
        # count = hashes at this level before h
        index, width = divmod(count, TILE_WIDTH)
        tile = edge.get(level)
        if tile is None or edge_index[level] != index:
            tile = bytearray(read_tile(level, index, width)) if width else bytearray()
            if len(tile) != width * HASH_SIZE:
                raise TileError(f"{tile_path(level, index, max(width, 1))}: {len(tile)} "
                                f"bytes, expected {width * HASH_SIZE}")
            edge[level], edge_index[level] = tile, index
        tile += h
        changed[(level, index)] = bytes(tile)
        if width + 1 == TILE_WIDTH:
            hashes = [bytes(tile[i:i + HASH_SIZE]) for i in range(0, len(tile), HASH_SIZE)]
            push(level + 1, merkle.root_of(hashes), count >> TILE_HEIGHT)

    for h in leaf_hashes:
        if len(h) != HASH_SIZE:
            raise TileError(f"leaf hash of {len(h)} bytes, expected {HASH_SIZE}")
        push(0, bytes(h), size)
        size += 1
    return size, changed
