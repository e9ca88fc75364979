"""Calibrated thresholds, negatives, enrolment checks and the CLI around them."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_retrieval import augment, calibrate
from edge_retrieval.cli import cli
from edge_retrieval.demo import ITEMS, camera_view, photo
from edge_retrieval.embedder import Embedder
from edge_retrieval.enroll import enroll, enroll_negatives
from edge_retrieval.modelcard import DEFAULT_MODEL
from edge_retrieval.preprocess import read_image
from edge_retrieval.recognize import open_recognizer
from edge_retrieval.storage.database import SCHEMA_VERSION
from edge_retrieval.storage.gallery import Gallery

REGIONAL_MODEL = DEFAULT_MODEL


@pytest.fixture(scope="module")
def regional():
    with Embedder(REGIONAL_MODEL) as emb:
        yield emb


@pytest.fixture
def demo_gallery(regional, tmp_path):
    with Gallery(tmp_path / "g.db") as g:
        enroll(g, regional, [(name, photo(name)) for name in ITEMS[:5]])
        yield g


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output + result.stderr
    return result


def test_threshold_at_lets_through_at_most_the_target():
    scores = np.arange(200, dtype=float)  # 0..199
    t = calibrate.threshold_at(scores, 0.01)
    assert t == 197 and np.mean(scores > t) == 0.01
    assert calibrate.threshold_at(scores[:50], 0.01) == 49  # too few negatives: none may pass


def test_thresholds_live_in_the_gallery(gallery):
    assert SCHEMA_VERSION >= 3
    a = gallery.add("a", np.full((1, 4), 0.5), model_sha256="a" * 64)
    b = gallery.add("b", np.full((1, 4), -0.5), model_sha256="a" * 64)
    assert gallery.threshold is None and gallery.threshold_for(a) is None
    gallery.set_thresholds(0.9, {a: 0.7}, {"preset": "default"})
    assert gallery.thresholds() == {a: 0.7}
    assert gallery.threshold_for(a) == 0.7 and gallery.threshold_for(b) == 0.9
    assert gallery.calibration() == {"preset": "default"}
    gallery.remove("a")
    assert gallery.thresholds() == {}


def test_calibrate_with_the_builtin_negatives_and_positives(regional, demo_gallery):
    ident = open_recognizer(regional, demo_gallery)
    rng = np.random.default_rng(0)
    positives = [(name, camera_view(read_image(photo(name)), rng)) for name in ITEMS[:5] for _ in range(5)]
    result = calibrate.calibrate(ident, positives, fpir=0.05)
    assert result.negatives >= 20 and "built-in" in result.negatives_source
    assert result.fpir <= 0.05 and result.positives == 25
    assert result.recall_at_1 >= 0.8 and result.dir is not None
    assert all(t < result.threshold for t in result.per_item.values())
    calibrate.store(ident, result)
    assert demo_gallery.threshold == pytest.approx(result.threshold)
    assert demo_gallery.calibration()["preset"] == "default"
    demo_gallery.matrix()  # (a recognizer's next search sees the new generation)
    assert ident.thresholds.for_item(1) == demo_gallery.thresholds().get(1, demo_gallery.threshold)  # now used
    assert open_recognizer(regional, demo_gallery, "fast").thresholds.for_item(1) == 0.60  # not calibrated for fast


def test_a_negative_vetoes_its_item(regional, demo_gallery):
    view = camera_view(read_image(photo(ITEMS[0])), np.random.default_rng(1))
    ident = open_recognizer(regional, demo_gallery)
    assert ident.recognize(view).label == ITEMS[0]
    enroll_negatives(demo_gallery, regional, ITEMS[0], [photo(ITEMS[0])])  # "this is NOT item 0"
    result = ident.recognize(view)
    assert result.label is None and result.candidates[0].vetoed


def test_enrolment_checks_warn():
    rng = np.random.default_rng(0)
    sharp = read_image(photo("astronaut"))
    assert augment.check(sharp).warnings == ()
    blurry = cv2.GaussianBlur(sharp, (0, 0), 6)
    dark = (sharp * 0.1).astype(np.uint8)
    tiny = cv2.resize(sharp, (60, 60))
    assert "blurry" in " ".join(augment.check(blurry).warnings)
    assert "dark" in " ".join(augment.check(dark).warnings)
    assert "tiny" in " ".join(augment.check(tiny).warnings)
    views = augment.views(sharp, 3, seed=int(rng.integers(100)))
    assert len(views) == 3 and all(v.ndim == 3 and min(v.shape[:2]) > 300 for v in views)


def test_enrol_augmented_views_and_near_duplicate_warning(regional, tmp_path):
    with Gallery(tmp_path / "g.db") as g:
        report = enroll(g, regional, [("cat", photo("cat")), ("also-cat", photo("cat"))], augment=2)
        assert report.images == 2 and g.count() == (2, 6)
        assert any("nearly identical" in w for w in report.warnings)
        assert [f[0] for f in g.features(g.item("cat").id)] == ["orb", "sift", "gray"]  # the photo's, not its views


def test_cli_enrol_search_explain_calibrate(tmp_path, regional):
    db, model = tmp_path / "g.db", REGIONAL_MODEL
    photos = tmp_path / "photos"
    for name in ITEMS[:3]:
        (photos / name).mkdir(parents=True)
        shutil.copy(photo(name), photos / name / "a.jpg")
    out = run("enroll", photos, "--augment", "2", "-g", db, "-m", model).output
    assert "enrolled 3 image(s) as 3 item(s)" in out
    view = tmp_path / "view.jpg"
    cv2.imwrite(str(view), camera_view(read_image(photo(ITEMS[1])), np.random.default_rng(2)))
    explain = tmp_path / "why.jpg"
    lines = run("search", view, photo("brick"), "--json", "--explain", explain, "-g", db, "-m", model).output
    first, second = [json.loads(line) for line in lines.splitlines()]
    assert {"query", "matches", "match", "score"} <= set(first)
    assert first["match"] == ITEMS[1] and first["matches"][0]["label"] == ITEMS[1]
    assert second["match"] is None
    assert (tmp_path / "why-0.jpg").is_file() and (tmp_path / "why-1.jpg").is_file()
    report = json.loads(run("calibrate", "--dry-run", "--json", "-g", db, "-m", model).output)
    assert report["preset"] == "default" and report["negatives"] > 0
    with Gallery(db) as g:
        assert g.threshold is None  # dry run
    run("calibrate", "-g", db, "-m", model)
    with Gallery(db) as g:
        assert g.threshold == pytest.approx(report["threshold"])
    out = run("enroll", photo("brick"), "--not", ITEMS[0], "-g", db, "-m", model).output
    assert f"enrolled 1 negative image(s) of {ITEMS[0]}" in out
