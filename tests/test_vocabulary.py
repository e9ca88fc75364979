"""The ORB vocabulary and the inverted file, on ORB features of the repo's real photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_retrieval import verify, vocabulary
from edge_retrieval.errors import ModelError
from edge_retrieval.preprocess import read_image
from edge_retrieval.vocabulary import FAR, NO_MATCH, InvertedFile, Vocabulary

# a frame descriptor with a few flipped bits still finds its gallery descriptor among the
# probed leaves this often (measured ≈ 0.97 on these photos)
MIN_NEAREST_RECALL = 0.9
FLIPPED_BITS = 8


@pytest.fixture(scope="module")
def descriptors(photos) -> np.ndarray:
    return np.concatenate([verify.extract(read_image(p), 500, 512).descriptors for p in sorted(photos.glob("*.jpg"))])


@pytest.fixture(scope="module")
def small_vocabulary(descriptors) -> Vocabulary:
    return Vocabulary.learn(descriptors, nodes=8, branching=8, iterations=4)


def brute_force(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    distances, _ = cv2.batchDistance(queries, gallery, cv2.CV_32S, normType=cv2.NORM_HAMMING, K=2)
    return distances


def flipped(descriptors: np.ndarray, bits: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    unpacked = np.unpackbits(descriptors, axis=1)
    for row in unpacked:
        row[rng.choice(vocabulary.BITS, bits, replace=False)] ^= 1
    return np.packbits(unpacked, axis=1)


def test_hamming_counts_bits_from_0_to_256(descriptors):
    x = descriptors[:1]
    a = np.concatenate([descriptors[:298], x, x])
    b = np.concatenate([descriptors[300:598], x, ~x])  # the last two: the same (0), the complement (256)
    got = vocabulary._bits(vocabulary._words(a) ^ vocabulary._words(b))  # the Hamming distance
    want = [cv2.norm(x, y, cv2.NORM_HAMMING) for x, y in zip(a, b)]
    assert got.tolist() == want and got[-2] == 0 and got[-1] == 256


def test_probing_every_leaf_is_exact(descriptors, small_vocabulary):
    gallery, queries = descriptors[::2], flipped(descriptors[1::40], FLIPPED_BITS)
    index = InvertedFile(small_vocabulary, gallery)
    distance, position = index.nearest2(queries, nodes=8, leaves=64)
    assert np.array_equal(distance, brute_force(queries, gallery))
    mine = np.array([[cv2.norm(q, gallery[p], cv2.NORM_HAMMING) for p in row] for q, row in zip(queries, position)])
    assert np.array_equal(mine, distance)


def reference_assign(vocab: Vocabulary, queries: np.ndarray, nodes: int, leaves: int) -> np.ndarray:
    """Vocabulary.assign spelled out: Hamming distances to every node and leaf by brute force, the
    chosen nodes' children scored 256 − 2·distance (a product of ±1 signs) in the order the nodes
    were chosen, the same selection of the best among them (ties: as NumPy's argpartition picks)."""
    k2 = vocab.branching
    to_nodes = (vocabulary.BITS - 2 * brute_force_all(queries, vocab.nodes)).astype(np.float32)
    top = np.argmax(to_nodes, 1)[:, None] if nodes == 1 else np.argpartition(-to_nodes, nodes - 1, axis=1)[:, :nodes]
    ids = (top[:, :, None] * k2 + np.arange(k2)).reshape(len(queries), -1)
    to_leaves = brute_force_all(queries, vocab.leaves)
    scores = (vocabulary.BITS - 2 * np.take_along_axis(to_leaves, ids, 1)).astype(np.float32)
    pick = np.argmax(scores, 1)[:, None] if leaves == 1 else np.argpartition(-scores, leaves - 1, axis=1)[:, :leaves]
    return np.take_along_axis(ids, pick, 1)


def brute_force_all(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Every query's Hamming distance to every gallery descriptor: |a| + |b| − 2·a·b on the bits."""
    a, b = np.unpackbits(queries, axis=1).astype(np.float32), np.unpackbits(gallery, axis=1).astype(np.float32)
    return (a.sum(1)[:, None] + b.sum(1)[None] - 2 * a @ b.T).astype(np.int64)


def reference_nearest2(vocab, gallery, queries, nodes, leaves):
    """InvertedFile.nearest2 spelled out, one frame descriptor at a time: every gallery descriptor
    in its probed leaves, sorted by (distance, leaf, position); the first two."""
    leaf_of = vocab.assign(gallery)[:, 0]
    probed = vocab.assign(queries, nodes, leaves)
    distance = np.full((len(queries), 2), FAR)
    position = np.full((len(queries), 2), NO_MATCH)
    for i, (q, mine) in enumerate(zip(queries, probed)):
        near = np.flatnonzero(np.isin(leaf_of, mine))
        d = brute_force_all(q[None], gallery[near])[0] if len(near) else np.empty(0, int)
        best = near[np.lexsort((near, leaf_of[near], d))][:2]
        distance[i, : len(best)] = np.sort(d)[:2]
        position[i, : len(best)] = best
    return distance, position


@pytest.mark.parametrize("nodes, leaves", [(1, 1), (2, 8), (3, 5)])
def test_assign_equals_its_reference(descriptors, nodes, leaves):
    vocab = Vocabulary.load()
    queries = np.concatenate([descriptors[::3], flipped(descriptors[1::3], FLIPPED_BITS)])
    assert np.array_equal(vocab.assign(queries, nodes, leaves), reference_assign(vocab, queries, nodes, leaves))


@pytest.mark.parametrize("nodes, leaves", [(2, 8), (1, 3)])
def test_nearest2_equals_its_reference(descriptors, nodes, leaves):
    """Real ORB descriptors of the bundled photos; duplicates in the gallery and copies of gallery
    descriptors among the queries, so that equal distances (ties) are many."""
    vocab = Vocabulary.load()
    gallery = np.concatenate([descriptors[::2], descriptors[:400:2]])
    queries = np.concatenate([descriptors[:600:2], flipped(descriptors[1::6], FLIPPED_BITS)])
    got = InvertedFile(vocab, gallery).nearest2(queries, nodes, leaves)
    want = reference_nearest2(vocab, gallery, queries, nodes, leaves)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert (got[0][:200] == 0).all()  # the first 200 queries are in the gallery twice: ties at 0


def test_wide_keys_give_the_same(descriptors):
    """Galleries of 2²³ descriptors and more pair distance and position in uint64 keys."""
    vocab = Vocabulary.load()
    index = InvertedFile(vocab, descriptors)
    queries = flipped(descriptors[::5], FLIPPED_BITS)
    narrow = index.nearest2(queries)
    index._key, index._shift = np.uint64, 32
    wide = index.nearest2(queries)
    assert np.array_equal(narrow[0], wide[0]) and np.array_equal(narrow[1], wide[1])


def test_the_shipped_vocabulary_finds_near_copies(descriptors):
    vocab = Vocabulary.load()
    assert vocab.nodes.shape == (64, 32) and vocab.leaves.shape == (64 * 64, 32)
    index = InvertedFile(vocab, descriptors)
    picked = np.arange(0, len(descriptors), 7)
    distance, position = index.nearest2(flipped(descriptors[picked], FLIPPED_BITS))
    assert np.mean(position[:, 0] == picked) >= MIN_NEAREST_RECALL
    assert (distance[:, 0] <= distance[:, 1]).all()


def test_an_empty_index_and_an_empty_frame(small_vocabulary, descriptors):
    distance, position = InvertedFile(small_vocabulary, np.empty((0, 32), np.uint8)).nearest2(descriptors[:5])
    assert (position == NO_MATCH).all() and (distance == FAR).all()
    distance, position = InvertedFile(small_vocabulary, descriptors).nearest2(np.empty((0, 32), np.uint8))
    assert distance.shape == position.shape == (0, 2)


def test_a_lone_gallery_descriptor_has_no_second_neighbour(small_vocabulary, descriptors):
    distance, position = InvertedFile(small_vocabulary, descriptors[:1]).nearest2(descriptors[:1], nodes=8, leaves=64)
    assert distance.tolist() == [[0, FAR]] and position.tolist() == [[0, NO_MATCH]]


def test_save_and_load(tmp_path, small_vocabulary, descriptors):
    small_vocabulary.save(tmp_path / "v.npz", source="test")
    again = Vocabulary.load(tmp_path / "v.npz")
    assert np.array_equal(again.leaves, small_vocabulary.leaves)
    assert np.array_equal(again.assign(descriptors[:50]), small_vocabulary.assign(descriptors[:50]))


def test_a_malformed_vocabulary_is_refused(small_vocabulary):
    with pytest.raises(ValueError, match="vocabulary needs"):
        Vocabulary(small_vocabulary.nodes, small_vocabulary.leaves[:-1])
    with pytest.raises(ValueError, match="vocabulary needs"):
        Vocabulary(small_vocabulary.nodes.astype(np.int16), small_vocabulary.leaves)


def test_learn_vocabulary_tool(tmp_path, photos):
    from tools import learn_vocabulary

    assert learn_vocabulary.main(["--photos", str(photos), "--out", str(tmp_path / "v.npz")]) == 0
    vocab = Vocabulary.load(tmp_path / "v.npz")
    assert vocab.leaves.shape == (learn_vocabulary.NODES * learn_vocabulary.BRANCHING, 32)


@pytest.mark.parametrize("content", [b"", b"not a zip", b"PK\x03\x04 truncated"])
def test_a_damaged_vocabulary_file_is_one_clear_error(tmp_path, content):
    (tmp_path / "v.npz").write_bytes(content)
    with pytest.raises(ModelError, match=r"v\.npz: not a usable ORB vocabulary"):
        Vocabulary.load(tmp_path / "v.npz")


def test_a_vocabulary_of_the_wrong_shape_is_one_clear_error(tmp_path):
    np.savez(tmp_path / "v.npz", nodes=np.zeros((4, 16), np.uint8), leaves=np.zeros((16, 16), np.uint8))
    with pytest.raises(ModelError, match="vocabulary needs"):
        Vocabulary.load(tmp_path / "v.npz")
    with pytest.raises(ModelError, match="not a usable"):
        Vocabulary.load(tmp_path / "missing.npz")
