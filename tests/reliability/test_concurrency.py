"""Concurrent writers: enrolments in several processes and a searching reader on one gallery file.

No "database is locked" may reach the user, no enrolment may be lost, and the reader (what the
daemon does: `Gallery.search` in a loop, its cached matrix refreshed by the generation counter)
sees the new items. Real processes, the real model, the repo's photos.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from edge_retrieval import Gallery
from edge_retrieval.enroll import enroll, plan

try:
    from budget import budget
except ImportError:  # another conftest.py took the name: read the switch the same way

    def budget(bounded: int, full: int) -> int:
        return full if os.environ.get("EDGE_RETRIEVAL_RELIABILITY", "") == "full" else bounded


from test_power_cut import check_gallery, label_folders

_HOLD_S = 1.0  # how long another writer holds the write lock
_ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}

# The daemon's side: search the gallery in a loop until told to stop; report every label seen.
READER = r"""
import json, sys, time
from pathlib import Path
from edge_retrieval import DEFAULT_MODEL, Embedder, Gallery
from edge_retrieval.demo import PHOTOS
path, stop, ready = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
with Embedder(DEFAULT_MODEL, 1) as emb:
    queries = emb.embed_files(sorted(PHOTOS.glob("*.jpg")))
seen, counts, searches = set(), [], 0
with Gallery(path) as g:
    ready.touch()
    while True:
        last = stop.exists()
        labels = set(g.search(queries, k=1000).labels.flat)
        searches += 1
        if len(labels) != (counts[-1] if counts else 0):
            counts.append(len(labels))
        seen |= labels
        if last:
            break
        time.sleep(0.01)
print(json.dumps({"seen": sorted(seen), "final": sorted(labels), "counts": counts, "searches": searches}))
"""

# An enrolling process (the kiosk's or a script's way): the real photos, the real model, `rounds`
# enrolments of labels of its own, the gallery opened afresh for each.
WRITER = r"""
import sys
from edge_retrieval import DEFAULT_MODEL, Embedder, Gallery
from edge_retrieval.demo import PHOTOS
from edge_retrieval.enroll import enroll
name, path, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
photos = sorted(PHOTOS.glob("*.jpg"))[:4]
with Embedder(DEFAULT_MODEL, 1) as emb:
    for r in range(rounds):
        with Gallery(path) as g:
            enroll(g, emb, [(f"{name}-{r}-{p.stem}", p) for p in photos])
        print(r, flush=True)
"""


def start_reader(db: Path, stop: Path) -> subprocess.Popen:
    """The searching reader, once it has the gallery open and its queries ready."""
    ready = stop.with_name("reader-ready")
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(db), str(stop), str(ready)],
        env=_ENV,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not ready.exists() and reader.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ready.exists(), (
        f"the reader did not start: {reader.communicate(timeout=5) if reader.poll() is not None else ''}"
    )
    return reader


def _no_lock_errors(name: str, proc: subprocess.Popen, out: str, err: str) -> None:
    assert "locked" not in err and "Traceback" not in err, f"{name}: stderr:\n{err[-3000:]}"
    assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{err[-3000:]}"


class _Holder(threading.Thread):
    """Another writer: takes the write lock, holds it `_HOLD_S`, commits."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.locked = path, threading.Event()

    def run(self):
        import sqlite3

        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('holder', 'x')")
        self.locked.set()
        time.sleep(_HOLD_S)
        conn.execute("COMMIT")
        conn.close()


def test_a_writer_waits_for_another_writer_instead_of_failing(tmp_path, embedder, photos):
    """Every write transaction reads before it writes (the model binding, the item's row); begun
    deferred, SQLite refuses its upgrade to a write lock at once, busy timeout or not."""
    db = tmp_path / "gallery.db"
    source = tmp_path / "source.db"
    vectors = embedder.embed_files([photos / "cat.jpg", photos / "rocket.jpg"])
    with Gallery(source) as g:
        enroll(g, embedder, plan([photos / "coffee.jpg"]))
        g.export(tmp_path / "export.db")
    with Gallery(db) as g:
        g.add("cat", vectors[:1], model_sha256=embedder.sha256, model_name=embedder.card.name)
        writes = {
            "add": lambda: g.add("rocket", vectors[1:], model_sha256=embedder.sha256),
            "enroll": lambda: enroll(g, embedder, plan([photos / "coins.jpg"])),
            "import": lambda: g.import_from(tmp_path / "export.db"),
            "update": lambda: g.update("rocket", metadata={"year": 1969}),
            "remove": lambda: g.remove("coins"),
        }
        for name, write in writes.items():
            g.search(vectors, k=1)  # a reader in this connection just before, as the kiosk does
            holder = _Holder(db)
            holder.start()
            assert holder.locked.wait(5)
            start = time.monotonic()
            write()  # must wait for the other writer, then succeed
            waited = time.monotonic() - start
            holder.join()
            assert waited >= _HOLD_S * 0.8, f"{name} did not wait for the lock ({waited:.3f} s)"
        assert [i.label for i in g.items()] == ["cat", "rocket", "coffee"]
        assert g.item("rocket").metadata == {"year": 1969}
    check_gallery(db)


def test_two_enrol_commands_and_a_searching_reader_lose_nothing(tmp_path, photos):
    """Two `edge-retrieval enroll` commands at once, each a few times (one shell loop per writer),
    on a new gallery, while a reader searches it in a loop."""
    rounds = budget(2, 6)
    db = tmp_path / "gallery.db"
    stop = tmp_path / "stop"
    folders: dict[str, list[tuple[Path, list[str]]]] = {}
    for writer in ("a", "b"):
        for r in range(rounds):
            folder = tmp_path / f"{writer}{r}"
            folders.setdefault(writer, []).append((folder, label_folders(folder, f"{writer}{r}", photos)))
    reader = start_reader(db, stop)
    loops = {}
    for writer, jobs in folders.items():  # one shell loop per writer: its commands run one after another
        script = " && ".join(f"edge-retrieval enroll {folder} --augment 1 -g {db}" for folder, _ in jobs)
        loops[writer] = subprocess.Popen(
            ["sh", "-c", script], env=_ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    for writer, proc in loops.items():
        out, err = proc.communicate(timeout=120)
        _no_lock_errors(f"writer {writer}", proc, out, err)
        assert out.count("enrolled 12 image(s) as 12 item(s)") == rounds, out
    stop.touch()
    out, err = reader.communicate(timeout=60)
    _no_lock_errors("reader", reader, out, err)
    seen = json.loads(out)
    expected = {label for jobs in folders.values() for _, labels in jobs for label in labels}
    check_gallery(db)
    with Gallery(db) as g:
        items = {i.label: i for i in g.items()}
        assert set(items) == expected
        assert all(i.embeddings == 2 for i in items.values()), "each photo and one view"
        assert all([f[0] for f in g.features(i.id)] == ["orb", "sift", "gray"] for i in items.values())
    assert set(seen["final"]) == expected, "the reader's cached matrix missed enrolments"
    assert len(seen["counts"]) >= 2, f"the reader never saw the gallery grow: {seen['counts']}"


def test_enrolling_processes_hammering_one_gallery_lose_nothing(tmp_path, photos):
    """Two processes enrolling as fast as they can (their write transactions overlap all the time)
    and a searching reader: every enrolment arrives, with its vector and features, and is found."""
    rounds = budget(25, 150)
    db = tmp_path / "gallery.db"
    stop = tmp_path / "stop"
    Gallery(db).close()
    reader = start_reader(db, stop)
    writers = {
        name: subprocess.Popen(
            [sys.executable, "-c", WRITER, name, str(db), str(rounds)],
            env=_ENV,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in ("w1", "w2")
    }
    for name, proc in writers.items():
        out, err = proc.communicate(timeout=180)
        _no_lock_errors(name, proc, out, err)
        assert out.split() == [str(r) for r in range(rounds)]
    stop.touch()
    out, err = reader.communicate(timeout=60)
    _no_lock_errors("reader", reader, out, err)
    seen = json.loads(out)
    check_gallery(db)
    with Gallery(db) as g:
        items = {i.label: i for i in g.items()}
        stems = [p.stem for p in sorted(photos.glob("*.jpg"))[:4]]
        expected = {f"{w}-{r}-{s}" for w in writers for r in range(rounds) for s in stems}
        assert set(items) == expected
        assert all(
            i.embeddings == 1 and [f[0] for f in g.features(i.id)] == ["orb", "sift", "gray"] for i in items.values()
        )
        assert g.generation() >= 2 * rounds
    assert set(seen["final"]) == expected
    assert len(seen["counts"]) >= 3, f"the reader did not follow the enrolments: {seen['counts']}"
    print(
        f"\nhammer: {2 * rounds} enrolments, reader {seen['searches']} searches, "
        f"distinct label counts seen {seen['counts'][:5]}…{seen['counts'][-3:]}"
    )


def test_processes_creating_one_new_gallery_at_once_all_succeed(tmp_path):
    """Several processes opening a gallery file that does not exist yet, released together: each
    migration step runs once, none fails with "table meta already exists" or "locked"."""
    from edge_retrieval.storage.database import SCHEMA_VERSION

    for attempt in range(budget(2, 20)):
        db = tmp_path / f"gallery-{attempt}.db"
        start = tmp_path / f"go-{attempt}"
        code = (
            "import os, sys, time\nfrom edge_retrieval import Gallery\n"
            "open(sys.argv[2], 'w').close()\n"
            f"while not os.path.exists({str(start)!r}): time.sleep(0.0005)\n"  # all start within 1 ms
            "g = Gallery(sys.argv[1]); print(g.info()['schema_version']); g.close()"
        )
        ready = [tmp_path / f"ready-{attempt}-{i}" for i in range(4)]
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(db), str(r)],
                env=_ENV,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for r in ready
        ]
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in ready) and time.monotonic() < deadline:  # all imported
            time.sleep(0.01)
        start.touch()
        for i, proc in enumerate(procs):
            out, err = proc.communicate(timeout=60)
            _no_lock_errors(f"opener {i}", proc, out, err)
            assert out.strip() == str(SCHEMA_VERSION)
        check_gallery(db)


# A writer that closes the gallery after every change: each close checkpoints the WAL into the file.
CHECKPOINTER = r"""
import sys
import numpy as np
from edge_retrieval import DEFAULT_MODEL, Embedder, Gallery
from edge_retrieval.demo import PHOTOS
path, rounds = sys.argv[1], int(sys.argv[2])
with Embedder(DEFAULT_MODEL, 1) as emb:
    vectors = np.repeat(emb.embed_files(sorted(PHOTOS.glob("*.jpg"))), 8, axis=0)  # 96 real vectors a round
    for r in range(rounds):
        with Gallery(path) as g:
            g.add(f"round {r}", vectors, model_sha256=emb.sha256, model_name=emb.card.name)
"""
OPENER = r"""
import sys
from pathlib import Path
from edge_retrieval import Gallery, GalleryError
path, stop = sys.argv[1], Path(sys.argv[2])
opened, errors = 0, []
while not stop.exists():
    try:
        Gallery(path).close()
        opened += 1
    except GalleryError as e:
        errors.append(str(e))
print(opened, len(errors), errors[:3])
"""


def test_opening_the_gallery_while_another_process_checkpoints_never_fails(tmp_path):
    """A checkpoint writes page 1 (with the new page count) before the pages that grow the file:
    a process opening the gallery just then must not take the healthy file for a truncated one."""
    db = tmp_path / "gallery.db"
    stop = tmp_path / "stop"
    Gallery(db).close()
    opener = subprocess.Popen(
        [sys.executable, "-c", OPENER, str(db), str(stop)],
        env=_ENV,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    writer = subprocess.run(
        [sys.executable, "-c", CHECKPOINTER, str(db), str(budget(120, 600))],
        env=_ENV,
        text=True,
        capture_output=True,
        timeout=300,
    )
    stop.touch()
    out, err = opener.communicate(timeout=60)
    _no_lock_errors("writer", writer, writer.stdout, writer.stderr)
    _no_lock_errors("opener", opener, out, err)
    opened, failed, examples = out.split(" ", 2)
    assert int(failed) == 0, f"{failed} of {int(opened) + int(failed)} opens failed: {examples}"
    assert int(opened) > 100
    check_gallery(db)
