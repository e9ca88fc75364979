"""Geometric verification and the identification of a frame, on the repo's real photos."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
from fakes import LARGE_QUAD, SMALL_QUAD, pasted, small_blurred_coins

from edge_retrieval import verify
from edge_retrieval.demo import ITEMS, photo
from edge_retrieval.embedder import Embedder
from edge_retrieval.enroll import enroll
from edge_retrieval.errors import GalleryError
from edge_retrieval.explain import draw
from edge_retrieval.modelcard import DEFAULT_MODEL
from edge_retrieval.preprocess import read_image
from edge_retrieval.recognize import PRESETS, open_recognizer, ranking_json
from edge_retrieval.storage.gallery import Gallery

CORNER_TOLERANCE_PX = 8.0
MIN_INLIERS_SAME = 30
MAX_INLIERS_OTHER = 12

SRC_QUAD = np.float32([[300, 70], [610, 100], [600, 400], [320, 430]])


def scene_with(item: np.ndarray, scene: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`item` warped onto a 640×480 frame of `scene`; returns the frame and the outline."""
    frame = cv2.resize(scene, (640, 480))
    h, w = item.shape[:2]
    H = cv2.getPerspectiveTransform(np.float32([[0, 0], [w, 0], [w, h], [0, h]]), SRC_QUAD)
    warped = cv2.warpPerspective(item, H, (640, 480))
    mask = cv2.warpPerspective(np.full((h, w), 255, np.uint8), H, (640, 480)) > 0
    frame[mask] = warped[mask]
    return frame, SRC_QUAD


@pytest.fixture
def cameraman_scene(photos) -> tuple[np.ndarray, np.ndarray]:
    """The cameraman photo tilted into a gravel scene: (frame, the photo's outline in it)."""
    return scene_with(read_image(photos / "cameraman.jpg"), read_image(photos / "gravel.jpg"))


@pytest.fixture(scope="module")
def regional():
    with Embedder(DEFAULT_MODEL) as emb:
        yield emb


def test_extract_caps_features(photos):
    f = verify.extract(read_image(photos / "astronaut.jpg"), 300, 256)
    assert 0 < len(f) <= 300 and f.descriptors.dtype == np.uint8 and f.descriptors.shape[1] == 32
    assert max(f.size) == 256 and (f.keypoints >= 0).all()


def test_verify_finds_the_outline_and_rejects_another_photo(photos):
    item = read_image(photos / "astronaut.jpg")
    frame, quad = scene_with(item, read_image(photos / "grass.jpg"))
    query = verify.extract(frame)
    enrolled = verify.extract(item, verify.GALLERY_FEATURES, verify.GALLERY_SIDE)
    v = verify.Verifier().verify(query, enrolled)
    assert v.inliers >= MIN_INLIERS_SAME and len(v.points) == v.inliers
    assert np.abs(v.quad - quad).max() < CORNER_TOLERANCE_PX
    other = verify.extract(read_image(photos / "coffee.jpg"), verify.GALLERY_FEATURES, verify.GALLERY_SIDE)
    assert verify.Verifier().verify(query, other).inliers <= MAX_INLIERS_OTHER


def test_a_blurred_frame_is_verified_at_the_query_fast_threshold(regional, photos):
    """Blur leaves few corners as strong as FAST's default asks: the recognizer detects the
    frame's at QUERY_FAST_THRESHOLD and so still finds the item's outline."""
    item = read_image(photos / "coffee.jpg")
    frame = cv2.GaussianBlur(scene_with(item, read_image(photos / "grass.jpg"))[0], (0, 0), 3)
    enrolled = verify.extract(item, verify.GALLERY_FEATURES, verify.GALLERY_SIDE)
    at_default = verify.extract(frame)
    at_query = verify.extract(frame, fast_threshold=verify.QUERY_FAST_THRESHOLD)
    assert len(at_query) > 2 * len(at_default)
    assert verify.Verifier().verify(at_default, enrolled).inliers == 0
    assert verify.Verifier().verify(at_query, enrolled).inliers > 0
    with Gallery(":memory:") as g:
        enroll(g, regional, [("coffee", photos / "coffee.jpg"), ("cat", photos / "cat.jpg")])
        best = open_recognizer(regional, g).recognize(frame).best
        assert best.label == "coffee" and best.inliers > 0


def test_sift_matches_are_opencvs_brute_force_matches(photos, cameraman_scene):
    """match_sift's BLAS product finds what OpenCV's brute-force L2 matcher and the ratio test find."""
    frame, _ = cameraman_scene
    query = verify.extract_sift(frame)
    photo = verify.extract_sift(read_image(photos / "cameraman.jpg"), max_side=verify.SIFT_GALLERY_SIDE)
    assert max(query.size) == verify.SIFT_QUERY_SIDE and max(photo.size) == verify.SIFT_GALLERY_SIDE
    assert photo.descriptors.dtype == np.uint8 and photo.descriptors.shape == (len(photo), 128)
    mine, theirs = verify.match_sift(query, photo)
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(
        query.descriptors.astype(np.float32), photo.descriptors.astype(np.float32), k=2
    )
    expected = {(m.queryIdx, m.trainIdx) for m, n in pairs if m.distance < verify.RATIO * n.distance}
    assert len(expected) > 30 and set(zip(mine.tolist(), theirs.tolist())) == expected


def test_the_second_verifier_names_a_small_blurred_item_orb_cannot(regional, demo_gallery, photos):
    """Small and blurred, the coins have no ORB inliers left: without SIFT the frame is unknown;
    with it, the coins are named with their outline."""
    frame = small_blurred_coins(photos)
    orb_only = open_recognizer(regional, demo_gallery, replace(PRESETS["default"], sift=False)).recognize(frame)
    assert orb_only.label is None and orb_only.best.inliers == 0
    result = open_recognizer(regional, demo_gallery).recognize(frame)
    assert result.label == "coins" and result.best.inliers >= verify.SIFT_MIN_INLIERS
    assert np.abs(result.best.outline - SMALL_QUAD).max() < 3 * CORNER_TOLERANCE_PX


def quad_iou(a: np.ndarray, b: np.ndarray) -> float:
    masks = [cv2.fillConvexPoly(np.zeros((480, 640), np.uint8), q.astype(np.int32), 1) for q in (a, b)]
    return (masks[0] & masks[1]).sum() / (masks[0] | masks[1]).sum()


@pytest.mark.parametrize("name", ["coffee", "retina", "cameraman"])
def test_the_dense_verifier_names_a_blurred_item_orb_and_sift_cannot(regional, demo_gallery, photos, name):
    """Large, tilted and blurred σ 6: no ORB or SIFT inliers, so without the dense verifier the
    frame is unknown; with it the item is named, with its outline found by the alignment."""
    frame = pasted(photos, name, LARGE_QUAD, 6)
    without = open_recognizer(regional, demo_gallery, replace(PRESETS["default"], dense=False)).recognize(frame)
    assert without.label is None and without.best.label == name and without.best.inliers == 0
    result = open_recognizer(regional, demo_gallery).recognize(frame)
    assert result.label == name and result.best.inliers == 0 and result.best.aligned >= verify.DENSE_MIN_CC
    assert quad_iou(result.best.outline, LARGE_QUAD) > 0.85
    assert ranking_json(result, {})["matches"][0]["aligned"] == round(result.best.aligned, 4)


def test_the_dense_verifier_does_not_align_another_photo_or_an_item_never_enrolled(regional, demo_gallery, photos):
    frame = pasted(photos, "coffee", LARGE_QUAD, 6)
    gray = verify.gray_at_most(frame, verify.DENSE_FRAME_SIDE)
    mine = verify.align(gray, verify.extract_gray(read_image(photo("coffee"))).descriptors)
    assert mine.correlation >= verify.DENSE_MIN_CC
    for other in set(ITEMS) - {"coffee"}:
        assert verify.align(gray, verify.extract_gray(read_image(photo(other))).descriptors).correlation < 0.9
    for tiny in (np.zeros((1, 1), np.uint8), np.full((30, 23), 200, np.uint8)):  # too small, blank
        assert verify.align(tiny, verify.extract_gray(read_image(photo("coffee"))).descriptors).quad is None
    recognizer = open_recognizer(regional, demo_gallery)
    for background, sigma in (("grass", 2), ("gravel", 6), ("grass", 8)):  # the brick wall: never enrolled
        result = recognizer.recognize(pasted(photos, "brick", LARGE_QUAD, sigma, background))
        assert result.label is None and not result.best.aligned


def test_features_are_stored_per_item_and_removed_with_it(gallery, photos):
    f = verify.extract(read_image(photos / "cat.jpg"), 100, 256)
    item_id = gallery.add("cat", np.full((1, 8), 8**-0.5), model_sha256="a" * 64)
    gallery.add_features(item_id, verify.KIND, f.size, f.keypoints, f.descriptors, "cat.jpg")
    [(kind, size, kp, desc)] = gallery.features(item_id)
    assert kind == "orb" and size == f.size
    assert np.array_equal(kp, f.keypoints) and np.array_equal(desc, f.descriptors)
    gallery.remove("cat")
    assert gallery.features(item_id) == []


def test_a_grey_image_is_stored_as_a_row_of_no_points(gallery, photos):
    g = verify.extract_gray(read_image(photos / "cat.jpg"))
    assert g.size == (64, 43) and g.descriptors.shape == (43, 64) and not len(g.keypoints)
    item_id = gallery.add("cat", np.full((1, 8), 8**-0.5), model_sha256="a" * 64)
    gallery.add_features(item_id, verify.DENSE_KIND, g.size, g.keypoints, g.descriptors, "cat.jpg")
    [(kind, size, kp, image)] = gallery.features(item_id)
    assert kind == "gray" and size == g.size and kp.shape == (0, 2) and np.array_equal(image, g.descriptors)
    with pytest.raises(GalleryError, match="0 keypoints for 40 descriptors"):  # not the size given
        gallery.add_features(item_id, verify.DENSE_KIND, g.size, g.keypoints, g.descriptors[:40], "cat.jpg")


@pytest.fixture(scope="module")
def demo_gallery(regional, tmp_path_factory):
    with Gallery(tmp_path_factory.mktemp("g") / "g.db") as g:
        enroll(g, regional, [(name, photo(name)) for name in ITEMS], augment=2)
        yield g


def test_identify_an_item_in_a_scene_and_explain_it(regional, demo_gallery, cameraman_scene):
    frame, quad = cameraman_scene
    ident = open_recognizer(regional, demo_gallery)
    result = ident.recognize(frame)
    assert result.label == "cameraman" and result.best.inliers >= MIN_INLIERS_SAME
    assert result.score > result.threshold
    assert np.abs(result.best.outline - quad).max() < 3 * CORNER_TOLERANCE_PX
    picture = draw(frame, result)
    assert picture.shape == frame.shape and (picture != frame).any()
    fast = open_recognizer(regional, demo_gallery, "fast").recognize(frame)
    assert fast.best.label == "cameraman" and fast.best.inliers == 0


def test_identify_says_unknown_for_a_scene_without_an_item(regional, demo_gallery, photos):
    frame = cv2.resize(read_image(photos / "brick.jpg"), (640, 480))
    result = open_recognizer(regional, demo_gallery).recognize(frame)
    assert result.label is None and result.label is None
    assert draw(frame, result).shape == frame.shape


def test_identify_on_an_empty_gallery(regional, tmp_path, photos):
    with Gallery(tmp_path / "empty.db") as g:
        result = open_recognizer(regional, g).recognize(read_image(photos / "cat.jpg"))
    assert result.label is None and result.best is None


def test_votes_find_the_item_without_the_cnn_shortlist(regional, demo_gallery, cameraman_scene):
    frame, quad = cameraman_scene
    ident = open_recognizer(regional, demo_gallery)
    regions = regional.regions(frame, ident.preset.levels)
    found = sorted(ident.verified(frame, regions, []), key=lambda c: -c.score)  # the votes alone
    assert found[0].label == "cameraman" and found[0].inliers >= MIN_INLIERS_SAME
    assert found[0].votes > max([c.votes for c in found[1:]], default=0)
    assert np.abs(found[0].outline - quad).max() < 3 * CORNER_TOLERANCE_PX
    assert 0 < found[0].cosine <= 1.0001  # the CNN's view of a voted item is still reported


def test_a_new_enrolment_is_voted_for_at_once(regional, photos, tmp_path, cameraman_scene):
    frame, _ = cameraman_scene
    cv2.imwrite(str(tmp_path / "blank.png"), np.full((200, 300, 3), 128, np.uint8))
    with Gallery(tmp_path / "g.db") as g:
        enroll(g, regional, [("cat", photos / "cat.jpg"), ("blank", tmp_path / "blank.png")])
        blank = g.item("blank").id  # a photo without features (and its grey image, which has no points)
        assert [(f[0], len(f[2])) for f in g.features(blank)] == [("orb", 0), ("sift", 0), ("gray", 0)]
        ident = open_recognizer(regional, g)
        assert ident.recognize(frame).label is None
        enroll(g, regional, [("cameraman", photos / "cameraman.jpg")])
        result = ident.recognize(frame)
        assert result.label == "cameraman" and result.best.votes > 0 and result.best.inliers >= MIN_INLIERS_SAME


def test_an_item_enrolled_elsewhere_between_two_matrix_refreshes(regional, photos, tmp_path, cameraman_scene):
    """The local index follows the generation at once; the cached matrix within its refresh
    interval (the service: 0.25 s). A voted item missing from the matrix waits, no error."""
    frame, _ = cameraman_scene
    with Gallery(tmp_path / "g.db") as g, Gallery(tmp_path / "g.db") as other:
        enroll(g, regional, [("cat", photos / "cat.jpg")])
        g.refresh_interval = 3600.0
        ident = open_recognizer(regional, g)
        assert ident.recognize(frame).label is None
        enroll(other, regional, [("cameraman", photos / "cameraman.jpg")])
        assert ident.recognize(frame).label is None  # voted for, but not in the matrix yet
        g.refresh_interval = 0.0
        assert ident.recognize(frame).label == "cameraman"


def test_the_local_index_follows_enrolments_and_removals_incrementally(regional, photos, tmp_path, cameraman_scene):
    from edge_retrieval.recognize.regional import LocalIndex
    from edge_retrieval.vocabulary import Vocabulary

    vocab = Vocabulary.load()
    query = verify.extract(cameraman_scene[0])
    with Gallery(tmp_path / "g.db") as g:
        enroll(g, regional, [("cat", photos / "cat.jpg"), ("coffee", photos / "coffee.jpg")])
        index = LocalIndex(g, vocab)
        for change in (lambda: enroll(g, regional, [("cameraman", photos / "cameraman.jpg")]), lambda: g.remove("cat")):
            change()
            index = LocalIndex(g, vocab, previous=index)  # reuses the leaves of the images it had
            fresh = LocalIndex(g, vocab)
            assert index.leaves.keys() == fresh.leaves.keys()
            for got, want in zip(
                index.inverted.nearest2(query.descriptors), fresh.inverted.nearest2(query.descriptors)
            ):
                assert np.array_equal(got, want)
            assert np.array_equal(index.item_of_image, fresh.item_of_image)
