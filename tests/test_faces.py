"""People: the real face models on real photos (../shared/data/faces), a real SQLite people gallery."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_retrieval.cli import cli
from edge_retrieval.demo import photo
from edge_retrieval.errors import BadImageError, ModelError, ModelMismatchError
from edge_retrieval.faces.align import TEMPLATE, align, similarity
from edge_retrieval.faces.detect import CARD as MTCNN_CARD
from edge_retrieval.faces.detect import Detector, bundled_nets
from edge_retrieval.faces.embed import FaceEmbedder
from edge_retrieval.faces.enroll import FaceEnrollError, enroll_faces, face_of, nose_position
from edge_retrieval.recognize.faces import open_face_recognizer
from edge_retrieval.storage.gallery import Gallery

pytestmark = pytest.mark.shared_data  # (the pure geometry tests below need no data; they are few)

SHARED_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data"
)  # (not from conftest: tests/reliability has one too)
FACES = Path(os.environ.get("EDGE_RETRIEVAL_DATA") or SHARED_DATA) / "faces"
ENROLLED = {"id00": ["img1.jpg", "img2.jpg", "img4.jpg"], "id01": ["img26.jpg", "img27.jpg", "img28.jpg"]}
HELD_OUT = {"img7.jpg": "id00", "img44.jpg": "id01"}  # other photos of the enrolled people
STRANGER = "img29.jpg"  # id05: never enrolled


@pytest.fixture(scope="module")
def faces_dir():
    if not (FACES / "identity_groups.json").is_file():
        pytest.skip(f"{FACES} absent: the faces photos live in ../shared/data (not in the repo)")
    return FACES


@pytest.fixture(scope="module")
def detector():
    with Detector() as det:
        yield det


def read(name: str) -> np.ndarray:
    return cv2.imread(str(FACES / name))


@pytest.fixture
def people(tmp_path, faces_dir):
    """A folder per person, three photos each."""
    root = tmp_path / "people"
    for person, files in ENROLLED.items():
        (root / person).mkdir(parents=True)
        for f in files:
            shutil.copy(faces_dir / f, root / person / f)
    return root


def run(*args, code=0):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output + result.stderr
    return result


def test_detects_several_faces_with_landmarks_inside(faces_dir, detector):
    assert len(detector.detect(read("couple.jpg"))) == 2
    found = detector.detect(read("selfie-many-people.jpg"))
    assert len(found) >= 4
    for box, marks in zip(found.boxes, found.landmarks):
        centre = marks.mean(0)  # (a face cut by the frame's edge has its box clipped, not its landmarks)
        assert (centre >= box[:2]).all() and (centre <= box[2:]).all()
        assert marks[0, 0] < marks[1, 0]  # the left eye is left of the right eye
    assert len(detector.detect(cv2.imread(str(photo("brick"))))) == 0


def test_alignment_puts_the_landmarks_on_the_template(faces_dir, detector):
    found = detector.detect(read("img1.jpg"))
    m = similarity(found.landmarks[0])
    mapped = found.landmarks[0] @ m[:, :2].T + m[:, 2]
    assert np.abs(mapped - TEMPLATE).max() < 8  # pixels of 112: five points, four degrees of freedom
    assert align(read("img1.jpg"), found.landmarks[0]).shape == (112, 112, 3)


def test_bundled_embedder_is_int8_and_refuses_other_models(tmp_path, embedder):
    with FaceEmbedder() as emb:  # its card's normalization is "baked: …": pixels in, quantization from the model
        assert emb.card.name == "mobilefacenet_int8" and emb.card.normalization.startswith("baked")
        assert np.dtype(emb.input_quant.dtype) == np.int8 and np.dtype(emb.output_quant.dtype) == np.int8
        vecs = emb.embed(np.zeros((0, 112, 112, 3), np.uint8))
        assert vecs.shape == (0, 192)
    with pytest.raises(ModelError, match="faces are 112×112"):  # the items' model is no face model
        FaceEmbedder(embedder.model_path)


def test_detector_checks_its_card(tmp_path):
    card = json.loads(MTCNN_CARD.read_text())
    card["nets"]["rnet"]["sha256"] = "0" * 64
    for net in ("pnet", "rnet", "onet"):
        shutil.copy(MTCNN_CARD.parent / card["nets"][net]["file"], tmp_path)
    (tmp_path / "mtcnn.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="mtcnn_rnet.tflite: sha256 does not match its card mtcnn.json"):
        bundled_nets(tmp_path / "mtcnn.json")
    (tmp_path / "mtcnn.json").write_text("{}")
    with pytest.raises(ModelError, match="mtcnn.json: not a readable MTCNN card"):
        bundled_nets(tmp_path / "mtcnn.json")


def test_nose_position_tells_profile_from_frontal():
    frontal = TEMPLATE.copy()
    assert nose_position(frontal) == pytest.approx(0.5, abs=0.02)
    turned = frontal.copy()
    turned[2, 0] = frontal[0, 0] - 3  # the nose beyond the left eye: a head in profile
    assert nose_position(turned) < 0


def test_enroll_search_and_unknown(tmp_path, people):
    db = tmp_path / "people.db"
    out = run("enroll", "--faces", "-g", db, people).output
    assert "enrolled 6 face(s) as 2 person(s)" in out
    with Gallery(db, create=False) as gallery:
        assert gallery.model_name == "mobilefacenet_int8" and gallery.dim == 192
        rec = open_face_recognizer(gallery)
        for name, person in HELD_OUT.items():
            ranking = rec.recognize(read(name))
            assert ranking.label == person and len(ranking.faces) == 1
            assert ranking.faces[0].match.label == person
        stranger = rec.recognize(read(STRANGER))
        assert len(stranger.faces) == 1 and stranger.match is None and stranger.faces[0].match is None
        assert stranger.best is not None  # the nearest person is still listed, below the threshold
        rec.close()


def test_search_faces_json_shape(tmp_path, people):
    db = tmp_path / "people.db"
    run("enroll", "--faces", "-g", db, people)
    out = run("search", "--faces", "--json", "-g", db, FACES / "img7.jpg", FACES / STRANGER, FACES / "couple.jpg")
    lines = [json.loads(line) for line in out.output.splitlines()]
    known, unknown, couple = lines
    assert known["match"] == "id00" and known["matches"][0]["label"] == "id00" and known["preset"] == "faces"
    assert set(known) >= {"query", "match", "score", "threshold", "margin", "matches", "faces"}
    assert len(known["faces"]) == 1 and set(known["faces"][0]) == {"box", "match", "score"}
    assert known["faces"][0]["match"] == "id00" and len(known["faces"][0]["box"]) == 4
    assert unknown["match"] is None and unknown["faces"][0]["match"] is None
    assert len(couple["faces"]) == 2  # (its woman is id00, in another photo than enrolled)
    assert couple["match"] == "id00"


def test_bad_enrolment_photos_refused_nothing_written(tmp_path, people, faces_dir):
    bad = people / "id02"
    bad.mkdir()
    shutil.copy(photo("brick"), bad / "no_face.jpg")
    shutil.copy(faces_dir / "couple.jpg", bad / "two_faces.jpg")
    small = read("img8.jpg")
    cv2.imwrite(str(bad / "small.jpg"), cv2.resize(small, None, fx=0.17, fy=0.17, interpolation=cv2.INTER_AREA))
    db = tmp_path / "people.db"
    result = run("enroll", "--faces", "-g", db, people, code=1)
    err = result.stderr
    assert "no_face.jpg: no face found" in err
    assert "two_faces.jpg: 2 faces found" in err
    assert "small.jpg: face too small" in err
    assert "nothing enrolled" in err
    with Gallery(db) as gallery:
        assert gallery.count() == (0, 0)
    out = run("enroll", "--faces", "--skip-bad", "-g", db, people)
    assert "enrolled 6 face(s) as 2 person(s)" in out.output and "skipped 3 photo(s)" in out.output


def test_blurred_and_profile_reasons(tmp_path, faces_dir, detector):
    with Gallery(tmp_path / "p.db") as gallery:
        rec = open_face_recognizer(gallery)
        image = read("img1.jpg")
        face_of(rec, image, "sharp.jpg")  # accepted
        with pytest.raises(BadImageError, match="too blurred"):
            face_of(rec, cv2.GaussianBlur(image, (0, 0), 5), "blurred.jpg")
        rec.close()


def test_negatives_veto_and_model_binding(tmp_path, people, embedder):
    db = tmp_path / "people.db"
    run("enroll", "--faces", "-g", db, people)
    out = run("enroll", "--faces", "--not", "id00", "-g", db, FACES / "img7.jpg").output
    assert "enrolled 1 negative face photo(s) of id00" in out
    with Gallery(db, create=False) as gallery:
        rec = open_face_recognizer(gallery)
        assert rec.recognize(read("img7.jpg")).match is None  # vetoed: "this is NOT id00"
        rec.close()
        with pytest.raises(ModelMismatchError):  # a people gallery refuses the items' model
            gallery.check_model(embedder.sha256, embedder.card.name)
    items = tmp_path / "items.db"
    run("enroll", "-g", items, photo("cat"), "-l", "cat")
    assert "belongs to model" in run("search", "--faces", "-g", items, FACES / "img7.jpg", code=1).stderr


def test_enroll_faces_raises_before_writing(tmp_path, faces_dir):
    with Gallery(tmp_path / "p.db") as gallery:
        rec = open_face_recognizer(gallery)
        with pytest.raises(FaceEnrollError):
            enroll_faces(rec, [("a", FACES / "img1.jpg"), ("b", FACES / "couple.jpg")])
        assert gallery.count() == (0, 0)
        rec.close()


def test_calibrate_faces(tmp_path, people, faces_dir):
    db = tmp_path / "people.db"
    run("enroll", "--faces", "-g", db, people)
    assert "needs --negatives" in run("calibrate", "--faces", "-g", db, code=2).output
    negatives = tmp_path / "strangers"
    negatives.mkdir()
    for f in ("img29.jpg", "img30.jpg", "img16.jpg", "img17.jpg", "img3.jpg"):
        shutil.copy(faces_dir / f, negatives / f)
    out = run("calibrate", "--faces", "--json", "--fpir", "0.2", "--negatives", negatives, "-g", db).output
    report = json.loads(out)
    assert report["preset"] == "faces" and report["negatives"] == 5
    with Gallery(db, create=False) as gallery:
        assert gallery.threshold == pytest.approx(report["threshold"])
        rec = open_face_recognizer(gallery)
        assert rec.thresholds.default() == pytest.approx(report["threshold"])
        rec.close()
