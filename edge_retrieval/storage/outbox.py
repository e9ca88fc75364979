"""The outbox dispatcher: delivers recorded events to every sink until each acknowledges.

One daemon thread per sink, each with its own SQLite connection, takes that sink's oldest
undelivered outbox row, delivers it, and marks it delivered, so a sink sees events in
order and never an event again once it acknowledged it. A refusal (the sink raised) is
retried after a capped exponential backoff with jitter; the next event waits behind it.
A refusal for good (PermanentDeliveryError: an HTTP 400, say) parks the row instead: kept
with its error and time, not tried again until un-parked (`EventLog.retry`, `edge-retrieval
events retry`), and the sink goes on with the next event.
A sink that is down or hangs holds up only its own thread, never another sink nor the frame
loop. Rows left by a previous run are delivered on start (at once: a restart resets backoff).
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Sequence

from ..errors import GalleryError, PermanentDeliveryError
from ..sinks import Sink
from .database import Database, Migrations, connect
from .events import EVENT_COLUMNS, Event, open_events

log = logging.getLogger(__name__)

MIGRATIONS = Migrations(
    "outbox",
    [
        # 1: one row per event and sink until the sink acknowledged it
        """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        event_id INTEGER NOT NULL REFERENCES events(id) ON DELETE CASCADE,
        sink TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_try REAL NOT NULL DEFAULT 0,
        delivered REAL,
        last_error TEXT
    );
    CREATE INDEX outbox_pending ON outbox(sink, event_id) WHERE delivered IS NULL;
    CREATE INDEX outbox_event ON outbox(event_id);
    """,
        # 2: parked rows. A row a sink refused for good (PermanentDeliveryError) is parked: kept with
        #    its error, skipped by delivery (and by the pending index) until `events retry`.
        """
    ALTER TABLE outbox ADD COLUMN parked REAL;
    DROP INDEX outbox_pending;
    CREATE INDEX outbox_pending ON outbox(sink, event_id) WHERE delivered IS NULL AND parked IS NULL;
    CREATE INDEX outbox_parked ON outbox(event_id) WHERE parked IS NOT NULL;
    """,
    ],
)

_NEXT_ROW = (
    "SELECT o.id, o.attempts, o.next_try, "
    + ", ".join(f"e.{c.strip()}" for c in EVENT_COLUMNS.split(","))
    + " FROM outbox o JOIN events e ON e.id = o.event_id"
    " WHERE o.sink = ? AND o.delivered IS NULL AND o.parked IS NULL{source} ORDER BY o.event_id, o.id LIMIT 1"
)


def backoff(attempts: int, base_s: float, max_s: float) -> float:
    """Seconds to wait after the `attempts`-th failure: base·2^(n-1), capped, times a jitter in [0.5, 1]."""
    return min(max_s, base_s * 2.0 ** min(attempts - 1, 40)) * random.uniform(0.5, 1.0)


class _Worker(threading.Thread):
    def __init__(self, dispatcher: "Dispatcher", sink: Sink):
        super().__init__(name=f"outbox-{sink.name}", daemon=True)
        self.d = dispatcher
        self.sink = sink
        self.wake = threading.Event()
        self.failing = False

    def run(self) -> None:
        try:
            conn = connect(self.d.path)
            try:
                while not self.d._stopping.is_set():
                    try:
                        self.step(conn)
                    except sqlite3.Error as e:
                        log.warning("outbox %s: database error (%s); trying again", self.sink.name, e)
                        self.wake.wait(1.0)
            finally:
                conn.close()
        finally:
            try:
                self.sink.close()
            except Exception as e:  # noqa: BLE001 - closing must not raise out of a thread
                log.warning("outbox %s: close failed (%s)", self.sink.name, e)

    def step(self, conn: sqlite3.Connection) -> None:
        self.wake.clear()  # before looking, so a wake() after the look is not lost
        row = conn.execute(self.d.next_row, [self.sink.name, *self.d.sources]).fetchone()
        if row is None:
            self.wake.wait(self.d.idle_s)
            return
        outbox_id, attempts, next_try = row[:3]
        wait = next_try - time.time()
        if 0 < wait <= self.d.retry_max_s:  # (further ahead only if the clock went back: try now)
            self.wake.wait(wait)
            return
        event = Event.from_row(row[3:])
        try:
            self.sink.deliver(event.payload())
        except PermanentDeliveryError as e:  # retrying cannot help: park it, go on with the next event
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, parked = ?, last_error = ? WHERE id = ?",
                [time.time(), f"{type(e).__name__}: {e}", outbox_id],
            )
            log.warning(
                "outbox %s: event %s refused for good, parked (`edge-retrieval events retry %s` sends it again): %s",
                self.sink.name,
                event.id,
                event.id,
                e,
            )
            return
        except Exception as e:  # noqa: BLE001 - any failure means "not acknowledged"
            attempts += 1
            delay = backoff(attempts, self.d.retry_base_s, self.d.retry_max_s)
            error = f"{type(e).__name__}: {e}"
            conn.execute(
                "UPDATE outbox SET attempts = ?, next_try = ?, last_error = ? WHERE id = ?",
                [attempts, time.time() + delay, error, outbox_id],
            )
            level = logging.DEBUG if self.failing else logging.WARNING
            log.log(
                level,
                "outbox %s: event %s not delivered (attempt %d, next in %.1f s): %s",
                self.sink.name,
                event.id,
                attempts,
                delay,
                error,
            )
            self.failing = True
            return
        conn.execute(
            "UPDATE outbox SET attempts = attempts + 1, delivered = ?, last_error = NULL WHERE id = ?",
            [time.time(), outbox_id],
        )
        if self.failing:
            log.info("outbox %s: delivering again (event %s)", self.sink.name, event.id)
            self.failing = False


class Dispatcher:
    """Delivers the outbox of one gallery file to `sinks` in the background; owns (closes) the sinks.

    `source`: deliver only the events of this source. Services of several cameras share one
    gallery file (systemd/edge-retrieval@.service), and each delivers its own camera's events to
    its own sinks: a sink name ("webhook") alone would let every service take every camera's rows.

    >>> with Dispatcher(gallery.db, sinks) as dispatcher:   # or a path; start() ... stop()
    ...     log.record(event); dispatcher.wake()
    """

    def __init__(
        self,
        db: Database | str | Path,
        sinks: Sequence[Sink],
        *,
        source: str | None = None,
        retry_base_s: float = 1.0,
        retry_max_s: float = 300.0,
        idle_s: float = 30.0,
    ):
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise GalleryError(f"sink names must be unique: {names}")
        if str(db.path if isinstance(db, Database) else db) == ":memory:":
            raise GalleryError("the outbox needs a gallery file, not :memory:")
        db, own = open_events(db)  # the tables exist before the threads (each with its own connection) read them
        self.path = db.path
        if own:
            db.close()
        self.sinks = list(sinks)
        self.sources = () if source is None else (source,)
        self.next_row = _NEXT_ROW.format(source=" AND e.source = ?" if self.sources else "")
        self.retry_base_s, self.retry_max_s, self.idle_s = retry_base_s, retry_max_s, idle_s
        self._stopping = threading.Event()
        self._workers: list[_Worker] = []
        self._parked = 0

    def start(self) -> "Dispatcher":
        if self._workers:
            raise RuntimeError("dispatcher already started")
        conn = connect(self.path)
        try:  # rows from a previous run: no backoff left over
            conn.executemany(
                "UPDATE outbox SET next_try = 0 WHERE sink = ? AND delivered IS NULL AND parked IS NULL",
                [(s.name,) for s in self.sinks],
            )
        finally:
            conn.close()
        self._workers = [_Worker(self, sink) for sink in self.sinks]
        for worker in self._workers:
            worker.start()
        return self

    def wake(self) -> None:
        """Look at the outbox now (call after `EventLog.record`); never blocks."""
        for worker in self._workers:
            worker.wake.set()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop after the deliveries in progress; True if every thread ended within `timeout`.

        A thread stuck in a sink is left behind (daemon threads end with the process); its
        event stays undelivered and is sent again on the next start.
        """
        deadline = time.monotonic() + timeout
        if not self._workers and not self._stopping.is_set():  # never started: close the sinks here
            for sink in self.sinks:
                sink.close()
        self._stopping.set()
        self.wake()
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        return not any(w.is_alive() for w in self._workers)

    def pending(self, sink: str | None = None) -> int:
        """Undelivered outbox rows of this dispatcher's sinks (or of one sink) and source, parked ones left out."""
        return self._count("delivered IS NULL AND parked IS NULL", sink)

    def parked(self) -> int:
        """Outbox rows of this dispatcher's sinks parked (refused for good, kept until retried).
        Never raises (it feeds STATUS): the last count seen when the file cannot be read."""
        try:
            self._parked = self._count("parked IS NOT NULL", None)
        except sqlite3.Error as e:
            log.debug("outbox: cannot count parked rows (%s)", e)
        return self._parked

    def _count(self, where: str, sink: str | None) -> int:
        names = [sink] if sink is not None else [s.name for s in self.sinks]
        if not names:
            return 0
        conn = connect(self.path)
        try:
            marks = ", ".join("?" * len(names))
            if self.sources:
                where += " AND event_id IN (SELECT id FROM events WHERE source = ?)"
            sql = f"SELECT count(*) FROM outbox WHERE {where} AND sink IN ({marks})"
            return conn.execute(sql, [*self.sources, *names]).fetchone()[0]
        finally:
            conn.close()

    def __enter__(self) -> "Dispatcher":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
