"""Events in the gallery file, their outbox rows, and snapshots with retention, on real files."""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import replace

import cv2
import numpy as np
import pytest

from edge_retrieval.sinks import SnapshotConfig
from edge_retrieval.storage.database import SCHEMA_VERSION
from edge_retrieval.storage.events import Event, EventError, EventLog, prune_snapshots, write_snapshot
from edge_retrieval.storage.gallery import Gallery

_JPEG_MEAN_ABS_ERROR = 4.0  # mean |pixel difference| of an undrawn snapshot at quality 90
_DRAWN_MIN_CHANGE = 20.0  # mean |difference| inside the label banner of a drawn one

SINKS = ("stdout", "webhook", "mqtt")


def match(t: float = 1_700_000_000.0, label: str = "cat", **kw) -> Event:
    return Event(
        time=t, source="cam0", kind="match", label=label, item_id=1, score=0.875, metadata={"owner": "Ada"}, **kw
    )


@pytest.fixture
def log(tmp_path):
    with EventLog(tmp_path / "gallery.db", SINKS) as log:
        yield log


def test_migration_adds_events_and_export_leaves_them_out(tmp_path, log):
    log.record(match())
    with Gallery(log.path) as g:
        assert {"events", "outbox"} <= set(g.db.table_names())
        assert g.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        g.export(tmp_path / "export.db")
    exported = sqlite3.connect(tmp_path / "export.db")
    rows = {t: exported.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("events", "outbox")}
    exported.close()
    assert rows == {"events": 0, "outbox": 0}  # the schema stays whole, the events don't travel
    with Gallery(tmp_path / "export.db") as opened:
        assert opened.count() == (0, 0)


def test_record_stores_the_event_and_one_outbox_row_per_sink(log):
    event = match(box=(10, 20, 110, 220), details={"margin": 0.12})
    event_id = log.record(event)
    assert log.recent(1) == [replace(event, id=event_id)]
    rows = log.db.execute("SELECT event_id, sink, attempts, delivered FROM outbox ORDER BY id").fetchall()
    assert rows == [(event_id, sink, 0, None) for sink in SINKS]
    body = log.event(event_id).payload()
    assert body == {
        "event_id": event_id,
        "time": 1_700_000_000.0,
        "time_iso": "2023-11-14T22:13:20.000+00:00",
        "source": "cam0",
        "kind": "match",
        "label": "cat",
        "item_id": 1,
        "score": 0.875,
        "snapshot": None,
        "metadata": {"owner": "Ada"},
        "details": {"margin": 0.12},
        "box": [10, 20, 110, 220],
        "polygon": None,
    }


def test_record_is_one_transaction(tmp_path):
    with EventLog(tmp_path / "gallery.db", ["stdout", None]) as broken:  # 2nd outbox row violates NOT NULL
        with pytest.raises(EventError, match="cannot record"):
            broken.record(match())
        assert broken.recent() == []
        assert broken.db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0


def _deliver_all(log: EventLog) -> None:
    log.db.execute("UPDATE outbox SET delivered = 1 WHERE delivered IS NULL AND parked IS NULL")


def _park(log: EventLog, event_id: int, sink: str, error: str = "PermanentDeliveryError: HTTP 400") -> None:
    log.db.execute(
        "UPDATE outbox SET parked = ?, last_error = ? WHERE event_id = ? AND sink = ?",
        [time.time(), error, event_id, sink],
    )


def test_history_keeps_the_newest_events_but_never_one_a_sink_waits_for(tmp_path):
    with EventLog(tmp_path / "gallery.db", ["webhook"], max_count=3) as log:
        log.prune_interval = 0  # a pass at every record (the service: at most one an hour)
        ids = [log.record(match(t=1_700_000_000.0 + i)) for i in range(5)]
        assert [e.id for e in log.recent(10)] == ids[::-1]  # undelivered: all kept
        _deliver_all(log)
        ids.append(log.record(match(t=1_700_000_010.0)))
        assert [e.id for e in log.recent(10)] == ids[:2:-1]  # the 3 newest
        outbox = log.db.execute("SELECT event_id FROM outbox ORDER BY id").fetchall()
        assert outbox == [(i,) for i in ids[3:]]  # the deleted events' delivery rows went with them
    with EventLog(tmp_path / "none.db", [], max_count=2) as log:  # no sink: nothing to wait for
        ids = [log.record(match(t=1_700_000_000.0 + i)) for i in range(4)]
        assert [e.id for e in log.recent(10)] == ids[::-1]  # one pass an hour: the first was at open
    with EventLog(tmp_path / "none.db", [], max_count=2) as log:  # the pass at open
        assert [e.id for e in log.recent(10)] == ids[:1:-1]


def test_history_drops_events_older_than_its_age_once_delivered(tmp_path):
    day = 86400.0
    now = time.time()
    with EventLog(tmp_path / "gallery.db", ["mqtt"], max_age_days=30) as log:
        log.prune_interval = 0
        old = [log.record(match(t=now - k * day)) for k in (40, 31)]
        recent = log.record(match(t=now - 29 * day))
        assert len(log.recent(10)) == 3  # waiting for mqtt
        _deliver_all(log)
        latest = log.record(match(t=now))
        assert [e.id for e in log.recent(10)] == [latest, recent]
        assert not set(old) & {e.id for e in log.recent(10)}
        assert log.prune(now=now + 2 * day) == 1  # `recent` is 31 days old by then
    with pytest.raises(EventError, match="retention"):
        EventLog(tmp_path / "gallery.db", [], max_count=-1)


def test_a_parked_event_is_kept_whatever_the_count_but_goes_with_its_age(tmp_path):
    day = 86400.0
    now = time.time()
    with EventLog(tmp_path / "gallery.db", ["webhook", "mqtt"], max_count=2, max_age_days=30) as log:
        log.prune_interval = 0
        parked = log.record(match(t=now - 20 * day))
        _park(log, parked, "webhook")  # refused for good by the webhook, delivered to mqtt
        _deliver_all(log)
        ids = [log.record(match(t=now - k * day)) for k in (3, 2, 1)]
        _deliver_all(log)
        ids.append(log.record(match(t=now)))
        assert [e.id for e in log.recent(10)] == [ids[3], ids[2], parked]  # beyond the count, yet kept
        [(event, deliveries)] = log.deliveries(10, parked=True)
        assert event.id == parked
        assert [(d.sink, d.state, d.error) for d in deliveries] == [
            ("webhook", "parked", "PermanentDeliveryError: HTTP 400"),
            ("mqtt", "delivered", None),
        ]
        assert log.prune(now=now + 9 * day) == 0  # 29 days old: still there to be looked at, retried
        assert log.prune(now=now + 11 * day) == 1  # 31 days: gone, like any settled event
        assert log.deliveries(10, parked=True) == []


def test_retry_un_parks_the_rows_given_or_all(tmp_path):
    with EventLog(tmp_path / "gallery.db", ["webhook", "command"]) as log:
        ids = [log.record(match(t=1_700_000_000.0 + i)) for i in range(3)]
        for event_id, sink in [(ids[0], "webhook"), (ids[0], "command"), (ids[2], "command")]:
            _park(log, event_id, sink)
        assert log.retry([ids[1]]) == []  # nothing parked there
        assert log.retry([ids[2]]) == [(ids[2], "command")]
        states = {(e.id, d.sink): d.state for e, ds in log.deliveries() for d in ds}
        assert states[(ids[2], "command")] == "pending" and states[(ids[0], "webhook")] == "parked"
        assert log.retry() == [(ids[0], "webhook"), (ids[0], "command")]
        assert log.deliveries(parked=True) == [] and log.retry() == []


def test_an_outbox_from_before_parking_is_migrated_with_its_rows(tmp_path):
    from test_database import legacy_gallery  # a file of the previous version: one ladder, no `parked`

    path = tmp_path / "gallery.db"
    legacy_gallery(path, 4)
    with EventLog(path, ["mqtt"]) as log:
        [(event, [delivery])] = log.deliveries()
        assert (event.id, delivery.sink, delivery.state) == (1, "mqtt", "pending")
        plan = " ".join(
            str(r)
            for r in log.db.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM outbox WHERE sink = 'mqtt' AND delivered IS NULL "
                "AND parked IS NULL ORDER BY event_id"
            )
        )
        assert "outbox_pending" in plan  # the dispatcher's look skips parked rows by the index


def test_history_that_cannot_be_pruned_is_logged_and_the_events_still_recorded(tmp_path, caplog):
    path = tmp_path / "gallery.db"
    with EventLog(path, []) as first:  # SQLite itself refuses the deletions (as a full disk would)
        first.db.execute("CREATE TRIGGER keep BEFORE DELETE ON events BEGIN SELECT RAISE(ABORT, 'kept'); END")
    with EventLog(path, [], max_count=1) as log:
        log.prune_interval = 0
        ids = [log.record(match(t=1_700_000_000.0 + i)) for i in range(3)]
        assert [e.id for e in log.recent(10)] == ids[::-1]
        assert "cannot delete old events (kept)" in caplog.text
        log.db.execute("DROP TRIGGER keep")
        ids.append(log.record(match(t=1_700_000_010.0)))
        assert [e.id for e in log.recent(10)] == ids[-1:]


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(kind="maybe"), "kind"),
        (dict(score=float("nan")), "finite"),
        (dict(metadata={"when": object()}), "not JSON"),
    ],
)
def test_record_rejects_malformed_events(log, bad, message):
    with pytest.raises(EventError, match=message):
        log.record(replace(match(), **bad))


def test_recent_is_newest_first(log):
    ids = [log.record(match(t=1_700_000_000.0 + i, label=f"l{i}")) for i in range(5)]
    assert [e.id for e in log.recent(3)] == ids[::-1][:3]
    unknown = Event(time=1.0, source="cam1", kind="unknown", score=0.1)
    assert log.event(log.record(unknown)).label is None


def test_snapshot_is_drawn_on_a_copy_and_written_atomically(tmp_path, photos):
    frame = cv2.imread(str(photos / "cat.jpg"))
    before = frame.copy()
    folder = tmp_path / "snaps"
    event = match(polygon=((5, 5), (60, 10), (40, 70)), box=(20, 30, 120, 130))
    drawn = write_snapshot(frame, event, folder, jpeg_quality=90)
    plain = write_snapshot(frame, event, folder, draw=None, jpeg_quality=90)
    assert (frame == before).all()  # the caller's frame is untouched
    assert drawn != plain and drawn.is_absolute() and drawn.name.startswith("event-20231114T221320")
    assert sorted(p.name for p in folder.iterdir()) == sorted([drawn.name, plain.name])  # no .tmp left
    plain_img, drawn_img = cv2.imread(str(plain)), cv2.imread(str(drawn))
    assert plain_img.shape == drawn_img.shape == frame.shape
    assert np.abs(plain_img.astype(float) - frame).mean() < _JPEG_MEAN_ABS_ERROR
    banner = (slice(0, 12), slice(0, 60))
    assert np.abs(drawn_img[banner].astype(float) - frame[banner]).mean() > _DRAWN_MIN_CHANGE
    gray = write_snapshot(frame[:, :, 0], event, folder)
    assert cv2.imread(str(gray)).shape == frame.shape
    with pytest.raises(EventError, match="uint8"):
        write_snapshot(frame.astype(np.float32), event, folder)


def test_snapshot_retention_by_count_and_age_nulls_paths(tmp_path, log):
    frame = np.full((48, 64, 3), 127, np.uint8)
    folder = tmp_path / "snaps"
    (folder).mkdir()
    (folder / "keep-me.jpg").write_bytes(b"not ours")
    config = SnapshotConfig(enabled=True, folder=str(folder), max_count=3, max_age_days=30)
    ids, paths = [], []
    for i in range(5):
        event = match(t=time.time() + i, label=f"p{i}")
        path = log.save_snapshot(frame, event, config)
        paths.append(path)
        ids.append(log.record(replace(event, snapshot=path)))
    assert [os.path.exists(p) for p in paths] == [False, False, True, True, True]
    assert [log.event(i).snapshot for i in ids] == [None, None, *paths[2:]]
    month_ago = time.time() - 31 * 86400
    os.utime(paths[2], (month_ago, month_ago))
    assert prune_snapshots(folder, max_count=3, max_age_days=30) == [type(folder)(paths[2])]
    assert (folder / "keep-me.jpg").exists()
    assert prune_snapshots(folder) == []  # 0 = no limits
