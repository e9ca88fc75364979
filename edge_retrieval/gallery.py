"""The gallery: items, their int8 embeddings and the model they belong to, in one SQLite file.

Schema changes only through `MIGRATIONS` (a `PRAGMA user_version` ladder). Every change is
one transaction: an exception half-way leaves the file exactly as it was. The search
matrix is cached in memory and reloaded when the generation counter in `meta` (bumped in the
same transaction as every gallery change, by any process) moves.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import sqlite_utils

from . import quantize
from .errors import GalleryError, ModelMismatchError
from . import store
from .scan import CodeMatrix

# A step is one SQL script (split on ';') or a list of statements (which may hold ';' themselves).
MIGRATIONS: list[str | list[str]] = [
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
    # 2: events (every decision) and their outbox (one row per event and sink until acknowledged)
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
    # 3: local features per enrolled image (geometric verification), negatives ("this is NOT
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
]
MIGRATIONS.append(store.STATEMENTS)  # 4: the packed vector blocks that make start-up fast (store.py)
SCHEMA_VERSION = len(MIGRATIONS)
GALLERY_TABLES = ("meta", "items", "embeddings")  # what makes a file a gallery
# Per-item rows that travel with an export/import (item_id first); thresholds are calibrated for
# one gallery and do not (run `calibrate` again after an import).
ITEM_TABLES = {
    "embeddings": ("item_id", "vector", "scale", "source", "created"),
    "features": ("item_id", "kind", "width", "height", "keypoints", "descriptors", "source", "created"),
    "negatives": ("item_id", "vector", "scale", "source", "created"),
}
LOCAL_TABLES = ("events", "outbox")  # the device's own history: the schema is exported, the rows are not


def migrate(db: sqlite_utils.Database) -> None:
    """Bring the schema to SCHEMA_VERSION, one numbered step at a time, each in a transaction."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise GalleryError(f"{db_path(db)}: schema version {version} is newer than this program's ({SCHEMA_VERSION})")
    for number in range(version, SCHEMA_VERSION):
        step = MIGRATIONS[number]
        with db.atomic():
            for statement in step.split(";") if isinstance(step, str) else step:
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {number + 1}")
            if number + 1 == SCHEMA_VERSION:
                store.pack(db.conn)


def db_path(db: sqlite_utils.Database) -> str:
    row = db.execute("PRAGMA database_list").fetchone()
    return row[2] or ":memory:"


@dataclass(frozen=True)
class Item:
    id: int
    label: str
    metadata: dict[str, Any]
    embeddings: int
    created: float


@dataclass(frozen=True)
class Matches:
    """Search results: parallel (queries, k) arrays, best match first."""

    item_ids: np.ndarray  # int64
    labels: np.ndarray  # object (str)
    scores: np.ndarray  # float32, cosine similarity

    def __len__(self) -> int:
        return len(self.item_ids)


@dataclass
class _Cache:
    stamp: int = -1
    matrix: CodeMatrix | None = None
    state: store.StoreState | None = None


class Gallery:
    """One SQLite gallery file.

    >>> with Gallery("gallery.db") as g:
    ...     g.add("cat", vectors, model_sha256=emb.sha256, model_name=emb.card.name)
    ...     g.search(queries, k=5).labels
    """

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = str(path)
        if self.path != ":memory:":
            if not create and not Path(self.path).is_file():
                raise GalleryError(f"{self.path}: no such gallery")
            parent = Path(self.path).parent
            if not parent.is_dir():
                raise GalleryError(f"{self.path}: folder {parent} does not exist")
        try:
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            self.db = sqlite_utils.Database(conn)
            self.db.execute("PRAGMA foreign_keys = ON")
            if self.path != ":memory:":
                self.db.enable_wal()
            migrate(self.db)
        except sqlite3.DatabaseError as e:
            raise GalleryError(f"{self.path}: not a gallery database ({e})") from None
        self._cache = _Cache()

    # -- model binding --------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    @property
    def model_sha256(self) -> str | None:
        return self._meta("model_sha256")

    @property
    def model_name(self) -> str | None:
        return self._meta("model_name")

    @property
    def dim(self) -> int | None:
        value = self._meta("dim")
        return int(value) if value else None

    def check_model(self, sha256: str, name: str = "") -> None:
        """Raise ModelMismatchError unless the gallery is empty of a model or belongs to this one."""
        own = self.model_sha256
        if own is not None and own != sha256:
            raise ModelMismatchError(
                f"{self.path} belongs to model {self.model_name or '?'} (sha256 {own[:12]}…); "
                f"these vectors come from {name or '?'} (sha256 {sha256[:12]}…)"
            )

    def _bind(self, sha256: str, name: str, dim: int) -> None:
        self.check_model(sha256, name)
        if self.model_sha256 is None:
            self.db.execute("INSERT INTO meta(key, value) VALUES ('model_sha256', ?), ('model_name', ?), ('dim', ?)",
                            [sha256, name, str(dim)])
        elif self.dim != dim:
            raise GalleryError(f"{self.path}: vectors have {dim} dimensions, the gallery {self.dim}")

    # -- changes ---------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator["Gallery"]:
        """Group several changes into one transaction (nested calls use savepoints)."""
        with self.db.atomic():
            yield self
            store.pack(self.db.conn)  # a count query until a block's worth of rows is waiting
            self.db.execute("INSERT INTO meta(key, value) VALUES ('generation', '1') ON CONFLICT(key) "
                            "DO UPDATE SET value = CAST(value AS INTEGER) + 1")

    def add(
        self,
        label: str,
        vectors: np.ndarray,
        *,
        model_sha256: str,
        model_name: str = "",
        metadata: dict[str, Any] | None = None,
        sources: Sequence[str] | None = None,
    ) -> int:
        """Add embeddings to the item `label` (created if new; metadata merged). Returns its id."""
        label = label.strip() if isinstance(label, str) else label
        if not label or not isinstance(label, str):
            raise GalleryError("label must be a non-empty string")
        vectors = np.atleast_2d(np.asarray(vectors, np.float32))
        if len(vectors) == 0:
            raise GalleryError(f"item {label!r}: no vectors to add")
        if not np.isfinite(vectors).all():
            raise GalleryError(f"item {label!r}: vectors contain NaN or infinity")
        sources = list(sources) if sources is not None else [""] * len(vectors)
        if len(sources) != len(vectors):
            raise GalleryError(f"item {label!r}: {len(sources)} sources for {len(vectors)} vectors")
        metadata = dict(metadata or {})
        try:
            json.dumps(metadata)
        except TypeError as e:
            raise GalleryError(f"item {label!r}: metadata is not JSON ({e})") from None
        codes, scales = quantize.quantize(vectors)
        now = time.time()
        with self.transaction():
            self._bind(model_sha256, model_name, vectors.shape[1])
            row = self.db.execute("SELECT id, metadata FROM items WHERE label = ?", [label]).fetchone()
            if row is None:
                item_id = self.db.execute(
                    "INSERT INTO items(label, metadata, created) VALUES (?, ?, ?)", [label, json.dumps(metadata), now]
                ).lastrowid
            else:
                item_id = row[0]
                if metadata:
                    merged = {**json.loads(row[1]), **metadata}
                    self.db.execute("UPDATE items SET metadata = ? WHERE id = ?", [json.dumps(merged), item_id])
            self.db.conn.executemany(
                "INSERT INTO embeddings(item_id, vector, scale, source, created) VALUES (?, ?, ?, ?, ?)",
                [(item_id, quantize.to_blob(c), float(s), str(src), now) for c, s, src in zip(codes, scales, sources)],
            )
        return int(item_id)

    def remove(self, item: int | str) -> Item:
        """Remove one item (by id or label) and its embeddings; returns what was removed."""
        found = self.item(item)
        with self.transaction():
            self.db.execute("DELETE FROM items WHERE id = ?", [found.id])
        return found

    def update(self, item: int | str, *, label: str | None = None, metadata: dict[str, Any] | None = None) -> Item:
        """Rename an item and/or replace its metadata; returns it as it is now."""
        found = self.item(item)
        if label is not None:
            label = label.strip() if isinstance(label, str) else label
            if not label or not isinstance(label, str):
                raise GalleryError("label must be a non-empty string")
            other = self.db.execute("SELECT id FROM items WHERE label = ?", [label]).fetchone()
            if other is not None and other[0] != found.id:
                raise GalleryError(f"{self.path}: there is already an item {label!r}")
        if metadata is not None:
            try:
                text = json.dumps(dict(metadata))
            except (TypeError, ValueError) as e:
                raise GalleryError(f"item {found.label!r}: metadata is not JSON ({e})") from None
        with self.transaction():
            if label is not None:
                self.db.execute("UPDATE items SET label = ? WHERE id = ?", [label, found.id])
            if metadata is not None:
                self.db.execute("UPDATE items SET metadata = ? WHERE id = ?", [text, found.id])
        return self.item(found.id)

    def sources(self, item: int | str) -> list[str]:
        """Where an item's embeddings came from (file paths as enrolled), oldest first."""
        found = self.item(item)
        rows = self.db.execute("SELECT source FROM embeddings WHERE item_id = ? ORDER BY id", [found.id])
        return [r[0] for r in rows if r[0]]

    # -- reading ---------------------------------------------------------------
    def _item_from_row(self, row) -> Item:
        return Item(id=row[0], label=row[1], metadata=json.loads(row[2]), embeddings=row[3], created=row[4])

    _ITEM_SQL = ("SELECT i.id, i.label, i.metadata, (SELECT count(*) FROM embeddings e WHERE e.item_id = i.id), "
                 "i.created FROM items i")

    def items(self) -> list[Item]:
        return [self._item_from_row(r) for r in self.db.execute(self._ITEM_SQL + " ORDER BY i.id")]

    def item(self, item: int | str) -> Item:
        """One item by id (int) or label (str); GalleryError if there is none."""
        if isinstance(item, (int, np.integer)):
            row = self.db.execute(self._ITEM_SQL + " WHERE i.id = ?", [int(item)]).fetchone()
        else:
            row = self.db.execute(self._ITEM_SQL + " WHERE i.label = ?", [item]).fetchone()
        if row is None:
            raise GalleryError(f"{self.path}: no item {item!r}")
        return self._item_from_row(row)

    def count(self) -> tuple[int, int]:
        """(items, embeddings)."""
        return (self.db.execute("SELECT count(*) FROM items").fetchone()[0],
                self.db.execute("SELECT count(*) FROM embeddings").fetchone()[0])

    def info(self) -> dict[str, Any]:
        items, embeddings = self.count()
        dim = self.dim or 0
        return {
            "path": self.path,
            "schema_version": SCHEMA_VERSION,
            "model_name": self.model_name,
            "model_sha256": self.model_sha256,
            "dim": dim,
            "items": items,
            "embeddings": embeddings,
            "file_bytes": sum(os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.isfile(p)),
            "matrix_bytes": embeddings * (dim + 4),
        }

    # -- search ----------------------------------------------------------------
    def generation(self) -> int:
        """A counter bumped by every committed gallery change, from any process (not by events)."""
        return int(self._meta("generation") or 0)

    def matrix(self) -> CodeMatrix:
        """The cached int8 matrix (keys = item ids): loaded from packed blocks once, then brought
        up to date when the generation moves (new rows appended in place, a reload after removals)."""
        stamp = self.generation()
        cache = self._cache
        if cache.matrix is None:
            cache.matrix, cache.state = store.load_matrix(self.db.conn, self.dim)
        elif stamp != cache.stamp:
            cache.matrix, cache.state = store.refresh(self.db.conn, cache.matrix, cache.state)
        cache.stamp = stamp
        return cache.matrix

    def labels(self, item_ids: np.ndarray) -> np.ndarray:
        """The labels of these item ids (any shape), read now: renames show at once."""
        ids = np.asarray(item_ids, np.int64)
        unique = [int(i) for i in np.unique(ids)]
        found: dict[int, str] = {}
        for start in range(0, len(unique), 900):  # SQLite's bound-parameter limit
            part = unique[start : start + 900]
            found.update(self.db.execute(
                f"SELECT id, label FROM items WHERE id IN ({', '.join('?' * len(part))})", part).fetchall())
        out = np.empty(ids.shape, object)
        out.flat[:] = [found.get(int(i), "") for i in ids.flat]
        return out

    def search(self, queries: np.ndarray, k: int = 5) -> Matches:
        """Top-k *items* per query (an item scores by its best embedding)."""
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        if k < 1:
            raise GalleryError(f"k must be at least 1, not {k}")
        dim = self.dim
        if dim is None:  # nothing enrolled yet
            empty = np.empty((len(queries), 0))
            return Matches(empty.astype(np.int64), empty.astype(object), empty.astype(np.float32))
        if queries.shape[1] != dim:
            raise GalleryError(f"{self.path}: queries have {queries.shape[1]} dimensions, the gallery {dim}")
        matrix = self.matrix()
        n = matrix.size
        # Rows ranked best first hold each item's best score at its first occurrence: take
        # enough rows for k distinct items (several photos per item), widening when short.
        wanted = min(n, 4 * k)
        while True:
            rows, scores = matrix.topk(queries, wanted)
            keys = matrix.keys[rows]
            firsts = [np.sort(np.unique(row, return_index=True)[1]) for row in keys]
            if wanted == n or min(len(f) for f in firsts) >= k:
                break
            wanted = min(n, 4 * wanted)
        k = min([k] + [len(f) for f in firsts])
        ids = np.stack([keys[q][f[:k]] for q, f in enumerate(firsts)]) if k else np.empty((len(queries), 0), np.int64)
        best = np.stack([scores[q][f[:k]] for q, f in enumerate(firsts)]) if k else np.empty((len(queries), 0), np.float32)
        return Matches(ids, self.labels(ids), best)

    # -- verification features, negatives, calibrated thresholds --------------
    def add_features(self, item_id: int, kind: str, size: tuple[int, int], keypoints: np.ndarray,
                     descriptors: np.ndarray, source: str = "") -> None:
        """Store one enrolled image's local features: (n, 2) float32 points in an image of
        `size` (width, height) and (n, bytes) uint8 descriptors."""
        keypoints = np.ascontiguousarray(keypoints, "<f4").reshape(-1, 2)
        descriptors = np.ascontiguousarray(descriptors, np.uint8)
        if len(keypoints) != len(descriptors):
            raise GalleryError(f"item {item_id}: {len(keypoints)} keypoints for {len(descriptors)} descriptors")
        with self.transaction():
            self.db.execute(
                "INSERT INTO features(item_id, kind, width, height, keypoints, descriptors, source, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [int(item_id), kind, int(size[0]), int(size[1]), keypoints.tobytes(), descriptors.tobytes(),
                 str(source), time.time()])

    def features(self, item_id: int) -> list[tuple[str, tuple[int, int], np.ndarray, np.ndarray]]:
        """An item's stored local features: [(kind, (width, height), keypoints, descriptors)]."""
        out = []
        for kind, w, h, kp, desc in self.db.execute(
                "SELECT kind, width, height, keypoints, descriptors FROM features WHERE item_id = ? ORDER BY id",
                [int(item_id)]):
            points = np.frombuffer(kp, "<f4").reshape(-1, 2)
            out.append((kind, (w, h), points, np.frombuffer(desc, np.uint8).reshape(len(points), -1)))
        return out

    def add_negatives(self, item: int | str, vectors: np.ndarray, sources: Sequence[str] | None = None) -> int:
        """Enrol descriptors of images that are NOT `item` (they veto and calibrate its matches)."""
        found = self.item(item)
        vectors = np.atleast_2d(np.asarray(vectors, np.float32))
        if self.dim is not None and vectors.shape[1] != self.dim:
            raise GalleryError(f"{self.path}: vectors have {vectors.shape[1]} dimensions, the gallery {self.dim}")
        sources = list(sources) if sources is not None else [""] * len(vectors)
        codes, scales = quantize.quantize(vectors)
        now = time.time()
        with self.transaction():
            self.db.conn.executemany(
                "INSERT INTO negatives(item_id, vector, scale, source, created) VALUES (?, ?, ?, ?, ?)",
                [(found.id, quantize.to_blob(c), float(sc), str(src), now) for c, sc, src in zip(codes, scales, sources)])
        return found.id

    def negatives(self) -> tuple[np.ndarray, np.ndarray]:
        """(item ids (n,), float32 vectors (n, dim)) of every enrolled negative."""
        rows = self.db.execute("SELECT item_id, scale, vector FROM negatives ORDER BY id").fetchall()
        dim = self.dim or 0
        if not rows:
            return np.empty(0, np.int64), np.empty((0, dim), np.float32)
        codes = np.frombuffer(b"".join(r[2] for r in rows), np.int8).reshape(len(rows), -1)
        scales = np.array([r[1] for r in rows], np.float32)
        return np.array([r[0] for r in rows], np.int64), codes.astype(np.float32) * scales[:, None]

    def set_thresholds(self, threshold: float, per_item: dict[int, float] | None = None,
                       report: dict[str, Any] | None = None) -> None:
        """Replace the calibrated global threshold, the per-item ones and the calibration report."""
        now = time.time()
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('threshold', ?), ('calibration', ?)",
                            [repr(float(threshold)), json.dumps(report or {})])
            self.db.execute("DELETE FROM thresholds")
            self.db.conn.executemany("INSERT INTO thresholds(item_id, threshold, created) VALUES (?, ?, ?)",
                                     [(int(i), float(t), now) for i, t in (per_item or {}).items()])

    @property
    def threshold(self) -> float | None:
        """The calibrated global threshold on the final score (None until `calibrate` ran)."""
        value = self._meta("threshold")
        return float(value) if value is not None else None

    def calibration(self) -> dict[str, Any]:
        return json.loads(self._meta("calibration") or "{}")

    def thresholds(self) -> dict[int, float]:
        """Calibrated per-item thresholds {item id: threshold} (items without one use the global)."""
        return dict(self.db.execute("SELECT item_id, threshold FROM thresholds").fetchall())

    def threshold_for(self, item_id: int) -> float | None:
        """The threshold that applies to an item: its own, else the global one, else None."""
        row = self.db.execute("SELECT threshold FROM thresholds WHERE item_id = ?", [int(item_id)]).fetchone()
        return float(row[0]) if row else self.threshold

    # -- export / import -------------------------------------------------------
    def export(self, path: str | Path) -> dict[str, int]:
        """Write the gallery (items, embeddings, model) to one portable SQLite file, atomically."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        try:
            self.db.execute("VACUUM INTO ?", [str(tmp)])
            out = sqlite_utils.Database(str(tmp))
            for table in out.table_names():
                if table in LOCAL_TABLES:
                    out.execute(f"DELETE FROM [{table}]")
            out.execute("PRAGMA journal_mode = DELETE")
            out.close()
            os.replace(tmp, path)
        except (sqlite3.Error, OSError) as e:
            tmp.unlink(missing_ok=True)
            raise GalleryError(f"{path}: cannot export ({e})") from None
        items, embeddings = self.count()
        return {"items": items, "embeddings": embeddings}

    def import_from(self, path: str | Path) -> dict[str, int]:
        """Merge an exported gallery into this one, in one transaction (labels present get its vectors)."""
        path = Path(path)
        if not path.is_file():
            raise GalleryError(f"{path}: no such file")
        try:
            src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                version = src.execute("PRAGMA user_version").fetchone()[0]
                tables = {r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if not set(GALLERY_TABLES) <= tables or not 1 <= version <= SCHEMA_VERSION:
                    raise GalleryError(f"{path}: not an exported gallery (schema {version}, tables {sorted(tables)})")
                meta = dict(src.execute("SELECT key, value FROM meta").fetchall())
                items = src.execute("SELECT id, label, metadata, created FROM items").fetchall()
                rows = {table: src.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall()
                        for table, cols in ITEM_TABLES.items() if table in tables}
                embeddings = rows["embeddings"]
            finally:
                src.close()
        except sqlite3.DatabaseError as e:
            raise GalleryError(f"{path}: not an exported gallery ({e})") from None
        if not items:
            return {"items": 0, "embeddings": 0}
        if "model_sha256" not in meta or "dim" not in meta:
            raise GalleryError(f"{path}: exported gallery has no model")
        dim = int(meta["dim"])
        for item_id, blob, *_ in embeddings:
            if len(blob) != dim:
                raise GalleryError(f"{path}: embedding of item {item_id} has {len(blob)} bytes, expected {dim}")
        with self.transaction():
            self._bind(meta["model_sha256"], meta.get("model_name", ""), dim)
            new_ids = {}
            for old_id, label, metadata, created in items:
                row = self.db.execute("SELECT id FROM items WHERE label = ?", [label]).fetchone()
                if row is None:
                    row = [self.db.execute("INSERT INTO items(label, metadata, created) VALUES (?, ?, ?)",
                                           [label, metadata, created]).lastrowid]
                new_ids[old_id] = row[0]
            for table, table_rows in rows.items():
                cols = ITEM_TABLES[table]
                self.db.conn.executemany(
                    f"INSERT INTO {table}({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                    [(new_ids[r[0]], *r[1:]) for r in table_rows],
                )
        return {"items": len(items), "embeddings": len(embeddings)}

    # -- lifecycle -------------------------------------------------------------
    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
