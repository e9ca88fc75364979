"""Regional descriptors and whitening, on real photos and the real models."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_retrieval import descriptors, regions
from edge_retrieval.embedder import Embedder
from edge_retrieval.modelcard import DEFAULT_MODEL
from edge_retrieval.preprocess import read_image

_EPSILON = 1e-4  # float32 round-off between the integral-image GeM and the direct one
REGIONAL_MODEL = DEFAULT_MODEL


@pytest.fixture(scope="module")
def regional():
    with Embedder(REGIONAL_MODEL) as emb:
        yield emb


def test_grid_boxes_cover_the_map_whole_first():
    boxes = regions.grid_boxes(8, 10, levels=3)
    assert boxes[0].tolist() == [0, 0, 8, 10]
    assert len(boxes) == 21 and len({tuple(b) for b in boxes}) == len(boxes)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 8).all() and (boxes[:, 3] <= 10).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert len(regions.grid_boxes(7, 7, levels=0)) == 1


def test_gem_boxes_equal_plain_gem():
    fmap = np.random.default_rng(0).random((8, 10, 16)).astype(np.float32)
    boxes = np.array([[0, 0, 8, 10], [2, 3, 6, 9]], np.int32)
    got = regions.gem_boxes(fmap, boxes, 3.0)
    assert np.allclose(got[0], descriptors.gem(fmap, 3.0), atol=_EPSILON)
    assert np.allclose(got[1], descriptors.gem(fmap[2:6, 3:9], 3.0), atol=_EPSILON)


def test_cells_for_a_frame_box():
    assert regions.cells_for((0.0, 0.0, 1.0, 1.0), 8, 10) == (0, 0, 8, 10)
    assert regions.cells_for((0.25, 0.5, 0.5, 0.75), 8, 10) == (4, 2, 6, 5)
    assert regions.cells_for((0.99, 0.99, 1.0, 1.0), 8, 10) == (7, 9, 8, 10)  # never empty


def test_whitening_whitens_and_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 32)) @ rng.normal(size=(32, 32))
    w = regions.Whitening.learn(x, 16)
    z = (descriptors.l2_normalize(x) - w.mean) @ w.proj.T
    assert np.allclose(np.cov(z.T), np.eye(16), atol=0.05)
    out = w(x[:5])
    assert out.shape == (5, 16) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=_EPSILON)
    w.save(tmp_path / "w.npz")
    back = regions.Whitening.load(tmp_path / "w.npz")
    assert np.allclose(back(x[:5]), out, atol=1e-2)  # the projection is stored as float16
    with pytest.raises(ValueError):
        regions.Whitening.learn(x[:10], 16)


def test_regions_row_zero_is_the_embedding(embedder, regional, photos):
    frame = read_image(photos / "cat.jpg")
    for emb in (embedder, regional):
        r = emb.regions(frame)
        assert r.vectors.shape[1] == emb.dim and np.allclose(r.boxes[0], [0, 0, 1, 1])
        assert np.allclose(np.linalg.norm(r.vectors, axis=1), 1, atol=_EPSILON)
        assert float(r.vectors[0] @ emb.embed(frame)[0]) > 1 - _EPSILON
    assert regional.dim == 256  # whitened and reduced from 1280, as its card says
    extra = regional.regions(frame, boxes=[(0.1, 0.1, 0.6, 0.6)])
    assert len(extra) == len(regional.regions(frame)) + 1


def test_a_region_finds_an_item_inside_a_scene(regional, photos):
    """The cat pasted into a fifth of a brick-wall frame: a region in the right place
    resembles the cat photo more than the whole frame does."""
    cat, scene = read_image(photos / "cat.jpg"), read_image(photos / "brick.jpg")
    frame = cv2.resize(scene, (640, 480))
    frame[60:300, 340:620] = cv2.resize(cat, (280, 240))
    item = regional.embed(cat)[0]
    r = regional.regions(frame)
    sims = r.vectors @ item
    assert sims.max() > sims[0]
    x0, y0, x1, y1 = r.boxes[int(np.argmax(sims))]
    assert x0 >= 0.4 and y1 <= 0.8  # the right part of the frame, towards the top
