"""Power cut during writes: SIGKILL at random points of an enrolment, an import and event writing.

A server process imports numpy, OpenCV, LiteRT and the package once, then forks one child per
trial, so a trial costs what its work costs (loading the real model, embedding the real photos,
writing), not the imports. The child works on one gallery file that lives across all the trials
of a test (each trial may find what the previous kill left behind: a hot WAL, half a transaction)
and is killed with SIGKILL in one of two ways, alternately:

* timed: the server kills it after a random delay within the length of a whole run (anywhere:
  model loading, embedding, SQLite's writes and fsyncs, after the commit);
* statement: the child kills itself just before its K-th SQL statement, K random over the
  statements of a whole run, so most of these land inside the write transaction.

After each kill the test checks the file: `PRAGMA integrity_check` is ok, no foreign key dangles,
`Gallery(...)` opens it, the packed vector blocks agree with the embeddings table, and the
work of the trial is all there or not at all. A last run without a kill must then succeed.

SIGKILL is not quite a power cut: what the killed process had written stays in the kernel's page
cache. SQLite's own guarantee against losing that (fsync of the WAL at every commit with the
default synchronous=FULL) is not exercised here.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from budget import budget

from edge_retrieval import Gallery, verify
from edge_retrieval.storage import vectors as store

HERE = Path(__file__).resolve().parent
SINKS = ("alpha", "beta")  # beta refuses an event's first attempt when its id is a multiple of 3
EVENTS_PER_RUN = 100
BLOCK_ROWS = 16  # the child packs vector blocks this small, so kills also land inside store.pack


# -- checks shared by the reliability tests -------------------------------------------------
def check_gallery(path: str | Path) -> dict[str, int]:
    """Assert that a gallery file is sound; returns its row counts per table."""
    conn = sqlite3.connect(str(path))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], f"{path}: integrity_check"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == [], f"{path}: dangling rows"
    finally:
        conn.close()
    with Gallery(path, create=False) as g:
        conn = g.db.conn
        rows = conn.execute("SELECT item_id, scale, vector FROM embeddings ORDER BY id").fetchall()
        matrix, _ = store.load_matrix(conn, g.dim)
        assert matrix.size == len(rows), "packed blocks and embeddings disagree on the row count"
        if rows:
            assert np.array_equal(matrix.keys, [r[0] for r in rows])
            assert np.array_equal(matrix.scales, np.array([r[1] for r in rows], np.float32))
            assert np.array_equal(
                matrix.codes, np.frombuffer(b"".join(r[2] for r in rows), np.int8).reshape(len(rows), -1)
            )
        empty = conn.execute("SELECT label FROM items WHERE id NOT IN (SELECT item_id FROM embeddings)").fetchall()
        assert empty == [], f"items without embeddings: {empty}"
        present = set(g.db.table_names())  # events and outbox exist once an EventLog opened the file
        return {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] if t in present else 0
            for t in ("items", "embeddings", "features", "negatives", "events", "outbox")
        }


def dump(path: str | Path) -> dict[str, list]:
    """Every row of the gallery's own tables (for "contents unchanged")."""
    conn = sqlite3.connect(str(path))
    try:
        return {
            t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
            for t in ("meta", "items", "embeddings", "features", "negatives", "thresholds", "vector_blocks")
        }
    finally:
        conn.close()


# -- the fork server (runs as `python test_power_cut.py --serve`) ---------------------------
def _serve() -> None:
    import edge_retrieval.cli  # noqa: F401 - the imports every child would otherwise pay
    import edge_retrieval.enroll  # noqa: F401
    import edge_retrieval.storage.events  # noqa: F401
    import edge_retrieval.storage.outbox  # noqa: F401

    for line in sys.stdin:
        sys.stdout.write(json.dumps(_trial(json.loads(line))) + "\n")
        sys.stdout.flush()


def _trial(req: dict) -> dict:
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: its output goes to its own log, never to the server's pipe
        code = 70
        try:
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = _child(req)
        except SystemExit as e:  # click's standalone mode
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001 - report and exit non-zero
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    status = None
    if req.get("delay") is not None:
        deadline = start + req["delay"]
        while status is None and time.monotonic() < deadline:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
            else:
                time.sleep(0.001)
        if status is None:
            os.kill(pid, signal.SIGKILL)
    if status is None:
        _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return {
        "killed": killed,
        "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status),
        "seconds": time.monotonic() - start,
    }


def _child(req: dict) -> int:
    from edge_retrieval import DEFAULT_MODEL, Embedder, Gallery
    from edge_retrieval.cli import cli
    from edge_retrieval.enroll import enroll, plan
    from edge_retrieval.storage import vectors as store

    store.BLOCK_ROWS = BLOCK_ROWS
    trace = os.open(req["trace"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    kill_at = req.get("kill_at_statement") or 0
    count = [0]
    connect = sqlite3.connect

    def traced(statement: str) -> None:  # runs just before SQLite executes each statement
        count[0] += 1
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        os.write(trace, (statement[:60].replace("\n", " ") + "\n").encode())

    def traced_connect(*args, **kwargs):
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(traced)
        return conn

    sqlite3.connect = traced_connect  # this process only: every connection the library opens
    scenario, path = req["scenario"], req["gallery"]
    try:
        if scenario == "enroll-api":
            with Embedder(DEFAULT_MODEL) as emb, Gallery(path) as gallery:
                enroll(gallery, emb, plan([req["folder"]]), augment=1)
        elif scenario == "enroll-cli":
            cli(["enroll", req["folder"], "--augment", "1", "-g", path], prog_name="edge-retrieval")
        elif scenario == "import-api":
            with Gallery(path) as gallery:
                gallery.import_from(req["source"])
        elif scenario == "import-cli":
            cli(["import", req["source"], "-g", path], prog_name="edge-retrieval")
        elif scenario == "events":
            _record_events(path, req["run"], req["folder"])
        else:
            raise ValueError(scenario)
    finally:
        with open(req["trace"] + ".count", "w") as f:
            f.write(str(count[0]))
    return 0


# -- events ---------------------------------------------------------------------------------
class FileSink:
    """A receiver that appends "run event_id" lines to a file before it acknowledges."""

    def __init__(self, name: str, folder: str | Path, run: str):
        self.name, self.run = name, run
        self.fd = os.open(Path(folder) / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.refused: set[int] = set()

    def deliver(self, payload: dict) -> None:
        event_id = payload["event_id"]
        if self.name == "beta" and event_id % 3 == 0 and event_id not in self.refused:
            self.refused.add(event_id)
            from edge_retrieval.errors import DeliveryError

            raise DeliveryError("busy, try again")
        os.write(self.fd, f"{self.run} {event_id}\n".encode())

    def close(self) -> None:
        os.close(self.fd)


def make_event(run: int, seq: int):
    from edge_retrieval.storage.events import Event

    match = seq % 4 != 0
    return Event(
        time=1_700_000_000.0 + run * 1000 + seq,
        source=f"cam{run % 3}",
        kind="match" if match else "unknown",
        score=0.5 + seq / 997,
        label=f"item{seq}" if match else None,
        item_id=seq if match else None,
        metadata={"owner": "Ada", "n": seq},
        box=(1.5, 2.0, 30.0, 40.25),
        polygon=((0.0, 0.0), (10.0, 0.0), (10.0, 5.5)),
        details={"run": run, "seq": seq, "margin": 0.125},
    )


def _record_events(path: str, run: int, folder: str) -> None:
    from edge_retrieval.storage.events import EventLog
    from edge_retrieval.storage.outbox import Dispatcher

    acks = os.open(Path(folder) / "acks.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sinks = [FileSink(name, folder, str(run)) for name in SINKS]
    with (
        EventLog(path, SINKS) as log,
        Dispatcher(path, sinks, retry_base_s=0.002, retry_max_s=0.01, idle_s=0.05) as dispatcher,
    ):
        for seq in range(EVENTS_PER_RUN):
            log.record(make_event(run, seq))
            dispatcher.wake()
            os.write(acks, f"{run} {seq}\n".encode())  # the caller was told "recorded"


# -- the test side ----------------------------------------------------------------------------
class Server:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.stderr = open(tmp / "server.err", "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve"],
            cwd=tmp,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.n = 0

    def run(self, **req) -> dict:
        self.n += 1
        req.setdefault("log", str(self.tmp / f"child-{self.n}.log"))
        req.setdefault("trace", str(self.tmp / f"child-{self.n}.trace"))
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"fork server died: {(self.tmp / 'server.err').read_text()[-2000:]}"
        out = json.loads(line)
        out["log"] = Path(req["log"]).read_text() if Path(req["log"]).exists() else ""
        statements = Path(req["trace"]).read_text().splitlines() if Path(req["trace"]).exists() else []
        out["statements"] = int(Path(req["trace"] + ".count").read_text()) if not out["killed"] else len(statements)
        out["in_write"] = _inside_write(statements)
        return out

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)
        self.stderr.close()


def _inside_write(statements: list[str]) -> bool:
    """Whether the last statement started before the kill was inside a write transaction (one
    begun IMMEDIATE, or a deferred one that wrote already)."""
    inside = wrote = False
    for s in statements:
        word = s.split(" ", 1)[0].upper()
        if word == "BEGIN":
            inside, wrote = True, s.upper().startswith("BEGIN IMMEDIATE")
        elif word in ("COMMIT", "ROLLBACK", "END"):
            inside = wrote = False
        elif word in ("INSERT", "UPDATE", "DELETE", "REPLACE"):
            wrote = True
    return inside and wrote


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("fork-server"))
    yield s
    s.close()


class Killer:
    """Runs trials until `wanted` of them were killed, alternating timed and statement kills.

    The first two runs are whole (the first one creates the gallery) and measure a run: its
    length and its number of SQL statements, kept as the smallest seen in any whole run (so
    kills stay within a run on a machine whose load varies). Then come the killed trials (at
    most 4 × `wanted`), then one last whole run: `more()` says whether there is another run,
    `run()` does it.
    """

    def __init__(self, server: Server, wanted: int, seed: int):
        self.server, self.wanted, self.rng = server, wanted, random.Random(seed)
        self.seconds = self.statements = float("inf")
        self.kills = self.in_write = self.trials = self.whole = 0
        self.last = False

    def more(self) -> bool:
        return not self.last

    def run(self, **req) -> dict:
        killing = self.whole >= 2 and self.kills < self.wanted and self.trials < 4 * self.wanted
        if killing:
            self.trials += 1
            if self.trials % 2:
                req["delay"] = self.rng.uniform(0.0, 0.9 * self.seconds)
            else:
                req["kill_at_statement"] = self.rng.randint(1, max(1, int(0.9 * self.statements)))
        out = self.server.run(**req)
        if not killing:
            assert not out["killed"] and out["exit"] == 0, f"a run without a kill failed:\n{out['log']}"
            self.last = self.whole >= 2
            self.whole += 1
        assert out["killed"] or out["exit"] == 0, f"child failed:\n{out['log']}"
        if not out["killed"]:
            self.seconds = min(self.seconds, out["seconds"])
            self.statements = min(self.statements, out["statements"])
        self.kills += out["killed"]
        self.in_write += out["killed"] and out["in_write"]
        return out

    def summary(self) -> str:
        return f"{self.kills} kills in {self.trials} trials, {self.in_write} inside the write transaction"


# -- (a) enrolment -------------------------------------------------------------------------------
def label_folders(folder: Path, prefix: str, photos: Path) -> list[str]:
    """`folder` as `enroll` reads it: one sub-folder (= label, "<prefix>-<photo>") per real
    photo, linking to it. Returns the labels."""
    labels = []
    for photo in sorted(photos.glob("*.jpg")):
        label = f"{prefix}-{photo.stem}"
        (folder / label).mkdir(parents=True)
        (folder / label / photo.name).symlink_to(photo)
        labels.append(label)
    return labels


@pytest.mark.parametrize("way", ["api", "cli"])
def test_enrolment_killed_at_random_points_is_all_or_nothing(server, tmp_path, photos, embedder, way):
    db = tmp_path / "gallery.db"
    killer = Killer(server, budget(12, 60) if way == "api" else budget(8, 50), seed=7 if way == "api" else 8)
    outcomes = {"absent": 0, "complete": 0}
    trial = 0
    while killer.more():  # two whole runs measure, then the kills, then a whole run must succeed
        trial += 1
        folder = tmp_path / "photos" / f"t{trial}"
        labels = label_folders(folder, f"t{trial}", photos)
        out = killer.run(scenario=f"enroll-{way}", gallery=str(db), folder=str(folder))
        check_gallery(db)
        with Gallery(db) as g:
            present = {i.label: i for i in g.items() if i.label.startswith(f"t{trial}-")}
            assert set(present) in (set(), set(labels)), f"trial {trial}: {len(present)} of {len(labels)} items"
            if not out["killed"]:
                assert set(present) == set(labels), f"trial {trial} was not killed:\n{out['log']}"
            for label, item in present.items():
                photo = folder / label / f"{label.split('-', 1)[1]}.jpg"
                assert item.embeddings == 2, f"{label}: {item.embeddings} embeddings (the photo and one view)"
                assert g.sources(label) == [str(photo), f"{photo}#view1"]
                assert [f[0] for f in g.features(item.id)] == [verify.KIND, verify.SIFT_KIND, verify.DENSE_KIND], (
                    f"{label}: features"
                )
        outcomes["complete" if present else "absent"] += 1 if out["killed"] else 0
    print(f"\nenrolment ({way}): {killer.summary()}; after a kill: {outcomes}")
    assert killer.kills >= killer.wanted, killer.summary()
    assert outcomes["absent"] and killer.in_write, "no kill landed before the commit: the test proves nothing"
    # the gallery is still right for searching: every enrolled photo finds its own label first
    with Gallery(db) as g:
        queries = embedder.embed_files([photos / "cat.jpg", photos / "rocket.jpg"])
        labels = g.search(queries, k=1).labels[:, 0]
        assert labels[0].endswith("-cat") and labels[1].endswith("-rocket")


# -- (b) import ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory, embedder):
    """An exported gallery of the real photos (2 views each, ORB features, one negative)."""
    from edge_retrieval.demo import PHOTOS
    from edge_retrieval.enroll import enroll, enroll_negatives, plan

    folder = tmp_path_factory.mktemp("export")
    with Gallery(folder / "source.db") as g:
        enroll(g, embedder, plan([PHOTOS]), augment=1)
        enroll_negatives(g, embedder, "coins", [PHOTOS / "gravel.jpg"])
        g.export(folder / "export.db")
    return folder / "export.db"


@pytest.mark.parametrize("way", ["api", "cli"])
def test_import_killed_at_random_points_is_all_or_nothing(server, tmp_path, exported, way):
    db = tmp_path / "gallery.db"
    conn = sqlite3.connect(f"file:{exported}?mode=ro", uri=True)  # (a Gallery would turn it to WAL)
    whole = {
        t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        for t in ("items", "embeddings", "features", "negatives")
    }
    conn.close()
    killer = Killer(server, budget(12, 60) if way == "api" else budget(8, 50), seed=17 if way == "api" else 18)
    before = {"items": 0, "embeddings": 0, "features": 0, "negatives": 0}
    outcomes = {"absent": 0, "complete": 0}
    trial = 0
    while killer.more():
        trial += 1
        out = killer.run(scenario=f"import-{way}", gallery=str(db), source=str(exported))
        after = check_gallery(db) if db.exists() else dict.fromkeys(before, 0)
        delta = {t: after[t] - before[t] for t in before}
        complete = {
            "items": whole["items"] if not before["items"] else 0,
            **{t: whole[t] for t in ("embeddings", "features", "negatives")},
        }
        assert delta in (dict.fromkeys(before, 0), complete), f"trial {trial}: a partial import {delta}"
        if not out["killed"]:
            assert delta == complete, f"trial {trial} was not killed:\n{out['log']}"
        if out["killed"]:
            outcomes["complete" if delta["embeddings"] else "absent"] += 1
        before = {t: after[t] for t in before}
    print(f"\nimport ({way}): {killer.summary()}; after a kill: {outcomes}")
    assert killer.kills >= killer.wanted, killer.summary()
    assert outcomes["absent"] and killer.in_write, "no kill landed before the commit: the test proves nothing"


# -- (c) events and their outbox -----------------------------------------------------------------
def _sink_lines(folder: Path, name: str) -> list[tuple[str, int]]:
    path = folder / f"{name}.log"
    return [(r, int(e)) for r, e in (line.split() for line in path.read_text().splitlines())] if path.exists() else []


def test_event_recording_killed_at_random_points_loses_nothing(server, tmp_path):
    from edge_retrieval.storage.events import EVENT_COLUMNS, Event
    from edge_retrieval.storage.outbox import Dispatcher

    db = tmp_path / "gallery.db"
    killer = Killer(server, budget(12, 60), seed=27)
    recorded: dict[int, int] = {}  # run -> events in the file
    run = 0
    while killer.more():
        run += 1
        out = killer.run(scenario="events", gallery=str(db), run=run, folder=str(tmp_path))
        if not db.exists():  # killed before the file was created
            continue
        check_gallery(db)
        acks = (
            [tuple(map(int, line.split())) for line in (tmp_path / "acks.log").read_text().splitlines()]
            if (tmp_path / "acks.log").exists()
            else []
        )
        acked = sum(1 for r, _ in acks if r == run)
        conn = sqlite3.connect(db)
        rows = conn.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE json_extract(data, '$.details.run') = ? ORDER BY id", [run]
        ).fetchall()
        events = [Event.from_row(r) for r in rows]
        seqs = [e.details["seq"] for e in events]
        # every event the caller was told about is there, whole, in order; at most the one in flight more
        assert seqs == list(range(len(seqs))), f"run {run}: events {seqs}"
        assert acked <= len(seqs) <= acked + 1, f"run {run}: {acked} acknowledged, {len(seqs)} in the file"
        if not out["killed"]:
            assert len(seqs) == EVENTS_PER_RUN, out["log"]
        for e in events:
            assert e == Event(**{**make_event(run, e.details["seq"]).__dict__, "id": e.id}), f"event {e.id} differs"
        recorded[run] = len(seqs)
        # every event has exactly one outbox row per sink; a row marked delivered was delivered
        outbox = conn.execute(
            "SELECT e.id, o.sink, o.attempts, o.delivered FROM events e "
            "LEFT JOIN outbox o ON o.event_id = e.id ORDER BY e.id, o.sink"
        ).fetchall()
        conn.close()
        by_event: dict[int, list[str]] = {}
        for event_id, sink, attempts, delivered in outbox:
            by_event.setdefault(event_id, []).append(sink)
            assert delivered is None or attempts >= 1
        assert all(sinks == sorted(SINKS) for sinks in by_event.values()), "events without their outbox rows"
        for name in SINKS:
            delivered = {e for e, sink, _, when in outbox if sink == name and when is not None}
            lines = _sink_lines(tmp_path, name)
            assert delivered <= {e for _, e in lines}, f"{name}: marked delivered but never received"
            for r in {r for r, _ in lines}:  # within one run, each event once and in order
                ids = [e for rr, e in lines if rr == r]
                assert ids == sorted(set(ids)), f"{name}, run {r}: {ids}"
    print(f"\nevents: {killer.summary()}; events in the file per run: {recorded}")
    assert killer.kills >= killer.wanted, killer.summary()
    assert killer.in_write, "no kill landed inside a transaction: the test proves nothing"
    # after the power comes back the outbox delivers everything to every sink
    sinks = [FileSink(name, tmp_path, "drain") for name in SINKS]
    with Dispatcher(db, sinks, retry_base_s=0.002, retry_max_s=0.01, idle_s=0.05) as dispatcher:
        deadline = time.monotonic() + 30
        while dispatcher.pending() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert dispatcher.pending() == 0
    conn = sqlite3.connect(db)
    every = {r[0] for r in conn.execute("SELECT id FROM events")}
    conn.close()
    assert len(every) == sum(recorded.values())
    for name in SINKS:
        assert {e for _, e in _sink_lines(tmp_path, name)} == every, f"{name}: events lost"


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()
