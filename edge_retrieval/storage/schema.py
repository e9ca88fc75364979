"""The gallery's schema: its ladder of steps ("gallery"; database.py applies it, in order, once each).

The other subsystems' ladders live beside their code: vectors.py (the packed blocks), events.py,
outbox.py. A step is never edited once released: a change is a new step at the end.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time

from .database import Migrations

CALIBRATION_FROM_METADATA = {"preset": "whole", "source": "item threshold metadata"}


def thresholds_from_metadata(conn: sqlite3.Connection) -> None:
    """Items' numeric `threshold` metadata (whole-frame cosine thresholds, set before `calibrate`
    existed) become the calibrated per-item thresholds, and leave the metadata. Only in a gallery
    never calibrated: no meta `threshold`, `calibration` absent or {}, no per-item thresholds."""
    meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('threshold', 'calibration')").fetchall())
    if (
        "threshold" in meta
        or meta.get("calibration", "{}") != "{}"
        or conn.execute("SELECT 1 FROM thresholds LIMIT 1").fetchone()
    ):
        return
    moved = []
    for item_id, text in conn.execute("SELECT id, metadata FROM items ORDER BY id").fetchall():
        try:
            metadata = json.loads(text)
        except ValueError:
            continue
        value = metadata.get("threshold") if isinstance(metadata, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            del metadata["threshold"]
            moved.append((item_id, float(value), json.dumps(metadata)))
    if not moved:
        return
    now = time.time()
    conn.executemany(
        "INSERT INTO thresholds(item_id, threshold, created) VALUES (?, ?, ?)", [(i, t, now) for i, t, _ in moved]
    )
    conn.executemany("UPDATE items SET metadata = ? WHERE id = ?", [(m, i) for i, _, m in moved])
    conn.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES ('calibration', ?)", [json.dumps(CALIBRATION_FROM_METADATA)]
    )
    conn.execute(
        "INSERT INTO meta(key, value) VALUES ('generation', '1') ON CONFLICT(key) "
        "DO UPDATE SET value = CAST(value AS INTEGER) + 1"
    )


MIGRATIONS = Migrations(
    "gallery",
    [
        # 1: items, embeddings, meta
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
        # 2: local features per enrolled image (geometric verification), negatives ("this is NOT
        #    item X"), calibrated per-item thresholds (the global one and its report live in meta)
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
        # 3: item `threshold` metadata → calibrated per-item thresholds
        thresholds_from_metadata,
    ],
)
