"""A gallery enrolled before the second verifier (ORB features only) or before the dense verifier
(no grey images) upgraded in place: `refresh_features` reads the enrolled photos again and adds
what they lack; info, doctor and export/import see them. Real SQLite, the repo's real photos, the
real model."""

from __future__ import annotations

import logging
import shutil
import sqlite3
from contextlib import closing

import cv2
import pytest
from fakes import small_blurred_coins

from edge_retrieval import verify
from edge_retrieval.config import Config, GalleryConfig, SourceConfig, load_config
from edge_retrieval.demo import ITEMS, photo
from edge_retrieval.doctor import diagnose
from edge_retrieval.enroll import enroll, lacking_photos, refresh_features
from edge_retrieval.errors import GalleryError
from edge_retrieval.preprocess import read_image
from edge_retrieval.recognize import open_recognizer
from edge_retrieval.service.daemon import Daemon
from edge_retrieval.service.systemd import Notifier
from edge_retrieval.storage.gallery import Gallery

NAMES = ["cat", "coffee", "coins", "rocket"]


def rows(path, kind: str) -> list[tuple]:
    """(item label, source, width, height, keypoints, descriptors) of the features of one kind."""
    with closing(sqlite3.connect(path)) as con:
        return con.execute(
            "SELECT i.label, f.source, f.width, f.height, f.keypoints, f.descriptors "
            "FROM features f JOIN items i ON i.id = f.item_id WHERE f.kind = ? ORDER BY f.id",
            [kind],
        ).fetchall()


def drop_sift(path, where: str = "1", kinds: tuple[str, ...] = ("sift", "gray")) -> None:
    """The gallery as the enrolment before the second verifier left it: its SIFT rows (and the
    dense verifier's grey images, which came later still) gone."""
    with closing(sqlite3.connect(path)) as con, con:
        for kind in kinds:
            con.execute(f"DELETE FROM features WHERE kind = ? AND ({where})", [kind])


@pytest.fixture
def enrolled(tmp_path, embedder):
    """A gallery of 4 items, their photos copied beside it (enrolled by absolute path)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in NAMES:
        shutil.copy(photo(name), folder / f"{name}.jpg")
    path = tmp_path / "g.db"
    with Gallery(path) as g:
        enroll(g, embedder, [(name, folder / f"{name}.jpg") for name in NAMES])
    return path, folder


def test_refresh_adds_exactly_the_missing_rows_and_is_idempotent(enrolled):
    path, folder = enrolled
    stored = rows(path, "sift")  # what enrolment stores today: the refresh must add the same
    assert [r[0] for r in stored] == NAMES and all(len(r[5]) == 128 * (len(r[4]) // 8) for r in stored)
    grays = rows(path, "gray")  # the grey image: no points, width × height bytes
    assert [r[0] for r in grays] == NAMES and all(not r[4] and len(r[5]) == r[2] * r[3] for r in grays)
    assert all(max(r[2], r[3]) == verify.DENSE_PHOTO_SIDE for r in grays)
    drop_sift(path, f"source IN ('{folder / 'coffee.jpg'}', '{folder / 'rocket.jpg'}')")
    drop_sift(path, f"source = '{folder / 'cat.jpg'}'", kinds=("gray",))  # enrolled between the two
    orb = rows(path, "orb")
    with Gallery(path, create=False) as g:
        assert g.feature_photos() == {"gray": 1, "orb": 4, "sift": 2}
        assert [s for _, s, _ in g.lacking_features(verify.SIFT_KIND, verify.KIND)] == [
            str(folder / "coffee.jpg"),
            str(folder / "rocket.jpg"),
        ]
        report = refresh_features(g)
        assert report.added == 3 and report.missing == []
        assert g.feature_photos() == {"gray": 4, "orb": 4, "sift": 4}
        generation = g.generation()
        again = refresh_features(g)  # nothing left to add: nothing written
        assert again.added == 0 and again.missing == [] and g.generation() == generation
    assert sorted(rows(path, "sift")) == sorted(stored)  # the very rows enrolment stored, byte for byte
    assert sorted(rows(path, "gray")) == sorted(grays)
    assert rows(path, "orb") == orb


def test_missing_unreadable_and_changed_photos_are_reported_and_the_rest_added(enrolled):
    path, folder = enrolled
    drop_sift(path)
    (folder / "cat.jpg").unlink()
    (folder / "coffee.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg any more")
    image = read_image(folder / "coins.jpg")  # another photo under the same name
    cv2.imwrite(str(folder / "coins.jpg"), cv2.resize(image, (image.shape[1] // 2, image.shape[0])))
    with Gallery(path, create=False) as g:
        report = refresh_features(g)
        assert report.added == 1
        assert len(report.missing) == 3
        assert report.missing[0] == f"{folder / 'cat.jpg'}: no such file"
        assert report.missing[1].startswith(f"{folder / 'coffee.jpg'}: ")
        assert report.missing[2].startswith(f"{folder / 'coins.jpg'}: 192×303, not the photo enrolled")
        assert [(s, (w, h)) for _, s, (w, h) in g.lacking_features(verify.SIFT_KIND, verify.KIND)] == [
            (str(folder / f"{n}.jpg"), size) for n, size in (("cat", (400, 266)), ("coffee", (400, 267)))
        ] + [(str(folder / "coins.jpg"), (384, 303))]
    assert [r[0] for r in rows(path, "sift")] == ["rocket"]


def test_an_error_half_way_writes_nothing(enrolled, monkeypatch):
    path, _ = enrolled
    drop_sift(path)
    with closing(sqlite3.connect(path)) as con:
        before = con.execute("SELECT * FROM features ORDER BY id").fetchall()
    calls = []
    real = Gallery.add_features

    def failing(self, *args, **kw):  # the disk fills up at the second photo
        calls.append(args)
        if len(calls) == 2:
            raise GalleryError(f"{self.path}: cannot write (disk full)")
        return real(self, *args, **kw)

    monkeypatch.setattr(Gallery, "add_features", failing)
    with Gallery(path, create=False) as g, pytest.raises(GalleryError, match="disk full"):
        refresh_features(g)
    with closing(sqlite3.connect(path)) as con:
        assert con.execute("SELECT * FROM features ORDER BY id").fetchall() == before


def test_a_photo_removed_meanwhile_is_left_alone(enrolled):
    """Another process removes an item between the reading of the photos and the write."""
    path, _ = enrolled
    drop_sift(path)
    with Gallery(path, create=False) as g, Gallery(path, create=False) as other:

        def remove_cat(items):
            yield from items
            other.remove("cat")

        report = refresh_features(g, remove_cat)
        assert report.added == 3 and g.feature_photos() == {"gray": 3, "orb": 3, "sift": 3}


def test_export_import_keeps_the_sift_rows_and_grey_images(enrolled, tmp_path):
    path, _ = enrolled
    with Gallery(path, create=False) as g:
        g.export(tmp_path / "out.gallery")
    with Gallery(tmp_path / "g2.db") as g2:
        g2.import_from(tmp_path / "out.gallery")  # (its checks pass a row of no points and an image)
        assert g2.feature_photos() == {"gray": 4, "orb": 4, "sift": 4}
        assert lacking_photos(g2) == {}
        by_kind = {f[0]: f for f in g2.features(g2.item("coins").id)}
        assert by_kind[verify.SIFT_KIND][3].shape[1] == 128
        (w, h), gray = by_kind[verify.DENSE_KIND][1], by_kind[verify.DENSE_KIND][3]
        assert gray.shape == (h, w) and gray.dtype == "uint8" and gray.std() > 10
    for kind in ("sift", "gray"):
        assert [(label, "imported:" + src, *rest) for label, src, *rest in rows(path, kind)] == rows(
            tmp_path / "g2.db", kind
        )


def test_imported_photos_are_reported_missing_not_read_from_this_disk(enrolled, tmp_path):
    path, _ = enrolled
    drop_sift(path)
    with Gallery(path, create=False) as g:
        g.export(tmp_path / "out.gallery")
    with Gallery(tmp_path / "g2.db") as g2:
        g2.import_from(tmp_path / "out.gallery")
        report = refresh_features(g2)
        assert report.added == 0 and all(m.startswith("imported:") for m in report.missing)


def test_doctor_warns_until_the_refresh(enrolled):
    path, folder = enrolled
    drop_sift(path, f"source = '{folder / 'coins.jpg'}'")
    config = load_config(None, {"source.uri": str(folder), "gallery.path": str(path)})
    check = next(c for c in diagnose(config, timing=False).checks if c.name == "gallery")
    assert check.status == "warn"
    assert "1 item(s) have photos with ORB features and no SIFT features or grey image" in check.detail
    assert f"edge-retrieval refresh-features -g {path}" in check.detail
    with Gallery(path, create=False) as g:
        refresh_features(g)
    check = next(c for c in diagnose(config, timing=False).checks if c.name == "gallery")
    assert check.status == "ok" and "SIFT" not in check.detail


def test_after_the_refresh_the_second_verifier_names_what_orb_cannot(embedder, tmp_path, photos):
    """The small blurred coins of test_verify: an upgraded gallery without SIFT rows leaves them
    unknown; after the refresh the same recognizer (as the running service's) names them."""
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    path = tmp_path / "g.db"
    with Gallery(path) as g:
        enroll(g, embedder, [(name, folder / f"{name}.jpg") for name in ITEMS], augment=2)
    drop_sift(path)
    frame = small_blurred_coins(photos)
    with Gallery(path, create=False) as g, Gallery(path, create=False) as running:
        recognizer = open_recognizer(embedder, running)  # a running service's: no restart
        assert recognizer.recognize(frame).label is None
        assert refresh_features(g).added == len(ITEMS)
        result = recognizer.recognize(frame)
        assert result.label == "coins" and result.best.inliers >= verify.SIFT_MIN_INLIERS


def test_the_service_says_so_at_start(enrolled, embedder, caplog):
    path, folder = enrolled
    drop_sift(path, f"source = '{folder / 'coins.jpg'}'")
    config = Config(source=SourceConfig(uri=str(folder / "cat.jpg")), gallery=GalleryConfig(path=str(path)))
    with caplog.at_level(logging.WARNING, logger="edge_retrieval.service.daemon"):
        Daemon(config, embedder=embedder, notifier=Notifier(None)).run()
    assert (
        f"{path}: 1 photo(s) lack the SIFT features or grey image of the second and dense verifiers; "
        f"add them with `edge-retrieval refresh-features -g {path}` (no restart needed)"
    ) in caplog.messages
