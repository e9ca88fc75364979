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
    got = vocabulary.hamming(vocabulary._words(a), vocabulary._words(b))
    want = [cv2.norm(x, y, cv2.NORM_HAMMING) for x, y in zip(a, b)]
    assert got.tolist() == want and got[-2] == 0 and got[-1] == 256


def test_probing_every_leaf_is_exact(descriptors, small_vocabulary):
    gallery, queries = descriptors[::2], flipped(descriptors[1::40], FLIPPED_BITS)
    index = InvertedFile(small_vocabulary, gallery)
    distance, position = index.nearest2(queries, nodes=8, leaves=64)
    assert np.array_equal(distance, brute_force(queries, gallery))
    mine = np.array([[cv2.norm(q, gallery[p], cv2.NORM_HAMMING) for p in row] for q, row in zip(queries, position)])
    assert np.array_equal(mine, distance)


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
