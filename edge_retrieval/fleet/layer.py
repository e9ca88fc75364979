"""A fleet version applied to a device's gallery: the fleet layer and the local layer.

The gallery holds two layers. The fleet layer is the items of the version applied last
(`fleet_items`); the local layer is everything enrolled on the device itself (the kiosk's staff
page, `edge-retrieval enroll`). Applying a version replaces the fleet layer and keeps the local
one, in one transaction: the old fleet items go, the new file is imported through the import
path (`transfer.import_into`: manifest, model and every value checked), and the version's
calibrated thresholds (the global one, its report, each fleet item's) replace the device's.
A label belongs to one layer: a local item whose label the version brings is replaced by the
fleet's (counted in the result as `replaced`). Photos enrolled locally into a fleet item last
until the next version. The schema is the ladder "fleet".
"""

from __future__ import annotations

import math
import sqlite3
import time
from pathlib import Path
from typing import Any

from ..errors import GalleryError, one_line
from ..storage import transfer
from ..storage.database import Migrations
from ..storage.gallery import Gallery

MIGRATIONS = Migrations(
    "fleet",
    [
        """
    CREATE TABLE fleet_items (item_id INTEGER PRIMARY KEY REFERENCES items(id) ON DELETE CASCADE);
    CREATE TABLE fleet_version (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """
    ],
)
CALIBRATION_KEYS = ("threshold", "calibration")  # meta rows a version's calibration replaces


def open_gallery(path: str | Path) -> Gallery:
    gallery = Gallery(path)
    try:
        MIGRATIONS.apply(gallery.db)
    except BaseException:
        gallery.close()
        raise
    return gallery


def applied(gallery: Gallery) -> dict[str, Any]:
    """What was applied last: {"group", "version", "sha256", "applied", "items"} ({} if nothing)."""
    rows = dict(gallery.db.execute("SELECT key, value FROM fleet_version").fetchall())
    if not rows:
        return {}
    return {**rows, "version": int(rows["version"]), "applied": float(rows["applied"]), "items": int(rows["items"])}


def counts(gallery: Gallery) -> tuple[int, int]:
    """(items, of which local)."""
    items, _ = gallery.count()
    fleet = gallery.db.execute("SELECT count(*) FROM fleet_items").fetchone()[0]
    return items, items - fleet


def _calibration(path: Path) -> tuple[dict[str, str], list[tuple[str, float]], list[str]]:
    """(the file's calibration meta rows, [(label, per-item threshold)], its labels), read-only."""
    src = transfer.open_import(path)
    try:
        tables = {r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        meta = dict(
            src.execute("SELECT key, value FROM meta WHERE key IN (?, ?)", CALIBRATION_KEYS).fetchall()
            if "meta" in tables
            else []
        )
        labels = [r[0] for r in src.execute("SELECT label FROM items")] if "items" in tables else []
        per_item = (
            src.execute("SELECT i.label, t.threshold FROM thresholds t JOIN items i ON i.id = t.item_id").fetchall()
            if "thresholds" in tables
            else []
        )
    except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
        raise GalleryError(f"{path}: not a readable exported gallery ({one_line(e)})") from None
    finally:
        src.close()
    out = []
    for label, value in per_item:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise GalleryError(f"{path}: the threshold of {label!r} is {value!r}, not a number")
        out.append((label.strip() if isinstance(label, str) else label, float(value)))
    for key, value in meta.items():
        if not isinstance(value, str):
            raise GalleryError(f"{path}: meta {key!r} is not text")
    return meta, out, [label.strip() for label in labels if isinstance(label, str)]


def apply(gallery: Gallery, path: str | Path, *, group: str, version: int, sha256: str) -> dict[str, int]:
    """Replace the fleet layer with the export file `path`, in one transaction; GalleryError (or
    ModelMismatchError) and nothing changed otherwise. {"items", "replaced"} of the new layer."""
    path = Path(path)
    meta, per_item, labels = _calibration(path)
    conn = gallery.db.conn
    with gallery.transaction():
        conn.execute("DELETE FROM items WHERE id IN (SELECT item_id FROM fleet_items)")
        replaced = 0
        for start in range(0, len(labels), 900):  # SQLite's bound-parameter limit
            some = labels[start : start + 900]
            replaced += conn.execute(f"DELETE FROM items WHERE label IN ({', '.join('?' * len(some))})", some).rowcount
        before = conn.execute("SELECT coalesce(max(id), 0) FROM items").fetchone()[0]
        transfer.import_into(gallery, path)  # a savepoint inside this transaction
        conn.execute("DELETE FROM fleet_items")
        conn.execute("INSERT INTO fleet_items(item_id) SELECT id FROM items WHERE id > ?", [before])
        conn.execute(f"DELETE FROM meta WHERE key IN ({', '.join('?' * len(CALIBRATION_KEYS))})", CALIBRATION_KEYS)
        conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", list(meta.items()))
        now = time.time()
        conn.executemany(
            "INSERT OR REPLACE INTO thresholds(item_id, threshold, created) "
            "SELECT id, ?, ? FROM items WHERE label = ? AND id > ?",
            [(value, now, label, before) for label, value in per_item],
        )
        items = conn.execute("SELECT count(*) FROM fleet_items").fetchone()[0]
        conn.execute("DELETE FROM fleet_version")
        conn.executemany(
            "INSERT INTO fleet_version(key, value) VALUES (?, ?)",
            [
                ("group", group),
                ("version", str(version)),
                ("sha256", sha256),
                ("applied", repr(now)),
                ("items", str(items)),
            ],
        )
    return {"items": items, "replaced": replaced}
