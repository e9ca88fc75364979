"""People in the service: `edge-retrieval run` with a [people] section over a clip of real face
photos (../shared/data/faces) pasted into a scene, the real face models, a real people gallery,
a real local webhook and the events table."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from fakes import Webhook
from test_faces import FACES  # (the data folder, found once)

from edge_retrieval.cli import cli
from edge_retrieval.config import load_config
from edge_retrieval.decide import Decider
from edge_retrieval.demo import photo
from edge_retrieval.errors import ConfigError
from edge_retrieval.recognize import Candidate, Ranking
from edge_retrieval.recognize.faces import open_face_recognizer
from edge_retrieval.storage.events import EventLog
from edge_retrieval.storage.gallery import Gallery

ENROLLED = {"id00": ["img1.jpg", "img2.jpg", "img4.jpg"], "id01": ["img26.jpg", "img27.jpg", "img28.jpg"]}
KNOWN, STRANGER = "img7.jpg", "img29.jpg"  # another photo of id00; id05, never enrolled
SIZE, FPS = (640, 480), 10.0
GREEN = np.array([60, 200, 60])  # storage.events.draw_event's colour of a match


@pytest.fixture(scope="module")
def faces_dir():
    if not (FACES / "identity_groups.json").is_file():
        pytest.skip(f"{FACES} absent: the faces photos live in ../shared/data (not in the repo)")
    return FACES


def run(*args, code=0):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output + result.stderr
    return result


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory, faces_dir):
    """A people gallery of id00 and id01, three photos each, enrolled by the CLI."""
    root = tmp_path_factory.mktemp("people")
    for person, files in ENROLLED.items():
        (root / "photos" / person).mkdir(parents=True)
        for f in files:
            shutil.copy(faces_dir / f, root / "photos" / person / f)
    db = root / "people.db"
    run("enroll", "--faces", "-g", db, root / "photos")
    return db


@pytest.fixture
def people_db(enrolled, tmp_path):
    """A copy of the people gallery: each test's events are its own."""
    return Path(shutil.copy(enrolled, tmp_path / "people.db"))


@pytest.fixture
def webhook():
    hook = Webhook()  # (fakes.py)
    yield hook
    hook.close()


def paste(frame: np.ndarray, image: np.ndarray, x: int, y: int, width: int) -> np.ndarray:
    height = round(image.shape[0] * width / image.shape[1])
    frame[y : y + height, x : x + width] = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return frame


def write_clip(path: Path, segments: list[tuple[int, list[tuple[str, int]]]]) -> Path:
    """A Motion-JPEG clip of a brick wall (no face, no item) with photos pasted into it: each
    segment is (frames, [(photo path, x)]), each photo 200 px wide (faces ≈ 70-120 px)."""
    scene = cv2.resize(cv2.imread(str(photo("brick"))), SIZE, interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, SIZE)
    for frames, shown in segments:
        frame = scene.copy()
        for name, x in shown:
            paste(frame, cv2.imread(str(name)), x, 60, 200)
        for _ in range(frames):
            writer.write(frame)
    writer.release()
    return path


def config_file(tmp_path: Path, clip: Path, body: str, webhook: str) -> Path:
    path = tmp_path / "service.toml"
    path.write_text(
        f'[source]\nuri = {json.dumps(str(clip))}\nname = "hall"\n'
        f"[decision]\ncooldown = 1.0\n"
        f"[sinks.webhook]\nurl = {json.dumps(webhook)}\n"
        f"[service]\nlog_interval = 0\n" + body
    )
    return path


def embedded(output: str) -> int:
    """Frames a recognizer ran on, from `run`'s last line ("...: N frame(s) processed, M embedded, ...")."""
    line = [x for x in output.splitlines() if "frame(s) processed" in x][-1]
    return int(line.split(" embedded")[0].rsplit(", ", 1)[1])


def stranger_likeness(people_db: Path, snapshot: str, stranger: Path) -> tuple[float, float]:
    """(the best cosine of a face on the snapshot's right half, where the stranger stands, to the
    stranger's own photo; the threshold a face must pass to be identified)."""
    with Gallery(people_db, create=False) as gallery:
        faces = open_face_recognizer(gallery)
        try:
            _, _, reference = faces.faces(cv2.imread(str(stranger)))
            boxes, _, vectors = faces.faces(cv2.imread(snapshot))
            threshold = faces.thresholds.default()
        finally:
            faces.close()
    return max((float(v @ reference[0]) for b, v in zip(boxes, vectors) if b[0] > 300), default=-1.0), threshold


def drawn_box(path: str, box) -> bool:
    """The snapshot shows the event's box in the match colour (its top edge, away from the corners)."""
    image = cv2.imread(path).astype(float)
    x0, y0, x1, _ = (int(round(v)) for v in box)
    edge = image[y0 : y0 + 2, x0 + 5 : x1 - 5].reshape(-1, 3).mean(0)
    return bool(np.abs(edge - GREEN).max() < 45)


@pytest.mark.shared_data
@pytest.mark.parametrize("unknown, keep", [(False, "all"), (True, "matches")])
def test_the_service_alerts_a_known_face_and_not_an_unknown_one(tmp_path, people_db, faces_dir, webhook, unknown, keep):
    known, stranger = faces_dir / KNOWN, faces_dir / STRANGER
    clip = write_clip(
        tmp_path / "hall.avi",
        [
            (8, []),  # the empty hallway
            (20, [(known, 380)]),  # id00 comes and stands 2 s
            (8, []),
            (20, [(stranger, 380)]),  # someone never enrolled
            (8, []),
            (20, [(known, 40), (stranger, 380)]),  # both (id00 alerts again: its 1 s cooldown is over)
            (8, []),
        ],
    )
    snapshots = tmp_path / "snapshots"
    config = config_file(
        tmp_path,
        clip,
        f"[people]\ngallery = {json.dumps(str(people_db))}\nunknown = {json.dumps(unknown)}\n"
        f'[snapshot]\nenabled = true\nfolder = {json.dumps(str(snapshots))}\nkeep = "{keep}"\n',
        webhook.url + "/events",
    )
    result = run("run", "-c", config)

    # people only: no items gallery, and the events are in the people gallery's file
    with EventLog(people_db, []) as log:
        events = list(reversed(log.recent(10)))
        vectors = log.db.execute("SELECT count(*) FROM event_vectors").fetchone()[0]
    got = [(e.kind, e.label) for e in events]
    expected = [("match", "id00"), ("unknown", None), ("match", "id00")] if unknown else [("match", "id00")] * 2
    assert got == expected, result.output
    assert all(e.details["watch"] == "people" for e in events)
    assert vectors == 0  # a person's event keeps no descriptor (the history holds items' only)

    # the motion gate comes first: the face models ran only where the scene changed (7 segments,
    # a few frames each while the MJPEG settles), never on the still frames in between
    assert embedded(result.output) <= 14, result.output

    # the webhook got each event, telling people from items
    assert [(p["kind"], p["label"], p["details"]["watch"]) for p in webhook.events()] == [
        (k, lab, "people") for k, lab in expected
    ]

    first, last = events[0], events[-1]
    x0, y0, x1, y1 = first.box  # the known face, pasted at x 380..580
    assert 380 <= x0 < x1 <= 580 and 60 <= y0 < y1 <= 360
    assert drawn_box(first.snapshot, first.box)
    assert last.box[2] <= 240  # the second time, id00 is the one on the left
    likeness, threshold = stranger_likeness(people_db, last.snapshot, stranger)
    print(f"stranger's likeness in the snapshot {likeness:.3f} (threshold {threshold:.3f})")
    if keep == "all":
        assert likeness > 0.6
    else:
        # no frame of the unknown person is kept, and in a match's frame the stranger is pixelated
        assert events[1].snapshot is None
        assert sorted(p.name for p in snapshots.glob("*.jpg")) == sorted(Path(e.snapshot).name for e in (first, last))
        assert likeness < threshold / 2  # who it was does not survive the pixelation


@pytest.mark.shared_data
def test_items_and_people_on_one_camera(tmp_path, people_db, faces_dir, webhook):
    """Both: one motion gate, the items recognizer and the face recognizer on the same frames."""
    items_dir = tmp_path / "items" / "cat"
    items_dir.mkdir(parents=True)
    shutil.copy(photo("cat"), items_dir / "cat.jpg")
    items_db = tmp_path / "items.db"
    run("enroll", "-g", items_db, items_dir.parent)
    clip = write_clip(
        tmp_path / "hall.avi",
        [(8, []), (20, [(photo("cat"), 40)]), (8, []), (20, [(faces_dir / KNOWN, 380)]), (8, [])],
    )
    config = config_file(
        tmp_path,
        clip,
        f"[gallery]\npath = {json.dumps(str(items_db))}\n"
        f"[people]\ngallery = {json.dumps(str(people_db))}\n"
        f"[snapshot]\nenabled = true\nfolder = {json.dumps(str(tmp_path / 'snapshots'))}\n",
        webhook.url + "/events",
    )
    result = run("run", "-c", config)
    with EventLog(items_db, []) as log:  # the items gallery's file holds every event
        events = list(reversed(log.recent(10)))
        got = [(e.kind, e.label, e.details["watch"]) for e in events]
        assert got == [("match", "cat", "items"), ("match", "id00", "people")], result.output
        cat, person = events
        assert log.similar_to(cat.id) == []  # the item's descriptor is searchable (no other event has one)
        with pytest.raises(Exception, match="without a descriptor"):
            log.similar_to(person.id)
    assert drawn_box(person.snapshot, person.box)
    assert [p["details"]["watch"] for p in webhook.events()] == ["items", "people"]
    with sqlite3.connect(people_db) as db:  # the people gallery got no events table
        assert "events" not in {r[0] for r in db.execute("SELECT name FROM sqlite_master")}


@pytest.mark.shared_data
def test_the_people_gallery_stores_descriptors_and_photo_paths_only(people_db):
    with sqlite3.connect(people_db) as db:
        rows = db.execute("SELECT length(vector), source FROM embeddings").fetchall()
        assert len(rows) == 6 and {n for n, _ in rows} == {192}  # one int8 descriptor a photo, no pixels
        assert {Path(s).name for _, s in rows} == {f for files in ENROLLED.values() for f in files}
        assert db.execute("SELECT count(*) FROM features").fetchone()[0] == 0  # no keypoints of the photos
        blobs = [
            (t, c)
            for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            for _, c, kind, *_ in db.execute(f"PRAGMA table_info({t})")
            if kind.upper() == "BLOB"
        ]
        for table, column in blobs:  # nothing big enough to be a picture
            assert (db.execute(f"SELECT max(length({column})) FROM {table}").fetchone()[0] or 0) <= 4096, (
                table,
                column,
            )


@pytest.mark.parametrize(
    "toml, message",
    [
        ("[people]\nthreshold = 2", "people.threshold: 2 is above the maximum 1"),
        ("[people]\nunknown_cooldown = -5", "people.unknown_cooldown: -5 is below the minimum 0"),
        ("[people]\nmin_face = 8", "people.min_face: 8 is below the minimum 20"),
        ("[people]\ngalery = 'people.db'", "people.galery: unknown key"),
        ("[people]\nunknown = 'yes'", "people.unknown: expected true or false"),
        ("[snapshot]\nkeep = 'none'", "snapshot.keep: 'none' is not one of 'all', 'matches'"),
    ],
)
def test_people_config_errors_name_the_field(tmp_path, toml, message):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: {message}" or message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_missing_people_gallery_is_one_line_naming_the_field(tmp_path):
    path = tmp_path / "people.toml"
    path.write_text(f'[source]\nuri = "0"\n[people]\ngallery = {json.dumps(str(tmp_path / "nobody.db"))}\n')
    result = CliRunner().invoke(cli, ["run", "-c", str(path)])
    assert result.exit_code != 0
    lines = [x for x in result.output.splitlines() if x.startswith("Error")]
    assert len(lines) == 1 and "people.gallery: " in lines[0] and "nobody.db" in lines[0], result.output
    assert not (tmp_path / "nobody.db").exists()  # nothing half-written


def test_unknown_has_a_cooldown_of_its_own():
    decider = Decider(m=1, n=1, cooldown=100.0, unknown=True, unknown_cooldown=5.0)
    someone = Ranking("faces", [Candidate(1, "ann", 0.1, 0.1)], faces=[])
    times = [t for t in range(0, 20, 2) if decider.update("hall", someone, t, moving=True)]
    assert times == [0]  # confirmed every 2 s: the cooldown keeps being extended
    assert decider.update("hall", someone, 30.0, moving=True) is not None  # gone for > 5 s: alerts again
    ann = Ranking("faces", [Candidate(1, "ann", 0.9, 0.9)], Candidate(1, "ann", 0.9, 0.9))
    assert decider.update("hall", ann, 31.0) is not None
    assert decider.update("hall", ann, 60.0) is None  # a person's cooldown stays [decision]'s
