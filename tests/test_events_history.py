"""Reviewing the event history: descriptors kept per event, filtered keyset paging, search by
example, delete; and the CLI over a real service run on a clip (`events list/search/export`,
`search --contact-sheet`)."""

from __future__ import annotations

import json
import shutil
import sqlite3

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_retrieval import democlip
from edge_retrieval.cli import cli
from edge_retrieval.config import Config, DecisionConfig, GalleryConfig, SourceConfig
from edge_retrieval.contactsheet import TILE, enrolled_photo
from edge_retrieval.demo import photo
from edge_retrieval.enroll import enroll
from edge_retrieval.errors import EventError
from edge_retrieval.preprocess import read_image
from edge_retrieval.recognize import open_recognizer
from edge_retrieval.service.daemon import Daemon
from edge_retrieval.service.systemd import Notifier
from edge_retrieval.sinks import SnapshotConfig
from edge_retrieval.storage.database import Database, Migrations
from edge_retrieval.storage.events import MIGRATIONS, Event, EventLog, photo_descriptor, write_snapshot
from edge_retrieval.storage.gallery import Gallery
from edge_retrieval.storage.outbox import MIGRATIONS as OUTBOX

T0 = 1_700_000_000.0
DIM = 16
QUANTIZED = 0.02  # |cosine| lost to int8 codes (one scale a vector, as the gallery's)


def unit(x) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def centre(k: int) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[k] = 1
    return v


def near(k: int, rng, spread: float = 0.3) -> np.ndarray:
    return unit(centre(k) + spread * unit(rng.normal(size=DIM)))


def event(i: int, label: str | None, source: str = "cam0", **kw) -> Event:
    return Event(
        time=T0 + 60 * i,
        source=source,
        kind="match" if label else "unknown",
        score=0.9 if label else 0.2,
        label=label,
        item_id=1 if label else None,
        **kw,
    )


def run(*args, ok=True):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output + result.stderr
    return result


def one_line_error(result, *names):
    assert result.exit_code == 1, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr
    for name in names:
        assert str(name) in result.stderr


# -- storage ----------------------------------------------------------------------------------
def test_an_events_file_of_the_first_step_is_migrated_with_its_events(tmp_path):
    path = tmp_path / "gallery.db"
    with Database(path) as db:  # as the previous version left it: events ladder step 1
        Migrations("events", MIGRATIONS.steps[:1]).apply(db)
        OUTBOX.apply(db)
        for i in range(3):
            db.execute("INSERT INTO events(time, kind, label, score) VALUES (?, 'match', 'cat', 0.9)", [T0 + i])
    with EventLog(path, []) as log:
        assert log.db.versions()["events"] == len(MIGRATIONS.steps) == 2
        assert [e.id for e in log.query(label="cat")] == [3, 2, 1]
        assert log.similar(centre(0)) == []  # recorded without descriptors: not searched
        with pytest.raises(EventError, match="event 2 was recorded without a descriptor"):
            log.similar_to(2)
        new = log.record(event(9, "cat"), centre(0))
        assert [e.id for e, _ in log.similar(centre(0))] == [new]
        plan = " ".join(
            r[3]
            for r in log.db.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM events WHERE label = 'cat' AND time < 5 ORDER BY time DESC, id DESC"
            )
        )
        assert "events_label" in plan and "TEMP B-TREE" not in plan  # a filtered page walks one index


def test_query_filters_and_keyset_paging(tmp_path):
    labels = ["cat", "coffee", None]
    with EventLog(tmp_path / "gallery.db", []) as log:
        for i in range(60):
            log.record(event(i, labels[i % 3], source=f"cam{i % 2}"))
        seen, before = [], None
        while page := log.query(before_id=before, limit=7):
            seen += [e.id for e in page]
            before = page[-1].id
        assert seen == list(range(60, 0, -1))  # every event once, newest first
        assert {e.label for e in log.query(label="cat", limit=100)} == {"cat"}
        assert len(log.query(label="cat", limit=100)) == 20
        assert {e.kind for e in log.query(kind="unknown", limit=100)} == {"unknown"}
        assert all(e.source == "cam1" for e in log.query(source="cam1", limit=100))
        window = log.query(since=T0 + 60 * 10, until=T0 + 60 * 20, limit=100)
        assert [e.id for e in window] == list(range(20, 10, -1))  # since ≤ time < until
        both = log.query(label="coffee", source="cam0", since=T0 + 60 * 30, limit=100)
        assert [e.id for e in both] == [59, 53, 47, 41, 35]
        assert log.query(label="coffee", before_id=35, source="cam0", since=T0 + 60 * 30) == []
        assert log.query(label="nobody") == []
        with pytest.raises(EventError, match="kind must be one of"):
            log.query(kind="maybe")
        detail = log.event(1)
        assert detail == log.query(before_id=2, limit=1)[0]
        # newest by time (a clock set back records an older time later), and a cursor deleted meanwhile
        late = log.record(event(-1, "cat"))
        assert [e.id for e in log.query(label="cat", limit=100)][-2:] == [1, late]
        assert log.delete(31) and [e.id for e in log.query(before_id=31, limit=2)] == [30, 29]


def test_similar_ranks_by_cosine_filters_and_follows_other_processes(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "gallery.db"
    with EventLog(path, []) as log, EventLog(path, []) as other:
        kinds = {}
        for i in range(90):
            k = i % 3
            kinds[log.record(event(i, f"item{k}", source=f"cam{i % 2}"), near(k, rng))] = k
        found = log.similar(centre(1), top_k=10)
        assert [kinds[e.id] for e, _ in found] == [1] * 10
        scores = [s for _, s in found]
        assert scores == sorted(scores, reverse=True) and 0.8 < scores[0] <= 1 + QUANTIZED
        assert all(
            e.source == "cam0" and e.time >= T0 + 60 * 45
            for e, _ in log.similar(centre(1), top_k=30, source="cam0", since=T0 + 60 * 45)
        )
        assert len(log.similar(centre(1), top_k=100, label="item2")) == 30  # a filter wins over the query
        first = found[0][0].id
        assert first not in [e.id for e, _ in log.similar_to(first, top_k=89)]  # the event itself left out
        assert all(kinds[e.id] == 1 for e, _ in log.similar_to(first, top_k=29))
        # recorded by another process: appended to the loaded index, not reloaded
        generation = log.history.generation
        new = other.record(event(100, "item1"), centre(1))
        assert log.similar(centre(1), top_k=1)[0][0].id == new and log.history.generation == generation
        # deleted by another process: gone at the next search
        assert other.delete(new) and log.similar(centre(1), top_k=1)[0][0].id != new
        assert log.history.generation == generation + 1
        assert log.delete(first) and first not in [e.id for e, _ in log.similar(centre(1), top_k=100)]
        assert log.history.generation == generation + 2  # its own deletion: no reload needed
        with pytest.raises(EventError, match="8-d descriptor cannot be compared with the events' 16-d"):
            log.similar(unit(np.ones(8)))
        with pytest.raises(EventError, match="8 dimensions, the stored ones 16"):
            log.record(event(101, "item1"), unit(np.ones(8)))
        with pytest.raises(EventError, match="finite unit vector"):
            log.record(event(101, "item1"), np.ones(DIM))
        assert log.query(limit=1)[0].id != 101  # nothing half-written


def test_delete_removes_the_row_its_descriptor_outbox_rows_and_snapshot(tmp_path):
    with EventLog(tmp_path / "gallery.db", ["mqtt", "webhook"]) as log:
        picture = np.full((48, 64, 3), 90, np.uint8)
        snap = write_snapshot(picture, event(1, "cat"), tmp_path / "snaps")
        kept = write_snapshot(picture, event(2, "cat"), tmp_path / "snaps")
        doomed = log.record(event(1, "cat", snapshot=str(snap)), centre(0))
        other = log.record(event(2, "cat", snapshot=str(kept)), centre(0))
        stranger = tmp_path / "mine.jpg"  # a path the database names, not a snapshot of ours
        shutil.copy(kept, stranger)
        third = log.record(event(3, "cat", snapshot=str(stranger)), centre(0))
        assert log.delete(doomed) is True
        assert not snap.exists() and kept.exists()
        count = lambda table, column: log.db.execute(  # noqa: E731
            f"SELECT count(*) FROM {table} WHERE {column} = ?", [doomed]
        ).fetchone()[0]
        assert (count("events", "id"), count("event_vectors", "event_id"), count("outbox", "event_id")) == (0, 0, 0)
        assert log.delete(doomed) is False
        with pytest.raises(EventError, match=f"no event {doomed}"):
            log.event(doomed)
        assert log.delete(third) and stranger.exists()  # only files named event-*.jpg are deleted
        assert [e.id for e, _ in log.similar(centre(0))] == [other]


def test_retention_removes_descriptors_and_snapshots_with_the_events(tmp_path):
    with EventLog(tmp_path / "gallery.db", []) as log:
        snaps = [write_snapshot(np.zeros((8, 8, 3), np.uint8), event(i, "cat"), tmp_path / "s") for i in range(5)]
        for i, snap in enumerate(snaps):
            log.record(event(i, "cat", snapshot=str(snap)), centre(i % DIM))
        log.max_count = 2
        assert log.prune() == 3
        assert log.db.execute("SELECT count(*) FROM event_vectors").fetchone()[0] == 2
        assert [s.exists() for s in snaps] == [False, False, False, True, True]
        assert sorted(e.id for e, _ in log.similar(centre(0), top_k=10)) == [4, 5]


def test_the_whole_frame_descriptor_of_a_ranking_is_the_photo_descriptor(embedder, tmp_path):
    """The whole preset stores the frame's descriptor; an uploaded photo is described the same way."""
    with Gallery(tmp_path / "g.db") as gallery:
        enroll(gallery, embedder, [("cat", photo("cat"))], features=False)
        image = read_image(photo("coffee"))
        ranking = open_recognizer(embedder, gallery, "whole").recognize(image)
    np.testing.assert_allclose(ranking.descriptor, photo_descriptor(embedder, image), atol=1e-5)


# -- a real service run on a clip: the same item's events find each other ----------------------
@pytest.fixture(scope="module")
def service_run(embedder, tmp_path_factory):
    """The demo clip with the cat and the coffee cup twice each; the default preset, snapshots on."""
    tmp = tmp_path_factory.mktemp("history")
    clip = democlip.DemoClip(0, sequence=("cat", "coffee", "cat", "coffee")).write(tmp / "clip.avi")
    with Gallery(tmp / "g.db") as gallery:
        enroll(gallery, embedder, [(name, photo(name)) for name in democlip.enrolled()])
    config = Config(
        source=SourceConfig(uri=str(clip), name="hall"),
        gallery=GalleryConfig(path=str(tmp / "g.db")),
        snapshot=SnapshotConfig(enabled=True, folder=str(tmp / "snaps")),
        decision=DecisionConfig(cooldown=1.0, unknown=True),  # each appearance alerts
    )
    summary = Daemon(config, embedder=embedder, notifier=Notifier(None)).run()
    assert [d.label for d in summary.decisions if d.kind == "match"] == ["cat", "coffee", "cat", "coffee"]
    return tmp / "g.db"


def test_a_service_run_keeps_what_the_review_shows_and_the_same_item_ranks_first(service_run, embedder):
    with EventLog(service_run, []) as log, Gallery(log.db) as gallery:
        matches = log.query(kind="match")
        assert len(matches) == 4 and len(log.query(kind="unknown")) >= 1
        for e in matches:
            d = e.details
            assert {"threshold", "margin", "votes", "window", "inliers", "cosine"} <= set(d)
            assert d["inliers"] > 10 and len(d["points"]) <= 64 and e.polygon is not None
            assert e.snapshot and cv2.imread(e.snapshot).shape == (480, 640, 3)
            assert enrolled_photo(gallery, e.item_id) == photo(e.label)  # the enrolled photo beside it
            found = log.similar_to(e.id, top_k=3)
            assert found[0][0].label == e.label, (e.label, [(f.label, s) for f, s in found])
        by_photo = log.similar(photo_descriptor(embedder, read_image(photo("cat"))), top_k=3)
        assert [f.label for f, _ in by_photo[:2]] == ["cat", "cat"] and by_photo[1][1] > 0.5 > by_photo[2][1]


# -- the CLI ------------------------------------------------------------------------------------
@pytest.fixture
def gallery_copy(service_run, tmp_path):
    """The service run's gallery, copied: CLI tests that delete or export leave the module's alone."""
    with sqlite3.connect(service_run) as src, sqlite3.connect(tmp_path / "g.db") as dst:
        src.backup(dst)
    return tmp_path / "g.db"


def test_events_list_filters_pages_and_refuses_a_bad_time(gallery_copy):
    rows = [
        json.loads(line)
        for line in run("events", "list", "--kind", "match", "--json", "-g", gallery_copy).stdout.splitlines()
    ]
    assert [r["label"] for r in rows] == ["coffee", "cat", "coffee", "cat"]
    assert {"threshold", "inliers", "margin", "votes"} <= set(rows[0]["details"]) and rows[0]["deliveries"] == []
    cats = run("events", "list", "--label", "cat", "--since", "1d", "-g", gallery_copy).stdout.splitlines()
    assert len(cats) == 2 and all(" cat " in line for line in cats)
    older = run("events", "list", "--label", "cat", "--before", rows[1]["event_id"], "-g", gallery_copy).stdout
    assert len(older.splitlines()) == 1
    assert run("events", "list", "--until", "2001-01-01", "-g", gallery_copy).stdout == ""
    one_line_error(
        run("events", "list", "--since", "yesterday-ish", "-g", gallery_copy, ok=False), "--since", "yesterday-ish"
    )


def test_events_search_by_photo_and_by_event(gallery_copy, tmp_path):
    out = run("events", "search", photo("coffee"), "--top-k", "2", "--json", "-g", gallery_copy).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["label"] for r in rows] == ["coffee", "coffee"] and rows[0]["similarity"] >= rows[1]["similarity"]
    like = run("events", "search", "--event", rows[0]["event_id"], "-k", "1", "-g", gallery_copy).stdout
    assert f"{rows[1]['event_id']:>6}" in like and "coffee" in like
    sheet = tmp_path / "like.jpg"
    run("events", "search", photo("cat"), "--label", "cat", "--contact-sheet", sheet, "-g", gallery_copy)
    assert cv2.imread(str(sheet)).shape[1] == 2 * (TILE[0] + 12)  # two cat events side by side
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    one_line_error(run("events", "search", bad, "-g", gallery_copy, ok=False), "broken.jpg")
    one_line_error(run("events", "search", tmp_path / "absent.jpg", "-g", gallery_copy, ok=False), "absent.jpg")
    one_line_error(run("events", "search", "--event", "999", "-g", gallery_copy, ok=False), "no event 999")
    assert run("events", "search", "-g", gallery_copy, ok=False).exit_code == 2  # neither IMAGE nor --event


def test_contact_sheets_of_events_and_of_a_lookup(gallery_copy, tmp_path):
    out = tmp_path / "sheet.jpg"
    result = run("events", "export", "--contact-sheet", out, "--kind", "match", "-g", gallery_copy)
    assert "wrote 4 event(s) (4 with a snapshot)" in result.stderr
    image = cv2.imread(str(out))
    assert image.shape[1] == 4 * (TILE[0] + 12) and image.shape[0] > TILE[1]
    cell = image[6 : 6 + TILE[1], 6 : 6 + TILE[0]]
    assert cell.std() > 20  # a snapshot, not an empty tile
    nothing = tmp_path / "none.jpg"
    one_line_error(
        run("events", "export", "--contact-sheet", nothing, "--label", "nobody", "-g", gallery_copy, ok=False),
        "no events match",
    )
    assert not nothing.exists()
    one_line_error(
        run("events", "export", "--contact-sheet", tmp_path / "no" / "dir.jpg", "-g", gallery_copy, ok=False), "dir.jpg"
    )
    lookup = tmp_path / "lookup.jpg"
    run("search", photo("cat"), "--top-k", "3", "--contact-sheet", lookup, "-g", gallery_copy)
    assert cv2.imread(str(lookup)).shape[1] == 4 * (TILE[0] + 12)  # the query and its top 3
