"""The database: galleries written before each subsystem had its own schema ladder open and
upgrade with nothing lost; the item-threshold data migration; newer ladders are refused."""

import json
import sqlite3
import time
from contextlib import closing

import numpy as np
import pytest

from edge_retrieval import Gallery, GalleryError, quantize
from edge_retrieval.storage import vectors
from edge_retrieval.storage.database import SCHEMA_VERSION, Database
from edge_retrieval.storage.events import EventLog

SHA = "a" * 64
DIM = 16
LADDERS = {"gallery": 3, "vectors": 1, "events": 2, "outbox": 2}

# The single `PRAGMA user_version` ladder of gallery.py before the ladders were split (steps 1-4),
# verbatim: what files in the field were made by.
LEGACY_STEPS = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE items (
        id INTEGER PRIMARY KEY,
        label TEXT NOT NULL UNIQUE,
        metadata TEXT NOT NULL DEFAULT '{}',
        created REAL NOT NULL
    );
    CREATE TABLE embeddings (
        id INTEGER PRIMARY KEY,
        item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
        vector BLOB NOT NULL,
        scale REAL NOT NULL,
        source TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL
    );
    CREATE INDEX embeddings_item ON embeddings(item_id);
    """,
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
    """
    CREATE TABLE features (
        id INTEGER PRIMARY KEY,
        item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        keypoints BLOB NOT NULL,
        descriptors BLOB NOT NULL,
        source TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL
    );
    CREATE INDEX features_item ON features(item_id);
    CREATE TABLE negatives (
        id INTEGER PRIMARY KEY,
        item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
        vector BLOB NOT NULL,
        scale REAL NOT NULL,
        source TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL
    );
    CREATE INDEX negatives_item ON negatives(item_id);
    CREATE TABLE thresholds (
        item_id INTEGER PRIMARY KEY REFERENCES items(id) ON DELETE CASCADE,
        threshold REAL NOT NULL,
        created REAL NOT NULL
    );
    """,
    vectors.STATEMENTS,
]
LEGACY_TABLES = [
    ("meta", "items", "embeddings"),
    ("events", "outbox"),
    ("features", "negatives", "thresholds"),
    ("vector_blocks", "vector_state"),
]


def legacy_gallery(path, version, metadata=({"owner": "Ada"}, {}, {"floor": 2}), meta=()):
    """A gallery file as the code of the single ladder left it at `version` (1..4): three items of
    two embeddings each, and the rows of every table that version had."""
    rng = np.random.default_rng(version)
    with closing(sqlite3.connect(path, isolation_level=None)) as con:
        con.execute("PRAGMA journal_mode = WAL")
        for number, step in enumerate(LEGACY_STEPS[:version]):
            con.execute("BEGIN")
            for statement in step.split(";") if isinstance(step, str) else step:
                if statement.strip():
                    con.execute(statement)
            con.execute(f"PRAGMA user_version = {number + 1}")
            con.execute("COMMIT")
        con.execute("BEGIN")
        con.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("model_sha256", SHA), ("model_name", "m"), ("dim", str(DIM)), ("generation", "7"), *meta],
        )
        x = rng.normal(size=(6, DIM)).astype(np.float32)
        codes, scales = quantize.quantize(x / np.linalg.norm(x, axis=1, keepdims=True))
        for i, data in enumerate(metadata, 1):
            con.execute("INSERT INTO items VALUES (?, ?, ?, ?)", [i, f"item{i}", json.dumps(data), 1000.0 + i])
        con.executemany(
            "INSERT INTO embeddings(item_id, vector, scale, source, created) VALUES (?, ?, ?, ?, ?)",
            [
                (1 + j // 2, quantize.to_blob(c), float(s), f"p{j}.jpg", 2000.0)
                for j, (c, s) in enumerate(zip(codes, scales))
            ],
        )
        if version >= 2:
            con.execute(
                "INSERT INTO events(time, source, kind, label, item_id, score) "
                "VALUES (1.0, 'cam', 'match', 'item1', 1, 0.9)"
            )
            con.execute("INSERT INTO outbox(event_id, sink) VALUES (1, 'mqtt')")
        if version >= 3:
            con.execute(
                "INSERT INTO features(item_id, kind, width, height, keypoints, descriptors, created) "
                "VALUES (1, 'orb', 64, 48, zeroblob(8), zeroblob(32), 3000.0)"
            )
            con.execute(
                "INSERT INTO negatives(item_id, vector, scale, created) VALUES (2, ?, 0.01, 3000.0)", [bytes(DIM)]
            )
        if version >= 4:
            vectors.pack(con)
        con.execute("COMMIT")


def dump(path, tables):
    with closing(sqlite3.connect(path)) as con:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in tables}


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_a_gallery_of_the_single_ladder_opens_and_upgrades_with_nothing_lost(tmp_path, monkeypatch, version):
    monkeypatch.setattr(vectors, "BLOCK_ROWS", 4)  # blocks in the legacy file, and a tail beside them
    path = tmp_path / "old.db"
    legacy_gallery(path, version)
    tables = [t for step in LEGACY_TABLES[:version] for t in step]
    before = dump(path, tables)
    with Gallery(path) as g, EventLog(g.db, ["mqtt"]) as log:
        assert g.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert g.db.versions() == LADDERS
        assert [(i.label, i.metadata, i.embeddings) for i in g.items()] == [
            ("item1", {"owner": "Ada"}, 2),
            ("item2", {}, 2),
            ("item3", {"floor": 2}, 2),
        ]
        assert g.matrix().size == 6 and sorted(g.matrix().keys) == [1, 1, 2, 2, 3, 3]
        assert g.generation() == 7 and g.dim == DIM and g.model_sha256 == SHA
        assert [e.label for e in log.recent()] == (["item1"] if version >= 2 else [])
    after = dump(path, tables)  # every row of the old file, as it was (columns added since: at the end)
    assert {
        t: [row[: len(old[0])] if old else row for row, old in zip(after[t], [before[t]] * len(after[t]))]
        for t in tables
    } == before
    with Gallery(path) as g:  # and a second open changes nothing
        assert g.db.versions() == LADDERS and g.count() == (3, 6)


def test_item_thresholds_move_into_the_calibrated_table_when_the_gallery_was_never_calibrated(tmp_path):
    path = tmp_path / "old.db"
    legacy_gallery(path, 4, metadata=({"threshold": 0.8, "owner": "Ada"}, {"threshold": "high"}, {"threshold": 1}))
    before = time.time()
    with Gallery(path) as g:
        assert g.thresholds() == {1: 0.8, 3: 1.0}
        assert g.calibration() == {"preset": "whole", "source": "item threshold metadata"}
        assert [i.metadata for i in g.items()] == [{"owner": "Ada"}, {"threshold": "high"}, {}]
        assert g.threshold is None and g.threshold_for(1) == 0.8 and g.threshold_for(2) is None
        assert g.generation() == 8  # a gallery change: other processes' caches see it
        created = g.db.execute("SELECT created FROM thresholds").fetchall()
    assert all(before - 1 <= c <= time.time() for (c,) in created)


@pytest.mark.parametrize("meta", [[("calibration", '{"preset": "default"}')], [("threshold", "0.5")]])
def test_a_calibrated_gallery_keeps_its_item_metadata(tmp_path, meta):
    path = tmp_path / "old.db"
    metadata = ({"threshold": 0.8, "owner": "Ada"}, {}, {"threshold": 0.7})
    legacy_gallery(path, 4, metadata=metadata, meta=meta)
    before = dump(path, ["meta", "items", "thresholds"])
    with Gallery(path) as g:
        assert [i.metadata for i in g.items()] == list(metadata) and g.thresholds() == {}
    assert dump(path, ["meta", "items", "thresholds"]) == before


def test_ladders_are_applied_by_their_subsystems_and_a_newer_one_is_refused(tmp_path):
    path = tmp_path / "g.db"
    with Database(path) as db:
        assert db.versions() == {}
        EventLog(db, []).close()  # handed the database: applies its ladders, leaves it open
        assert db.versions() == {"events": 2, "outbox": 2}
        Gallery(db).close()
        assert db.versions() == LADDERS
        db.execute("UPDATE schema_versions SET version = 99 WHERE name = 'gallery'")
    with pytest.raises(GalleryError, match="g.db: gallery schema version 99 is newer than this program's"):
        Gallery(path)
    EventLog(path, []).close()  # the other subsystems still open
