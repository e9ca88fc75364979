"""Nearest gallery features of a frame without comparing it with every one of them.

A frame's 2000 ORB descriptors against the ~100k of a 200-item gallery is 2·10⁸ Hamming
distances, ≈ 0.8 s with OpenCV's brute force here. A *vocabulary* (a two-level tree of binary
centroids, learned once from distractor photos by `tools/learn_vocabulary.py` and shipped in
`data/`) sends every descriptor to a leaf; the `InvertedFile` keeps the gallery's descriptors
grouped by leaf, and a frame descriptor is compared only with those in its nearest
`LEAVES_PROBED` leaves: ≈ 3·10⁵ distances, a few milliseconds in NumPy.

Descriptors are 32-byte ORB descriptors (256 bits). Two representations serve two kinds of
comparison: ±1 float32 signs, so that the distances to the 64 top-level nodes are one BLAS
product (Hamming = (256 − a·b) / 2), and four uint64 words (`np.bitwise_count`) for a node's
children and the gallery pairs, where each descriptor meets different rows. The frame's
descriptors go CHUNK at a time, so that their ≈ 70k pairs stay in the core's cache.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelError, one_line

BITS = 256
BYTES = BITS // 8
VOCABULARY = Path(__file__).resolve().parent / "data" / "orb_vocabulary.npz"
NODES_PROBED = 2  # top-level nodes searched for a frame descriptor's leaves
LEAVES_PROBED = 8  # leaves (among those nodes' children) whose gallery descriptors are compared
NO_MATCH = -1
FAR = BITS + 1  # the distance reported when there is no (second) neighbour
ALL_SET = np.uint64(2**64 - 1)
CHUNK = 256  # frame descriptors searched at once: their pairs stay in the core's cache


def signs(descriptors: np.ndarray) -> np.ndarray:
    """(n, 32) uint8 → (n, 256) float32 of ±1."""
    return np.unpackbits(descriptors, axis=1).astype(np.float32) * 2 - 1


def _words(descriptors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(descriptors, np.uint8).view(np.uint64)  # (n, 4)


def _bits(x: np.ndarray) -> np.ndarray:
    """Set bits of each row of an (n, 4) uint64 array → (n,) uint32."""
    counts = np.bitwise_count(x)  # (n, 4) uint8, each ≤ 64
    # the four counts, read as one little-endian uint32, summed by one multiply into the top
    # byte; 256 (every bit set) wraps to 0, so it is mapped back
    total = counts.view(np.uint32).ravel()
    total *= np.uint32(0x01010101)
    total >>= np.uint32(24)
    zero = np.flatnonzero(total == 0)
    total[zero[x[zero, 0] == ALL_SET]] = BITS
    return total


def _majority(descriptors: np.ndarray, k: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """k binary centroids (k-majority: k-means in Hamming space, each centroid the bitwise
    majority of its members)."""
    if len(descriptors) <= k:
        return (
            np.concatenate([descriptors, descriptors[rng.integers(0, max(len(descriptors), 1), k - len(descriptors))]])
            if len(descriptors)
            else np.zeros((k, BYTES), np.uint8)
        )
    centroids = descriptors[rng.choice(len(descriptors), k, replace=False)]
    bits = np.unpackbits(descriptors, axis=1).astype(np.float32)
    s = bits * 2 - 1
    for _ in range(iterations):
        nearest = np.argmax(s @ signs(centroids).T, axis=1)
        members = np.zeros((len(descriptors), k), np.float32)
        members[np.arange(len(descriptors)), nearest] = 1
        counts = members.sum(0)
        centroids = np.packbits((members.T @ bits) > counts[:, None] / 2, axis=1)
        empty = counts == 0
        centroids[empty] = descriptors[rng.choice(len(descriptors), int(empty.sum()), replace=False)]
    return centroids


@dataclass(frozen=True)
class Vocabulary:
    nodes: np.ndarray  # (k1, 32) uint8: the top-level centroids
    leaves: np.ndarray  # (k1 · k2, 32) uint8: node i's children are rows i·k2 … i·k2 + k2 − 1

    def __post_init__(self):
        k1 = len(self.nodes)
        if (
            self.nodes.ndim != 2
            or self.nodes.shape[1] != BYTES
            or k1 == 0
            or len(self.leaves) % k1
            or self.leaves.shape[1:] != (BYTES,)
            or self.nodes.dtype != np.uint8
            or self.leaves.dtype != np.uint8
        ):
            raise ValueError(
                f"a vocabulary needs (k1, {BYTES}) nodes and (k1·k2, {BYTES}) leaves of uint8, "
                f"not {self.nodes.shape} {self.nodes.dtype} and {self.leaves.shape} {self.leaves.dtype}"
            )
        object.__setattr__(self, "_node_signs", np.ascontiguousarray(signs(self.nodes).T))
        object.__setattr__(
            self,
            "_leaf_words",  # (k1, 4, k2): each node's children, word by word
            np.ascontiguousarray(_words(self.leaves).reshape(k1, -1, 4).transpose(0, 2, 1)),
        )

    @property
    def branching(self) -> int:
        return len(self.leaves) // len(self.nodes)

    @classmethod
    def learn(
        cls, descriptors: np.ndarray, nodes: int = 64, branching: int = 64, iterations: int = 8, seed: int = 0
    ) -> Vocabulary:
        rng = np.random.default_rng(seed)
        top = _majority(descriptors, nodes, iterations, rng)
        nearest = np.argmax(signs(descriptors) @ signs(top).T, axis=1)
        leaves = np.concatenate(
            [_majority(descriptors[nearest == i], branching, iterations, rng) for i in range(nodes)]
        )
        return cls(top, leaves)

    @classmethod
    def load(cls, path: str | Path = VOCABULARY) -> Vocabulary:
        try:
            with np.load(path, allow_pickle=False) as f:
                return cls(f["nodes"], f["leaves"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise ModelError(
                f"{path}: not a usable ORB vocabulary ({one_line(e)}); reinstall the package or "
                "rebuild it with `python -m tools.learn_vocabulary`"
            ) from None

    def save(self, path: str | Path, **about: str) -> None:
        np.savez(path, nodes=self.nodes, leaves=self.leaves, **{k: np.array(v) for k, v in about.items()})

    def assign(self, descriptors: np.ndarray, nodes: int = 1, leaves: int = 1) -> np.ndarray:
        """(n, 32) descriptors → (n, leaves) ids of their nearest leaves among the children of
        their `nodes` nearest top-level nodes (the nearest first when leaves == 1)."""
        if len(descriptors) > CHUNK:  # bounded temporaries (the children's words are 2 kB a node)
            parts = range(0, len(descriptors), CHUNK)
            return np.concatenate([self.assign(descriptors[i : i + CHUNK], nodes, leaves) for i in parts])
        n, k2 = len(descriptors), self.branching
        near = signs(descriptors) @ self._node_signs
        top = np.argmax(near, 1)[:, None] if nodes == 1 else np.argpartition(-near, nodes - 1, axis=1)[:, :nodes]
        # the Hamming distance to each chosen node's children: XOR and bit count, word by word
        x = self._leaf_words[top]  # (n, nodes, 4, k2)
        x ^= _words(descriptors)[:, None, :, None]
        distance = np.bitwise_count(x).sum(2, dtype=np.int16).reshape(n, nodes * k2)
        scores = (BITS - 2 * distance).astype(np.float32)  # as a product of signs would score them
        ids = (top[:, :, None] * k2 + np.arange(k2)).reshape(n, nodes * k2)
        pick = (
            np.argmax(scores, 1)[:, None] if leaves == 1 else np.argpartition(-scores, leaves - 1, axis=1)[:, :leaves]
        )
        return np.take_along_axis(ids, pick, 1)


class InvertedFile:
    """The gallery's descriptors grouped by vocabulary leaf, each remembered by its position in
    the order they were given (the caller maps positions to items and points)."""

    def __init__(self, vocabulary: Vocabulary, descriptors: np.ndarray, leaves: np.ndarray | None = None):
        """`leaves`: the descriptors' nearest leaves (`vocabulary.assign(descriptors)[:, 0]`)
        if already known: assigning is most of the cost of building."""
        self.vocabulary = vocabulary
        descriptors = np.ascontiguousarray(descriptors, np.uint8).reshape(-1, BYTES)
        if leaves is None:
            leaves = vocabulary.assign(descriptors)[:, 0]
        leaf = np.asarray(leaves, np.int64)
        self._position = np.argsort(leaf, kind="stable")
        self._words = _words(descriptors[self._position])
        self._starts = np.searchsorted(leaf[self._position], np.arange(len(vocabulary.leaves) + 1))
        # a (distance, sorted position) pair as one integer key, the position in the low bits;
        # uint32 keys (half the memory traffic of int64) while 9 bits of distance leave room
        self._shift = len(self._position).bit_length()
        self._key = np.uint32 if self._shift + 9 <= 32 else np.uint64

    def __len__(self) -> int:
        return len(self._position)

    def nearest2(
        self, descriptors: np.ndarray, nodes: int = NODES_PROBED, leaves: int = LEAVES_PROBED
    ) -> tuple[np.ndarray, np.ndarray]:
        """The two nearest gallery descriptors of each frame descriptor among those in its
        probed leaves: (distances (n, 2), positions (n, 2)); FAR and NO_MATCH where fewer.
        Of equally near ones, the one first in leaf order, then in the order given."""
        n = len(descriptors)
        distance = np.full((n, 2), FAR, np.int64)
        position = np.full((n, 2), NO_MATCH, np.int64)
        if not n or not len(self):
            return distance, position
        words = _words(descriptors)
        for lo in range(0, n, CHUNK):
            part = slice(lo, lo + CHUNK)
            probed = self.vocabulary.assign(descriptors[part], nodes, leaves)
            self._nearest2(words[part], probed, distance[part], position[part])
        return distance, position

    def _nearest2(self, words: np.ndarray, probed: np.ndarray, distance: np.ndarray, position: np.ndarray) -> None:
        """`nearest2` of a chunk, written into its rows of `distance` and `position`."""
        key_type, shift = self._key, self._shift
        start = self._starts[probed]
        counts = self._starts[probed + 1] - start
        per_leaf, per_query = counts.ravel(), counts.sum(1)
        total = int(per_leaf.sum())
        if not total:
            return
        # every (frame descriptor, gallery descriptor in a probed leaf) pair, grouped by frame descriptor
        ref = np.repeat((start.ravel() - (np.cumsum(per_leaf) - per_leaf)).astype(key_type), per_leaf)
        ref += np.arange(total, dtype=key_type)
        x = self._words.take(ref, axis=0)
        x ^= np.repeat(words, per_query, axis=0)
        key = _bits(x).astype(key_type, copy=False)
        key <<= key_type(shift)
        key |= ref
        # the smallest and second smallest key of each frame descriptor
        has = np.flatnonzero(per_query)
        bounds = (np.cumsum(per_query) - per_query)[has]
        first = np.minimum.reduceat(key, bounds)
        none = np.iinfo(key_type).max
        key[key == np.repeat(first, per_query[has])] = none
        second = np.minimum.reduceat(key, bounds)
        low = key_type((1 << shift) - 1)
        distance[has, 0], position[has, 0] = first >> shift, self._position[first & low]
        ok = np.flatnonzero(second != none)
        second = second[ok]
        distance[has[ok], 1], position[has[ok], 1] = second >> shift, self._position[second & low]
