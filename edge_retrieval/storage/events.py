"""Events: every decision becomes a row in the gallery file, and optionally a JPEG snapshot.

`EventLog.record` writes the event and one outbox row per configured sink in one
transaction; the dispatcher (`outbox.py`) delivers those rows. Snapshots are written
atomically (temporary file, then rename) and kept within a count and an age: the oldest
files go and their events' `snapshot` becomes NULL. The events themselves are kept within a
count and an age too (`EventLog(max_count=, max_age_days=)`), except those a sink has not
acknowledged yet. An event a sink refused for good (its outbox row parked, see `outbox.py`)
is kept whatever the count, so it can be looked at and retried (`deliveries`, `retry`), but
goes once older than max_age_days: a sink that refuses everything cannot fill the disk.

For review, each event keeps the descriptor its decision rested on (`record(event, descriptor)`,
history.py): `query` pages through the events newest first with filters, `similar`/`similar_to`
rank them by example, `delete` removes one with its descriptor, outbox rows and snapshot.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from .. import quantize
from ..errors import EventError
from ..sinks import SnapshotConfig
from .database import Database, Migrations
from .history import Filters, HistoryIndex, generation, photo_descriptor  # noqa: F401 (photo_descriptor: the API)

log = logging.getLogger(__name__)

KINDS = ("match", "unknown")
SNAPSHOT_GLOB = "event-*.jpg"  # retention only ever touches files named like this
EVENT_COLUMNS = "id, time, source, kind, label, item_id, score, snapshot, data"
PRUNE_INTERVAL = 3600.0  # seconds between event-retention passes while recording (one at open)

MIGRATIONS = Migrations(
    "events",
    [
        # 1: every decision (the outbox ladder, outbox.py, adds a row per event and sink)
        """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        source TEXT NOT NULL DEFAULT '',
        kind TEXT NOT NULL CHECK (kind IN ('match', 'unknown')),
        label TEXT,
        item_id INTEGER,
        score REAL NOT NULL,
        snapshot TEXT,
        data TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_time ON events(time);
    """,
        # 2: each event's descriptor (int8 as the gallery's vectors: history.py), a counter of deletions
        #    (an in-memory index reloads when it moves), and indexes for the review's filters: a page
        #    (newest first: time, then id) with one filter and a time range is a walk down one index
        [
            """CREATE TABLE event_vectors (
            event_id INTEGER PRIMARY KEY REFERENCES events(id) ON DELETE CASCADE,
            scale REAL NOT NULL,
            vector BLOB NOT NULL
        )""",
            "CREATE TABLE event_state (id INTEGER PRIMARY KEY CHECK (id = 1), generation INTEGER NOT NULL)",
            "INSERT INTO event_state VALUES (1, 0)",
            """CREATE TRIGGER events_deleted AFTER DELETE ON events BEGIN
            UPDATE event_state SET generation = generation + 1;
        END""",
            "CREATE INDEX events_label ON events(label, time)",
            "CREATE INDEX events_kind ON events(kind, time)",
            "CREATE INDEX events_source ON events(source, time)",
        ],
    ],
)


def open_events(db: Database | str | Path) -> tuple[Database, bool]:
    """(the database with the events and outbox ladders applied, whether it was opened here)."""
    from .outbox import MIGRATIONS as OUTBOX  # outbox.py imports this module

    own = not isinstance(db, Database)
    if (str(db) if own else db.path) == ":memory:":
        raise EventError("events need a gallery file (the dispatcher reads it over its own connection)")
    db = Database(db) if own else db
    try:
        MIGRATIONS.apply(db)
        OUTBOX.apply(db)
    except BaseException:
        if own:
            db.close()
        raise
    return db, own


@dataclass(frozen=True, kw_only=True)
class Event:
    """One decision. Coordinates are frame pixels; `id` is set once recorded."""

    time: float  # seconds since the epoch
    source: str  # the camera / frame source
    kind: str  # 'match' | 'unknown'
    score: float  # cosine similarity of the best item
    label: str | None = None  # the matched item's label (None for 'unknown')
    item_id: int | None = None
    snapshot: str | None = None  # absolute path of the JPEG, None if none (or deleted by retention)
    metadata: dict[str, Any] = field(default_factory=dict)  # the matched item's metadata
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1
    polygon: tuple[tuple[float, float], ...] | None = None  # closed outline, (x, y) points
    details: dict[str, Any] = field(default_factory=dict)  # anything else from the decision (margin, votes...)
    id: int | None = None

    def data(self) -> dict[str, Any]:
        """What goes into the `data` JSON column."""
        return {
            "metadata": self.metadata,
            "details": self.details,
            "box": list(self.box) if self.box is not None else None,
            "polygon": [list(p) for p in self.polygon] if self.polygon is not None else None,
        }

    def payload(self) -> dict[str, Any]:
        """The JSON every sink receives."""
        return {
            "event_id": self.id,
            "time": self.time,
            "time_iso": datetime.fromtimestamp(self.time, timezone.utc).isoformat(timespec="milliseconds"),
            "source": self.source,
            "kind": self.kind,
            "label": self.label,
            "item_id": self.item_id,
            "score": self.score,
            "snapshot": self.snapshot,
            **self.data(),
        }

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> "Event":
        """From a row of `SELECT {EVENT_COLUMNS} FROM events`."""
        event_id, t, source, kind, label, item_id, score, snapshot, data = row
        data = json.loads(data or "{}")
        box = data.get("box")
        polygon = data.get("polygon")
        return cls(
            id=event_id,
            time=t,
            source=source,
            kind=kind,
            label=label,
            item_id=item_id,
            score=score,
            snapshot=snapshot,
            metadata=data.get("metadata") or {},
            details=data.get("details") or {},
            box=tuple(box) if box is not None else None,
            polygon=tuple(tuple(p) for p in polygon) if polygon is not None else None,
        )


@dataclass(frozen=True)
class Delivery:
    """Where one event stands with one sink."""

    sink: str
    state: str  # 'delivered' | 'pending' (being tried) | 'parked' (refused for good, until retried)
    attempts: int
    error: str | None  # the last refusal (a delivered row has none)
    time: float | None  # when delivered or parked


class EventLog:
    """The events table of one gallery file, with an outbox row per event and sink.

    >>> log = EventLog(gallery.db, [s.name for s in sinks])   # or a path: the file is opened here
    >>> event_id = log.record(Event(time=time.time(), source="cam0", kind="match", label="cat", score=0.9))
    >>> dispatcher.wake()
    """

    def __init__(
        self, db: Database | str | Path, sink_names: Sequence[str], *, max_count: int = 0, max_age_days: float = 0
    ):
        """`max_count`, `max_age_days`: the events beyond the newest max_count and those older
        than max_age_days (0 = no limit) are deleted with their outbox rows, except events that
        still wait for a sink (no alert is lost to retention; a parked one waits only until
        max_age_days): at open, then by `record` at most
        every `prune_interval` seconds (a pass checks each old event against the outbox: ≈ 8 ms
        with 5,000 events still owed to a sink that is down, 0.8 s for the first pass over
        100,000 events past their age)."""
        self.sink_names = tuple(sink_names)
        if len(set(self.sink_names)) != len(self.sink_names):
            raise EventError(f"sink names must be unique: {self.sink_names}")
        if max_count < 0 or not max_age_days >= 0:
            raise EventError(f"event retention must be 0 (no limit) or positive, not {max_count}, {max_age_days}")
        self.max_count, self.max_age_days = max_count, max_age_days
        self.prune_interval = PRUNE_INTERVAL
        self.db, self._own = open_events(db)
        self.path = self.db.path
        self._pruned_at = -math.inf
        self._dim: int | None = None  # of the stored descriptors, once looked up
        self.history = HistoryIndex(self.db)
        self._prune_or_log()

    def record(self, event: Event, descriptor: np.ndarray | None = None) -> int:
        """Store the event, its descriptor (`Ranking.descriptor`: a unit float32 vector, kept as
        int8 for search by example) and its outbox rows in one transaction; returns the event id."""
        vector = self._checked_descriptor(descriptor) if descriptor is not None else None
        if event.kind not in KINDS:
            raise EventError(f"event kind must be one of {KINDS}, not {event.kind!r}")
        if not math.isfinite(event.score) or not math.isfinite(event.time):
            raise EventError(f"event time and score must be finite numbers ({event.time}, {event.score})")
        try:
            data = json.dumps(event.data())
        except (TypeError, ValueError) as e:
            raise EventError(f"event data is not JSON ({e})") from None
        db = self.db
        try:
            with self.db.atomic():  # not a gallery change: the generation stays
                event_id = db.execute(
                    "INSERT INTO events(time, source, kind, label, item_id, score, snapshot, data) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        event.time,
                        event.source,
                        event.kind,
                        event.label,
                        event.item_id,
                        float(event.score),
                        event.snapshot,
                        data,
                    ],
                ).lastrowid
                db.conn.executemany(
                    "INSERT INTO outbox(event_id, sink, attempts, next_try) VALUES (?, ?, 0, 0)",
                    [(event_id, sink) for sink in self.sink_names],
                )
                if vector is not None:
                    codes, scales = quantize.quantize(vector)
                    db.execute(
                        "INSERT INTO event_vectors(event_id, scale, vector) VALUES (?, ?, ?)",
                        [event_id, float(scales[0]), quantize.to_blob(codes[0])],
                    )
        except sqlite3.Error as e:
            raise EventError(f"{self.path}: cannot record the event ({e})") from None
        if time.monotonic() - self._pruned_at >= self.prune_interval:
            self._prune_or_log()
        return int(event_id)

    def _checked_descriptor(self, descriptor: np.ndarray) -> np.ndarray:
        from .gallery import UNIT_TOLERANCE

        vector = np.asarray(descriptor, np.float32).reshape(1, -1)
        if not np.isfinite(vector).all() or abs(float(np.linalg.norm(vector)) - 1) > UNIT_TOLERANCE:
            raise EventError("event descriptor must be a finite unit vector (as the recognizer gives it)")
        if self._dim is None:
            row = self.db.execute("SELECT length(vector) FROM event_vectors LIMIT 1").fetchone()
            self._dim = row[0] if row else None
        if self._dim is not None and vector.shape[1] != self._dim:
            raise EventError(f"event descriptor has {vector.shape[1]} dimensions, the stored ones {self._dim}")
        self._dim = vector.shape[1]
        return vector

    def _prune_or_log(self) -> None:
        """Retention never stops the service nor fails a recorded event (a full disk cannot take
        the deletions' WAL pages either): logged, tried again after `prune_interval`. Nothing
        without a limit."""
        if not (self.max_count or self.max_age_days):
            return
        try:
            self.prune()
        except EventError as e:
            log.warning("%s; tried again in %.0f s", e, self.prune_interval)

    def prune(self, now: float | None = None) -> int:
        """Delete the events beyond the retention that no sink waits for (their outbox rows go
        with them: ON DELETE CASCADE), in one transaction; the number deleted."""
        now = time.time() if now is None else now
        self._pruned_at = time.monotonic()
        try:
            with self.db.atomic():  # not a gallery change: the generation stays
                snapshots = self._prune(now)
        except sqlite3.Error as e:
            raise EventError(f"{self.path}: cannot delete old events ({e})") from None
        for path in snapshots:  # after the commit: a rolled-back prune keeps its pictures
            remove_snapshot(path)
        return len(snapshots)

    def _prune(self, now: float) -> list[str | None]:
        """The deleted events' snapshot paths (None where an event had none); descriptors and
        outbox rows go with their events (ON DELETE CASCADE)."""
        conn, deleted = self.db.conn, []
        settled = "NOT EXISTS (SELECT 1 FROM outbox o WHERE o.event_id = e.id AND o.delivered IS NULL{})"
        if self.max_count:
            row = conn.execute("SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?", [self.max_count]).fetchone()
            if row is not None:
                deleted += conn.execute(
                    f"DELETE FROM events WHERE id IN (SELECT id FROM events e WHERE id <= ? AND {settled.format('')}) "
                    "RETURNING snapshot",
                    [row[0]],
                ).fetchall()
        if self.max_age_days:
            deleted += conn.execute(
                f"DELETE FROM events WHERE id IN (SELECT id FROM events e WHERE time < ? "
                f"AND {settled.format(' AND o.parked IS NULL')}) RETURNING snapshot",  # parked: kept till here
                [now - self.max_age_days * 86400],
            ).fetchall()
        return [r[0] for r in deleted]

    def recent(self, n: int = 20) -> list[Event]:
        """The last n events recorded, the last first."""
        rows = self.db.execute(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY id DESC LIMIT ?", [n])
        return [Event.from_row(r) for r in rows.fetchall()]

    def query(
        self,
        *,
        label: str | None = None,
        kind: str | None = None,
        source: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before_id: int | None = None,
        limit: int = 50,
        parked: bool = False,
    ) -> list[Event]:
        """Events newest first (by time, then id): those with this label, kind, source, since ≤
        time < until (None: any), listed after event `before_id` (the next page: the last id of
        this one), and with a parked outbox row if `parked`. A page is a walk down one index
        (< 1 ms in 100,000 events, whatever the filter and the depth)."""
        if kind is not None and kind not in KINDS:
            raise EventError(f"event kind must be one of {KINDS}, not {kind!r}")
        terms, args = Filters(label, kind, source, since, until).sql()
        if before_id is not None:
            cursor = self.db.execute("SELECT time, id FROM events WHERE id = ?", [int(before_id)]).fetchone()
            if cursor is not None:
                terms.append("(time, id) < (?, ?)")
            else:  # deleted meanwhile: go on from the event recorded before it (inclusive)
                cursor = self.db.execute(
                    "SELECT time, id FROM events WHERE id < ? ORDER BY id DESC LIMIT 1", [int(before_id)]
                ).fetchone()
                if cursor is None:
                    return []
                terms.append("(time, id) <= (?, ?)")
            args += list(cursor)
        if parked:
            terms.append("id IN (SELECT event_id FROM outbox WHERE parked IS NOT NULL)")
        where = f"WHERE {' AND '.join(terms)}" if terms else ""
        rows = self.db.execute(
            f"SELECT {EVENT_COLUMNS} FROM events {where} ORDER BY time DESC, id DESC LIMIT ?",
            [*args, max(0, int(limit))],
        )
        return [Event.from_row(r) for r in rows.fetchall()]

    def deliveries(self, n: int = 20, parked: bool = False, **filters) -> list[tuple[Event, list[Delivery]]]:
        """The last n events (only those with a parked row if `parked`; `filters` as `query`),
        newest first, each with its delivery to every sink."""
        events = self.query(limit=n, parked=parked, **filters)
        rows: dict[int, list[Delivery]] = {e.id: [] for e in events}
        marks = ", ".join("?" * len(rows))
        for event_id, sink, attempts, delivered, parked_at, error in self.db.execute(
            "SELECT event_id, sink, attempts, delivered, parked, last_error FROM outbox "
            f"WHERE event_id IN ({marks}) ORDER BY id",
            list(rows),
        ).fetchall():
            state = "delivered" if delivered is not None else "parked" if parked_at is not None else "pending"
            rows[event_id].append(Delivery(sink, state, attempts, error, delivered or parked_at))
        return [(e, rows[e.id]) for e in events]

    def retry(self, event_ids: Sequence[int] | None = None) -> list[tuple[int, str]]:
        """Un-park the parked outbox rows of these events (None = of every event): the running
        dispatcher delivers them at its next look (within its idle_s), or the next one at start.
        Returns the (event id, sink) pairs un-parked, in the outbox's order."""
        where, args = "parked IS NOT NULL", []
        if event_ids is not None:
            where += f" AND event_id IN ({', '.join('?' * len(event_ids))})"
            args = [int(i) for i in event_ids]
        try:
            with self.db.atomic():  # not a gallery change: the generation stays
                rows = self.db.execute(
                    f"UPDATE outbox SET parked = NULL, next_try = 0 WHERE {where} RETURNING id, event_id, sink", args
                ).fetchall()
        except sqlite3.Error as e:
            raise EventError(f"{self.path}: cannot un-park events ({e})") from None
        return [(int(event_id), sink) for _, event_id, sink in sorted(rows)]

    def event(self, event_id: int) -> Event:
        row = self.db.execute(f"SELECT {EVENT_COLUMNS} FROM events WHERE id = ?", [event_id]).fetchone()
        if row is None:
            raise EventError(f"{self.path}: no event {event_id}")
        return Event.from_row(row)

    # -- search by example (history.py) ---------------------------------------------------
    def similar(
        self,
        vector: np.ndarray,
        *,
        top_k: int = 50,
        label: str | None = None,
        kind: str | None = None,
        source: str | None = None,
        since: float | None = None,
        until: float | None = None,
        exclude: int | None = None,
    ) -> list[tuple[Event, float]]:
        """The events whose descriptor is nearest `vector` (a unit descriptor of the model's
        dimension: `photo_descriptor`, or an event's), with their cosine, best first; filtered as
        `query`. Events recorded without a descriptor are not searched."""
        if kind is not None and kind not in KINDS:
            raise EventError(f"event kind must be one of {KINDS}, not {kind!r}")
        found = self.history.search(vector, top_k, Filters(label, kind, source, since, until), exclude)
        if not found:
            return []
        marks = ", ".join("?" * len(found))
        rows = self.db.execute(f"SELECT {EVENT_COLUMNS} FROM events WHERE id IN ({marks})", [i for i, _ in found])
        events = {r[0]: Event.from_row(r) for r in rows.fetchall()}
        return [(events[i], score) for i, score in found if i in events]  # (one deleted meanwhile drops out)

    def similar_to(self, event_id: int, *, top_k: int = 50, **filters) -> list[tuple[Event, float]]:
        """`similar` to an event's own descriptor, the event itself left out."""
        vector = self.history.vector(int(event_id))
        if vector is None:
            self.event(event_id)  # EventError: no such event
            raise EventError(f"{self.path}: event {event_id} was recorded without a descriptor")
        return self.similar(vector, top_k=top_k, exclude=int(event_id), **filters)

    def delete(self, event_id: int) -> bool:
        """Delete an event with its descriptor, its outbox rows and its snapshot file; False if
        there was no such event."""
        try:
            with self.db.atomic():  # not a gallery change: the generation stays
                before = generation(self.db.conn)
                row = self.db.execute("DELETE FROM events WHERE id = ? RETURNING snapshot", [int(event_id)]).fetchone()
                after = generation(self.db.conn)
        except sqlite3.Error as e:
            raise EventError(f"{self.path}: cannot delete event {event_id} ({e})") from None
        if row is None:
            return False
        self.history.forget(int(event_id), before, after)
        remove_snapshot(row[0])
        return True

    def save_snapshot(
        self,
        frame_bgr: np.ndarray,
        event: Event,
        config: SnapshotConfig,
        draw: Callable[[np.ndarray, Event], None] | None = None,
    ) -> str:
        """Write the frame as a JPEG (`draw`s on a copy first; None = `draw_event`), then enforce retention.

        Returns the snapshot's absolute path, for `replace(event, snapshot=path)` before
        `record`. Files removed by retention have their events' `snapshot` set to NULL.
        """
        path = write_snapshot(
            frame_bgr, event, config.folder, draw=draw or draw_event, jpeg_quality=config.jpeg_quality
        )
        removed = prune_snapshots(config.folder, max_count=config.max_count, max_age_days=config.max_age_days)
        if removed:
            with self.db.atomic():  # not a gallery change: the generation stays
                self.db.conn.executemany(
                    "UPDATE events SET snapshot = NULL WHERE snapshot = ?", [(str(p),) for p in removed]
                )
        return str(path)

    def close(self) -> None:
        if self._own:
            self.db.close()

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- snapshots -----------------------------------------------------------------
def draw_event(image: np.ndarray, event: Event) -> None:
    """Draw the box or polygon and "label score" on a BGR image, in place."""
    height, width = image.shape[:2]
    color = (60, 200, 60) if event.kind == "match" else (40, 40, 230)
    thick = max(2, round(width / 400))
    if event.box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in event.box)
        cv2.rectangle(image, (x0, y0), (x1, y1), color, thick)
    if event.polygon is not None and len(event.polygon) >= 2:
        points = np.round(np.asarray(event.polygon, np.float64)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(image, [points], True, color, thick)
    text = f"{event.label or event.kind} {event.score:.2f}"
    scale = max(0.5, width / 900)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    cv2.rectangle(image, (0, 0), (tw + 2 * thick, th + base + 2 * thick), color, -1)
    cv2.putText(image, text, (thick, th + thick), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)


def remove_snapshot(path: str | None) -> None:
    """Delete an event's snapshot file; only files named like ours (`event-*.jpg`), whatever a
    database says, and a file already gone (snapshot retention) is no error."""
    if not path or not Path(path).match(SNAPSHOT_GLOB):
        return
    try:
        Path(path).unlink(missing_ok=True)
    except OSError as e:
        log.warning("%s: snapshot not deleted (%s)", path, e.strerror or e)


def snapshot_name(event: Event) -> str:
    stamp = datetime.fromtimestamp(event.time, timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", event.label or event.kind)[:40]
    return f"event-{stamp}-{label}.jpg"


def write_snapshot(
    frame_bgr: np.ndarray,
    event: Event,
    folder: str | Path,
    *,
    draw: Callable[[np.ndarray, Event], None] | None = draw_event,
    jpeg_quality: int = 85,
) -> Path:
    """Write the frame (drawn on a copy) as `folder/event-<utc time>-<label>.jpg`, atomically."""
    frame = np.asarray(frame_bgr)
    if frame.dtype != np.uint8 or frame.ndim not in (2, 3) or frame.size == 0:
        raise EventError(f"snapshot: expected a uint8 BGR image, got {frame.dtype} {frame.shape}")
    if not 1 <= jpeg_quality <= 100:
        raise EventError(f"snapshot: jpeg_quality must be 1-100, not {jpeg_quality}")
    image = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame.copy()
    if draw is not None:
        draw(image, event)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    if not ok:
        raise EventError(f"snapshot: cannot encode a {image.shape} image as JPEG")
    folder = Path(os.path.abspath(folder))
    name = snapshot_name(event)
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path, n = folder / name, 1
        while path.exists():
            path, n = folder / name.replace(".jpg", f"-{n}.jpg"), n + 1
        tmp = folder / f".{path.name}.tmp"
        with open(tmp, "wb") as f:
            f.write(jpeg.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:  # a partial file on a full disk would hold its space (retention never sees it)
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        raise EventError(f"snapshot: cannot write to {folder} ({e.strerror or e})") from None
    return path


def prune_snapshots(
    folder: str | Path, *, max_count: int = 0, max_age_days: float = 0, now: float | None = None
) -> list[Path]:
    """Delete snapshots older than max_age_days, then the oldest beyond max_count (0 = no limit).

    Only files named `event-*.jpg` are considered; returns the absolute paths removed.
    """
    folder = Path(os.path.abspath(folder))
    now = time.time() if now is None else now
    files = []
    for path in folder.glob(SNAPSHOT_GLOB):
        try:
            files.append((path.stat().st_mtime, path.name, path))
        except FileNotFoundError:
            continue
    files.sort()  # oldest first
    doomed = []
    if max_age_days > 0:
        cutoff = now - max_age_days * 86400
        while files and files[0][0] < cutoff:
            doomed.append(files.pop(0)[2])
    if max_count > 0 and len(files) > max_count:
        doomed += [f[2] for f in files[: len(files) - max_count]]
    removed = []
    for path in doomed:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            continue
        removed.append(path)
    return removed
