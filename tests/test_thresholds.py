"""The one place scores become match or unknown: threshold precedence, margin, vetoes."""

import math

import pytest

from edge_retrieval import Gallery
from edge_retrieval.recognize import PRESETS, TUNED_FOR, Candidate
from edge_retrieval.recognize.thresholds import Thresholds


@pytest.fixture
def gallery(tmp_path):
    import numpy as np

    with Gallery(tmp_path / "g.db") as g:
        for label in ("cat", "dog"):
            v = np.random.default_rng(len(label) + ord(label[0])).normal(size=8).astype(np.float32)
            g.add(label, v / np.linalg.norm(v), model_sha256="m" * 64, model_name=TUNED_FOR)
        g.matrix()
        yield g


def ids(gallery):
    return {item.label: item.id for item in gallery.items()}


def test_precedence_item_then_user_then_calibrated_then_preset(gallery):
    i = ids(gallery)
    t = Thresholds(gallery, PRESETS["default"], TUNED_FOR)
    assert t.for_item(i["cat"]) == PRESETS["default"].threshold  # nothing calibrated: the preset's own
    assert Thresholds(gallery, PRESETS["default"], "another-model").for_item(i["cat"]) is None  # no match at all
    gallery.set_thresholds(0.7, {i["cat"]: 0.55}, {"preset": "default"})
    gallery.matrix()  # (the recognizer's search sees the new generation)
    assert t.for_item(i["cat"]) == 0.55 and t.for_item(i["dog"]) == 0.7
    user = Thresholds(gallery, PRESETS["default"], TUNED_FOR, threshold=0.9)
    assert user.for_item(i["cat"]) == 0.55 and user.for_item(i["dog"]) == 0.9  # an item's own still wins
    other = Thresholds(gallery, PRESETS["quick"], TUNED_FOR)  # calibrated for another preset: not used
    assert other.for_item(i["cat"]) == PRESETS["quick"].threshold


def test_verdict_needs_threshold_margin_and_no_veto(gallery):
    t = Thresholds(gallery, PRESETS["whole"], TUNED_FOR)  # 0.35, margin 0.2
    cat, dog = Candidate(1, "cat", 0.9, 0.9), Candidate(2, "dog", 0.5, 0.5)
    match, threshold, margin = t.verdict([cat, dog])
    assert match is cat and threshold == 0.35 and margin == pytest.approx(0.4)
    assert t.verdict([cat, Candidate(2, "dog", 0.8, 0.8)])[0] is None  # lead 0.1 < 0.2
    assert t.verdict([Candidate(1, "cat", 0.3, 0.3)])[0] is None  # below the threshold
    assert t.verdict([Candidate(1, "cat", 0.9, 0.9, vetoed=True)])[0] is None
    alone = t.verdict([cat])
    assert alone[0] is cat and math.isinf(alone[2])
    assert t.verdict([]) == (None, None, math.inf)
    same = t.verdict([cat, Candidate(1, "cat", 0.89, 0.89), dog])  # the same label is not a rival
    assert same[2] == pytest.approx(0.4)
    regional = Thresholds(gallery, PRESETS["default"], TUNED_FOR)  # no margin asked by default
    assert regional.verdict([Candidate(1, "cat", 0.7, 0.7), Candidate(2, "dog", 0.69, 0.69)])[0] is not None
