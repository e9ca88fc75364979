"""The gallery: items, their int8 embeddings and the model they belong to, in one SQLite file.

Schema changes only through `MIGRATIONS` (a `PRAGMA user_version` ladder). Every change is
one transaction: an exception half-way leaves the file exactly as it was. The search
matrix is cached in memory and reloaded when the generation counter in `meta` (bumped in the
same transaction as every gallery change, by any process) moves.
"""
from __future__ import annotations

import json
import math
import os
import sqlite3
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import sqlite_utils

from .. import quantize
from . import transfer
from ..errors import GalleryError, ModelMismatchError, one_line
from . import vectors
from ..scan import CodeMatrix

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
MIGRATIONS.append(vectors.STATEMENTS)  # 4: the packed vector blocks that make start-up fast (store.py)
# 5 — outbox: parked rows. A row a sink refused for good (PermanentDeliveryError) is parked: kept
#     with its error, skipped by delivery (and by the pending index) until `events retry`.
MIGRATIONS.append("""
    ALTER TABLE outbox ADD COLUMN parked REAL;
    DROP INDEX outbox_pending;
    CREATE INDEX outbox_pending ON outbox(sink, event_id) WHERE delivered IS NULL AND parked IS NULL;
    CREATE INDEX outbox_parked ON outbox(event_id) WHERE parked IS NOT NULL;
""")
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
# What an export's manifest covers (columns in the order they are hashed, rows in rowid order).
EXPORT_TABLES = {"items": ("id", "label", "metadata", "created"), **ITEM_TABLES,
                 "thresholds": ("item_id", "threshold", "created")}


def migrate(db: sqlite_utils.Database) -> None:
    """Bring the schema to SCHEMA_VERSION, one numbered step at a time, each in a transaction.

    Each step holds the write lock from its start (BEGIN IMMEDIATE) and reads the version
    again under it: two processes opening a new gallery at once run every step once.
    """
    while True:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise GalleryError(f"{db_path(db)}: schema version {version} is newer than this program's "
                               f"({SCHEMA_VERSION})")
        if version == SCHEMA_VERSION:
            return
        with write_transaction(db.conn):
            number = db.execute("PRAGMA user_version").fetchone()[0]
            if number >= SCHEMA_VERSION:  # another process migrated meanwhile: check again above
                continue
            step = MIGRATIONS[number]
            for statement in step.split(";") if isinstance(step, str) else step:
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {number + 1}")
            if number + 1 == SCHEMA_VERSION:
                vectors.pack(db.conn)


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction that holds the write lock from its start (BEGIN IMMEDIATE).

    A deferred BEGIN reads first and upgrades to a write lock at its first write; in WAL
    mode SQLite refuses that upgrade at once ("database is locked", without waiting for
    the busy timeout) when another connection writes or wrote since the read began. Taking
    the lock first makes a writer wait (up to the connection's timeout) for the other
    writers instead. Committed on leaving, rolled back on any exception.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
            conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def sqlite_failure(e: sqlite3.Error, path: str) -> str:
    """SQLite's message, plus what the disk says when a write failed on a (nearly) full disk:
    SQLite reports a full disk as "disk I/O error" when it cannot even create the -shm file."""
    text = str(e)
    if path != ":memory:" and getattr(e, "sqlite_errorname", "").startswith(("SQLITE_FULL", "SQLITE_IOERR")):
        folder = os.path.dirname(os.path.abspath(path))
        try:
            st = os.statvfs(folder)
        except OSError:
            return text
        free = st.f_bavail * st.f_frsize
        if free < FULL_DISK_BYTES:
            text += f"; the disk is full: {free // 1024} KiB free in {folder}"
        elif (limit := _file_size_limit()) is not None:  # EFBIG: SQLite says only "disk I/O error"
            text += f"; this process may not write files past {limit} bytes (ulimit -f)"
    return text


def _file_size_limit() -> int | None:
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


FULL_DISK_BYTES = 1 << 20  # less free space than this after a failed write: call the disk full


def db_path(db: sqlite_utils.Database) -> str:
    row = db.execute("PRAGMA database_list").fetchone()
    return row[2] or ":memory:"


def enable_wal(conn: sqlite3.Connection, *, timeout: float) -> None:
    """Put the database in WAL mode, waiting up to `timeout` seconds for other connections.

    Switching a rollback-journal file to WAL needs its exclusive lock. When two processes open
    a new gallery at once, both hold the shared lock and want the exclusive one; SQLite then
    answers "database is locked" at once instead of calling the busy handler (it would wait
    for a deadlock). So the switch is retried here; the loser finds the file in WAL mode.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
        time.sleep(0.01)


def _wal_in_use(path: str) -> bool:
    try:
        return os.path.getsize(path + "-wal") > 0
    except OSError:
        return False


def check_gallery_file(conn: sqlite3.Connection, path: str) -> None:
    """Refuse, before anything is written to it (WAL mode, migrations), a file that is not a gallery
    of this program: not SQLite, truncated, another program's SQLite database, a newer schema.

    It reads the file only through SQLite (and `os.stat`): opening and closing the database file
    with a handle of our own would drop the POSIX locks that this process's other connections
    to it hold ("How To Corrupt An SQLite Database File", 2.2) — a daemon and an `enroll` in one
    process would then corrupt it.
    """
    own = not conn.in_transaction
    # A checkpoint in another process writes page 1, with the new page count, before the pages
    # that grow the file: a healthy file looks cut for a moment, and its WAL may be gone by the time
    # we look. Truncated means: still so a little later, with no WAL in use.
    for attempt in range(4):
        if own:  # one snapshot for all reads: another process may be migrating this new file right now
            conn.execute("BEGIN")
        try:  # a file that is not SQLite fails here, before anything is written: "file is not a database"
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        finally:
            if own and conn.in_transaction:
                conn.execute("COMMIT")
        if path == ":memory:" or not pages or _wal_in_use(path):
            break
        try:
            size = os.stat(path).st_size
        except OSError:
            break
        if pages * page_size <= size:
            break
        if attempt == 3:
            raise GalleryError(f"{path}: truncated gallery database ({size} bytes, its header says "
                               f"{pages} pages of {page_size} bytes)")
        time.sleep(0.05)
    if version > SCHEMA_VERSION:
        raise GalleryError(f"{path}: schema version {version} is newer than this program's ({SCHEMA_VERSION})")
    if version == 0 and names:
        raise GalleryError(f"{path}: not a gallery (an SQLite database of another program, with "
                           f"{', '.join(sorted(names)[:3])}{', …' if len(names) > 3 else ''}); left unchanged")
    missing = [t for t in GALLERY_TABLES if t not in names]
    if version > 0 and missing:
        raise GalleryError(f"{path}: not a gallery (schema version {version} without table {missing[0]!r})")


def _checked_label(label: Any) -> str:
    """The label stripped; GalleryError unless an import would accept it too (`transfer.check_label`)."""
    try:
        return transfer.check_label(label)
    except ValueError as e:
        raise GalleryError(str(e)) from None


def _metadata_text(label: str, metadata: dict[str, Any]) -> str:
    """Metadata as stored: a JSON object without NaN or infinity, at most MAX_METADATA_BYTES."""
    try:
        text = json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise GalleryError(f"item {label!r}: metadata is not JSON ({e})") from None
    if len(text.encode("utf-8", "surrogatepass")) > transfer.MAX_METADATA_BYTES:
        raise GalleryError(f"item {label!r}: metadata is larger than {transfer.MAX_METADATA_BYTES} bytes")
    return text


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


def _first_distinct(keys: list[int], k: int) -> list[int]:
    """Positions of the first occurrences of the first k distinct keys, in order."""
    seen: set[int] = set()
    out: list[int] = []
    for pos, key in enumerate(keys):
        if key not in seen:
            seen.add(key)
            out.append(pos)
            if len(out) == k:
                break
    return out


@dataclass
class _Cache:
    stamp: int = -1
    matrix: CodeMatrix | None = None
    state: vectors.StoreState | None = None
    dim: int | None = None
    labels: dict[int, str] = field(default_factory=dict)   # of this generation, filled as searched
    checked: float = -math.inf                             # time.monotonic() of the last generation check


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
        conn = None
        try:
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            self.db = sqlite_utils.Database(conn)
            check_gallery_file(conn, self.path)  # before WAL mode or a migration writes to it
            self.db.execute("PRAGMA foreign_keys = ON")
            if self.path != ":memory:":
                enable_wal(conn, timeout=30)
            migrate(self.db)
        except BaseException as e:
            if conn is not None:
                conn.close()
            if isinstance(e, sqlite3.OperationalError):  # locked, disk full, I/O, cannot create
                raise GalleryError(f"{self.path}: cannot open the gallery ({sqlite_failure(e, self.path)})") from None
            if isinstance(e, sqlite3.DatabaseError):  # not a database, malformed
                raise GalleryError(f"{self.path}: not a gallery database ({e})") from None
            raise
        self._cache = _Cache()
        # seconds a search may go on with the gallery it last saw before asking SQLite whether it
        # changed (0: every search asks; the daemon sets REFRESH_INTERVAL: changes show within it)
        self.refresh_interval = 0.0

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
        """Group several changes into one transaction (nested calls use savepoints).

        The outermost one takes the write lock at its start (`write_transaction`), so writers
        in several processes wait for each other (up to 30 s) instead of failing with
        "database is locked". A SQLite error (locked past the timeout, disk full, I/O error)
        becomes a GalleryError; nothing of the transaction is written.
        """
        if self.db.conn.in_transaction:
            with self.db.atomic():
                yield self
                self._changed()
            return
        try:
            with write_transaction(self.db.conn):
                yield self
                self._changed()
        except sqlite3.Error as e:
            raise GalleryError(f"{self.path}: cannot write ({sqlite_failure(e, self.path)})") from None

    def _changed(self) -> None:
        vectors.pack(self.db.conn)  # a count query until a block's worth of rows is waiting
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
        label = _checked_label(label)
        vectors = np.atleast_2d(np.asarray(vectors, np.float32))
        if len(vectors) == 0:
            raise GalleryError(f"item {label!r}: no vectors to add")
        if not np.isfinite(vectors).all():
            raise GalleryError(f"item {label!r}: vectors contain NaN or infinity")
        sources = list(sources) if sources is not None else [""] * len(vectors)
        if len(sources) != len(vectors):
            raise GalleryError(f"item {label!r}: {len(sources)} sources for {len(vectors)} vectors")
        metadata = dict(metadata or {})
        _metadata_text(label, metadata)
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
            label = _checked_label(label)
            other = self.db.execute("SELECT id FROM items WHERE label = ?", [label]).fetchone()
            if other is not None and other[0] != found.id:
                raise GalleryError(f"{self.path}: there is already an item {label!r}")
        if metadata is not None:
            text = _metadata_text(found.label, dict(metadata))
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
        return self._current().matrix

    @property
    def seen_generation(self) -> int:
        """The generation the last search (or `matrix()`) saw; -1 before the first."""
        return self._cache.stamp

    def _current(self) -> _Cache:
        """The cache, brought up to this generation: one query when nothing changed (a frame's
        search), none at all within `refresh_interval` seconds of the last check."""
        cache = self._cache
        now = time.monotonic()
        if cache.matrix is not None and now - cache.checked < self.refresh_interval:
            return cache
        stamp = self.generation()
        cache.checked = now
        if cache.matrix is None or stamp != cache.stamp:
            cache.dim = self.dim
            if cache.matrix is None:
                cache.matrix, cache.state = vectors.load_matrix(self.db.conn, cache.dim)
            else:
                cache.matrix, cache.state = vectors.refresh(self.db.conn, cache.matrix, cache.state)
            cache.labels = {}
            cache.stamp = stamp
        return cache

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
        queries = np.asarray(queries, np.float32)
        queries = queries.reshape(1, -1) if queries.ndim == 1 else np.atleast_2d(queries)
        if k < 1:
            raise GalleryError(f"k must be at least 1, not {k}")
        cache = self._current()
        dim = cache.dim
        if dim is None:  # nothing enrolled yet
            empty = np.empty((len(queries), 0))
            return Matches(empty.astype(np.int64), empty.astype(object), empty.astype(np.float32))
        if queries.shape[1] != dim:
            raise GalleryError(f"{self.path}: queries have {queries.shape[1]} dimensions, the gallery {dim}")
        matrix = cache.matrix
        n = matrix.size
        # Rows ranked best first hold each item's best score at its first occurrence: take
        # enough rows for k distinct items (several photos per item), widening when short.
        wanted = min(n, 4 * k)
        while True:
            rows, scores = matrix.topk(queries, wanted)
            keys = matrix.keys[rows]
            key_rows = keys.tolist()
            picks = [_first_distinct(row, k) for row in key_rows]  # each query's first rows of its best items
            found = min(len(p) for p in picks)
            if wanted == n or found >= k:
                break
            wanted = min(n, 4 * wanted)
        # A camera frame's search is one query: plain Python and few NumPy calls, since right
        # after the model's invoke each distinct NumPy call runs from cold caches (≈ 10–40 µs).
        if len(picks) == 1:
            ids = np.array([[key_rows[0][p] for p in picks[0]]], np.int64)
            best = scores[0].take(picks[0])[None]
        else:
            ids = np.stack([keys[q, p[:found]] for q, p in enumerate(picks)])
            best = np.stack([scores[q, p[:found]] for q, p in enumerate(picks)])
        # labels change only in a transaction, which moves the generation: cached per generation
        flat = ids.ravel().tolist()
        missing = [i for i in flat if i not in cache.labels]
        if missing:
            cache.labels.update(zip(missing, self.labels(np.array(missing, np.int64)).tolist()))
        labels = np.array([cache.labels[i] for i in flat], object).reshape(ids.shape)
        return Matches(ids, labels, best)

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
        return [f for _row, _item, f in self._features("WHERE item_id = ?", [int(item_id)])]

    def all_features(self) -> list[tuple[int, int, tuple[str, tuple[int, int], np.ndarray, np.ndarray]]]:
        """Every enrolled image's local features: [(row id, item_id, (kind, (width, height),
        keypoints, descriptors))], in enrolment order (a row id is never reused)."""
        return self._features("", [])

    def _features(self, where: str, params: list) -> list:
        out = []
        for row, item_id, kind, w, h, kp, desc in self.db.execute(
                f"SELECT id, item_id, kind, width, height, keypoints, descriptors FROM features {where} ORDER BY id",
                params):
            points = np.frombuffer(kp, "<f4").reshape(-1, 2)
            descriptors = np.frombuffer(desc, np.uint8)
            descriptors = descriptors.reshape(len(points), -1) if len(points) else descriptors.reshape(0, 32)
            out.append((row, item_id, (kind, (w, h), points, descriptors)))
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
        """Write the gallery (items, embeddings, local features, negatives, thresholds, the model it
        belongs to) to one portable SQLite file, atomically, with a manifest that `import_from`
        verifies: rows and a sha256 per table (manifest.py). The device's own history (events,
        outbox) is not exported, not even in free pages: the copy is vacuumed after it is emptied."""
        path = Path(path)
        if self.path != ":memory:" and transfer.same_file(path, self.path):
            raise GalleryError(f"{path}: is this gallery's own file; export to another file")
        if path.is_dir():
            raise GalleryError(f"{path}: is a folder; export to a file")
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.unlink(missing_ok=True)
            self.db.execute("VACUUM INTO ?", [str(tmp)])  # one consistent copy, WAL included
            out = sqlite3.connect(str(tmp), isolation_level=None)
            try:
                out.execute("PRAGMA journal_mode = DELETE")
                out.execute("BEGIN")
                tables = {r[0] for r in out.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                for table in LOCAL_TABLES:
                    if table in tables:
                        out.execute(f"DELETE FROM [{table}]")
                contents = transfer.compute(out, EXPORT_TABLES)
                transfer.write(out, contents)
                out.execute("COMMIT")
                out.execute("VACUUM")  # the deleted history leaves no pages behind
            finally:
                out.close()
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
            try:
                fd = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError:
                pass  # the rename is done; some file systems cannot sync a folder
        except (sqlite3.Error, OSError, UnicodeDecodeError) as e:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise GalleryError(f"{path}: cannot export {self.path} to it ({one_line(e)})") from None
        counts = contents["tables"]
        return {"items": counts["items"]["rows"], "embeddings": counts["embeddings"]["rows"]}

    def import_from(self, path: str | Path, *, verify: bool = True) -> dict[str, int]:
        """Merge an exported gallery into this one, in one transaction (labels present get its vectors).

        Nothing is written unless the whole file passes; otherwise a GalleryError (or a
        ModelMismatchError) names the file and what is wrong, and the gallery is as it was:

        - the file must be a regular file (a symlink to one is followed), not this gallery itself;
        - it is opened read-only and immutable, and nothing in it runs (manifest.py);
        - its manifest must match: the model and each table's row count, compared before any
          row is read, and each table's sha256, recomputed while the rows are read and inserted
          (the transaction is rolled back on a difference);
        - every value is checked (`manifest.check_*`): labels non-empty text without control
          characters, metadata a JSON object, vectors of the gallery's dimension with a finite
          scale and no longer than a unit vector, local features consistent; rows must belong
          to an item of the file;
        - tables of more than `transfer.MAX_ROWS` rows and values of more than
          `transfer.MAX_VALUE_BYTES` are refused unread; rows are read `transfer.FETCH_ROWS` at a
          time, so memory stays bounded whatever the file holds.

        An export without a manifest (written before exports had one, or stripped of it) is
        refused unless `verify=False` (`edge-retrieval import --unverified`), which imports it with
        every check above but the digests. A file with a manifest is always verified.

        Labels and metadata are stored as they are (SQL or HTML in them is only text). Sources
        (the paths photos were enrolled from) name files on the exporting machine: they are kept
        prefixed with "imported:", so nothing here ever reads a file an import named. Thresholds
        are calibrated for one gallery and are not imported (run `calibrate` again).
        """
        path = Path(path)
        try:
            mode = path.stat().st_mode
        except OSError:
            raise GalleryError(f"{path}: no such file") from None
        if not stat.S_ISREG(mode):
            raise GalleryError(f"{path}: not a regular file")
        if self.path != ":memory:" and transfer.same_file(path, self.path):
            raise GalleryError(f"{path}: is this gallery's own file")
        try:
            src = transfer.open_import(path)
        except sqlite3.Error as e:
            raise GalleryError(f"{path}: cannot be opened ({one_line(e)})") from None
        try:
            return self._import(src, path, verify)
        finally:
            src.close()

    def _import(self, src: sqlite3.Connection, path: Path, verify: bool) -> dict[str, int]:
        try:  # what the file says about itself, read before anything is written (its errors name it)
            version = src.execute("PRAGMA user_version").fetchone()[0]
            if not 1 <= version <= SCHEMA_VERSION:
                newer = f", newer than this program's {SCHEMA_VERSION}" if version > SCHEMA_VERSION else ""
                raise GalleryError(f"{path}: not an exported gallery (schema version {version}{newer})")
            present = transfer.check_schema(src, path, EXPORT_TABLES, GALLERY_TABLES)
            contents = transfer.read_manifest(src, path)
            if contents is None and verify:
                raise GalleryError(f"{path}: has no export manifest (exported by an older version, or stripped); "
                                   f"nothing imported (--unverified imports it with its rows checked, not verified)")
            counts = {table: src.execute(f"SELECT count(*) FROM [{table}]").fetchone()[0] for table in present}
            keys = transfer.MODEL_KEYS
            model = dict(src.execute(f"SELECT key, value FROM meta WHERE key IN ({', '.join('?' * len(keys))})",
                                     keys).fetchall())
            dim = transfer.parse_dim(model.get("dim")) or 0
            wrong = {table: src.execute(f"SELECT count(*) FROM [{table}] WHERE typeof(vector) != 'blob' "
                                        f"OR length(vector) != ?", [dim]).fetchone()[0]
                     for table in ("embeddings", "negatives") if table in present}
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:  # damage; text that is not UTF-8
            raise GalleryError(f"{path}: not an exported gallery ({one_line(e)})") from None
        for table, n in counts.items():
            if n > transfer.MAX_ROWS:
                raise GalleryError(f"{path}: {n} rows in {table}, more than the limit of {transfer.MAX_ROWS}")
        if contents is not None:
            listed = contents["tables"]
            for table in sorted(set(listed) | present):
                if table not in EXPORT_TABLES:
                    raise GalleryError(f"{path}: the manifest lists table {table!r}, unknown to this program")
                if table not in present:
                    raise GalleryError(f"{path}: the manifest lists table {table!r}, which the file lacks")
                if table not in listed:
                    raise GalleryError(f"{path}: table {table!r} is not in the export manifest")
                if listed[table]["rows"] != counts[table]:
                    raise GalleryError(f"{path}: the manifest says {listed[table]['rows']} rows in {table}, "
                                       f"the file holds {counts[table]}")
            if contents["model"] != model:
                raise GalleryError(f"{path}: the manifest's model {contents['model']} differs from the file's {model}")
        if not any(counts[t] for t in ("items", *ITEM_TABLES) if t in counts):
            return {"items": 0, "embeddings": 0}
        try:
            sha, name, dim = transfer.check_model(model)
        except ValueError as e:
            raise GalleryError(f"{path}: exported gallery has no valid model ({e})") from None
        for table, n in wrong.items():  # blob lengths, counted before any blob is read
            if n:
                raise GalleryError(f"{path}: {n} {table} vector(s) are not {dim} bytes")
        self.check_model(sha, name)  # before anything is read or locked
        if self.dim is not None and self.dim != dim:
            raise GalleryError(f"{path}: vectors have {dim} dimensions, the gallery {self.dim}")
        digests = {table: transfer.Digest() for table in present}
        try:
            with self.transaction():
                self._bind(sha, name, dim)
                new_ids: dict[int, int] = {}
                for rows in transfer.read_chunks(src, path, transfer.select("items", EXPORT_TABLES["items"])):
                    digests["items"].update(rows)
                    for row in rows:
                        old_id, label, metadata, created = transfer.check_item(row)
                        if old_id in new_ids:
                            raise ValueError(f"item id {old_id} appears twice")
                        found = self.db.execute("SELECT id FROM items WHERE label = ?", [label]).fetchone()
                        new_ids[old_id] = found[0] if found else self.db.execute(
                            "INSERT INTO items(label, metadata, created) VALUES (?, ?, ?)",
                            [label, metadata, created]).lastrowid
                for table, cols in ITEM_TABLES.items():
                    if table not in present:
                        continue
                    insert = f"INSERT INTO {table}({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
                    at = cols.index("source")
                    for rows in transfer.read_chunks(src, path, transfer.select(table, cols)):
                        digests[table].update(rows)
                        if table == "features":
                            transfer.check_features(rows)
                        else:
                            transfer.check_vectors(rows, dim, table)
                        out = []
                        for row in rows:
                            if row[0] not in new_ids:
                                raise ValueError(f"a row of {table} belongs to item {row[0]}, which the file lacks")
                            source = row[at]
                            if source and not source.startswith("imported:"):
                                source = "imported:" + source
                            out.append((new_ids[row[0]], *row[1:at], source, *row[at + 1:]))
                        self.db.conn.executemany(insert, out)
                for table in present - {"items", *ITEM_TABLES}:  # verified, not imported (thresholds)
                    for rows in transfer.read_chunks(src, path, transfer.select(table, EXPORT_TABLES[table])):
                        digests[table].update(rows)
                if contents is not None:
                    for table, digest in digests.items():
                        if digest.entry() != contents["tables"][table]:
                            raise ValueError(f"the rows of {table} do not match the export manifest's sha256 "
                                             f"(damaged or edited since the export)")
        except ValueError as e:
            raise GalleryError(f"{path}: {e}; nothing imported") from None
        return {"items": counts["items"], "embeddings": counts.get("embeddings", 0)}

    # -- lifecycle -------------------------------------------------------------
    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
