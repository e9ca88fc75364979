"""The gallery: items, their int8 embeddings and the model they belong to, in one SQLite file.

Its schema is the ladder "gallery" (schema.py); the packed vector blocks have their own
(vectors.py). Every change is one transaction: an exception half-way leaves the file exactly
as it was. The search matrix is cached in memory and reloaded when the generation counter in
`meta` (bumped in the same transaction as every gallery change, by any process) moves.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .. import quantize
from ..errors import GalleryError, ModelMismatchError
from ..scan import CodeMatrix
from . import checks, transfer, vectors
from .database import SCHEMA_VERSION, Database, damaged, guarded, is_damage, sqlite_failure, write_transaction
from .schema import MIGRATIONS

UNIT_TOLERANCE = 1e-3  # |norm - 1| an added vector may have (cosine scores assume unit vectors)


def _checked_label(label: Any) -> str:
    """The label stripped; GalleryError unless an import would accept it too (`checks.check_label`)."""
    try:
        return checks.check_label(label)
    except ValueError as e:
        raise GalleryError(str(e)) from None


def _metadata_text(label: str, metadata: dict[str, Any]) -> str:
    """Metadata as stored: a JSON object without NaN or infinity, at most MAX_METADATA_BYTES."""
    try:
        text = json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise GalleryError(f"item {label!r}: metadata is not JSON ({e})") from None
    if len(text.encode("utf-8", "surrogatepass")) > checks.MAX_METADATA_BYTES:
        raise GalleryError(f"item {label!r}: metadata is larger than {checks.MAX_METADATA_BYTES} bytes")
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
    labels: dict[int, str] = field(default_factory=dict)  # of this generation, filled as searched
    checked: float = -math.inf  # time.monotonic() of the last generation check


class Gallery:
    """One SQLite gallery file. A read or write that finds the file damaged raises DamagedGalleryError.

    >>> with Gallery("gallery.db") as g:
    ...     g.add("cat", vectors, model_sha256=emb.sha256, model_name=emb.card.name)
    ...     g.search(queries, k=5).labels
    """

    def __init__(self, path: str | Path | Database, *, create: bool = True):
        """A gallery file by its path (opened here, closed by `close`), or an open `Database`
        (its owner closes it)."""
        self._own = not isinstance(path, Database)
        self.db = Database(path, create=create) if self._own else path
        self.path = self.db.path
        try:
            MIGRATIONS.apply(self.db)
            vectors.MIGRATIONS.apply(self.db)
        except BaseException:
            self.close()
            raise
        self._cache = _Cache()
        # seconds a search may go on with the gallery it last saw before asking SQLite whether it
        # changed (0: every search asks; the daemon sets REFRESH_INTERVAL: changes show within it)
        self.refresh_interval = 0.0

    # -- model binding --------------------------------------------------------
    @guarded  # damage read from the file: DamagedGalleryError
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
            self.db.execute(
                "INSERT INTO meta(key, value) VALUES ('model_sha256', ?), ('model_name', ?), ('dim', ?)",
                [sha256, name, str(dim)],
            )
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
            if is_damage(e):
                raise damaged(self.path, e) from None
            raise GalleryError(f"{self.path}: cannot write ({sqlite_failure(e, self.path)})") from None

    def _changed(self) -> None:
        vectors.pack(self.db.conn)  # a count query until a block's worth of rows is waiting
        self.db.execute(
            "INSERT INTO meta(key, value) VALUES ('generation', '1') ON CONFLICT(key) "
            "DO UPDATE SET value = CAST(value AS INTEGER) + 1"
        )

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
        norms = np.linalg.norm(vectors, axis=1)
        bad = np.flatnonzero(np.abs(norms - 1) > UNIT_TOLERANCE)
        if len(bad):  # scores are cosines only between unit vectors
            raise GalleryError(
                f"item {label!r}: vector {bad[0]} has length {norms[bad[0]]:.4g}, not 1 "
                f"(embeddings are stored unit length)"
            )
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

    @guarded
    def sources(self, item: int | str) -> list[str]:
        """Where an item's embeddings came from (file paths as enrolled), oldest first."""
        found = self.item(item)
        rows = self.db.execute("SELECT source FROM embeddings WHERE item_id = ? ORDER BY id", [found.id])
        return [r[0] for r in rows if r[0]]

    # -- reading ---------------------------------------------------------------
    def _item_from_row(self, row) -> Item:
        return Item(id=row[0], label=row[1], metadata=json.loads(row[2]), embeddings=row[3], created=row[4])

    _ITEM_SQL = (
        "SELECT i.id, i.label, i.metadata, (SELECT count(*) FROM embeddings e WHERE e.item_id = i.id), "
        "i.created FROM items i"
    )

    @guarded
    def items(self) -> list[Item]:
        return [self._item_from_row(r) for r in self.db.execute(self._ITEM_SQL + " ORDER BY i.id")]

    @guarded
    def item(self, item: int | str) -> Item:
        """One item by id (int) or label (str); GalleryError if there is none."""
        if isinstance(item, (int, np.integer)):
            row = self.db.execute(self._ITEM_SQL + " WHERE i.id = ?", [int(item)]).fetchone()
        else:
            row = self.db.execute(self._ITEM_SQL + " WHERE i.label = ?", [item]).fetchone()
        if row is None:
            raise GalleryError(f"{self.path}: no item {item!r}")
        return self._item_from_row(row)

    @guarded
    def count(self) -> tuple[int, int]:
        """(items, embeddings)."""
        return (
            self.db.execute("SELECT count(*) FROM items").fetchone()[0],
            self.db.execute("SELECT count(*) FROM embeddings").fetchone()[0],
        )

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
            "features": self.feature_photos(),  # enrolled photos with local features, by kind
        }

    # -- search ----------------------------------------------------------------
    def generation(self) -> int:
        """A counter bumped by every committed gallery change, from any process (not by events)."""
        return int(self._meta("generation") or 0)

    @guarded
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

    @guarded
    def labels(self, item_ids: np.ndarray) -> np.ndarray:
        """The labels of these item ids (any shape), read now: renames show at once."""
        ids = np.asarray(item_ids, np.int64)
        unique = [int(i) for i in np.unique(ids)]
        found: dict[int, str] = {}
        for start in range(0, len(unique), 900):  # SQLite's bound-parameter limit
            part = unique[start : start + 900]
            found.update(
                self.db.execute(
                    f"SELECT id, label FROM items WHERE id IN ({', '.join('?' * len(part))})", part
                ).fetchall()
            )
        out = np.empty(ids.shape, object)
        out.flat[:] = [found.get(int(i), "") for i in ids.flat]
        return out

    @guarded
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
    def add_features(
        self,
        item_id: int,
        kind: str,
        size: tuple[int, int],
        keypoints: np.ndarray,
        descriptors: np.ndarray,
        source: str = "",
    ) -> None:
        """Store one enrolled image's local features: (n, 2) float32 points in an image of
        `size` (width, height) and (n, bytes) uint8 descriptors — or, with no points, the image
        itself: its (height, width) uint8 grey pixels as `descriptors` (the dense verifier's)."""
        keypoints = np.ascontiguousarray(keypoints, "<f4").reshape(-1, 2)
        descriptors = np.ascontiguousarray(descriptors, np.uint8)
        image = not len(keypoints) and descriptors.shape == (int(size[1]), int(size[0])) and descriptors.size
        if len(keypoints) != len(descriptors) and not image:
            raise GalleryError(f"item {item_id}: {len(keypoints)} keypoints for {len(descriptors)} descriptors")
        with self.transaction():
            self.db.execute(
                "INSERT INTO features(item_id, kind, width, height, keypoints, descriptors, source, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    int(item_id),
                    kind,
                    int(size[0]),
                    int(size[1]),
                    keypoints.tobytes(),
                    descriptors.tobytes(),
                    str(source),
                    time.time(),
                ],
            )

    def features(self, item_id: int) -> list[tuple[str, tuple[int, int], np.ndarray, np.ndarray]]:
        """An item's stored local features: [(kind, (width, height), keypoints, descriptors)]."""
        return [f for _row, _item, f in self._features("WHERE item_id = ?", [int(item_id)])]

    def all_features(self) -> list[tuple[int, int, tuple[str, tuple[int, int], np.ndarray, np.ndarray]]]:
        """Every enrolled image's local features: [(row id, item_id, (kind, (width, height),
        keypoints, descriptors))], in enrolment order (a row id is never reused)."""
        return self._features("", [])

    @guarded
    def feature_photos(self) -> dict[str, int]:
        """How many enrolled photos have local features of each kind: {"orb": 12, "sift": 12}."""
        return dict(self.db.execute("SELECT kind, count(*) FROM features GROUP BY kind ORDER BY kind").fetchall())

    @guarded
    def lacking_features(self, kind: str, having: str) -> list[tuple[int, str, tuple[int, int]]]:
        """(item id, source, size) of the enrolled photos with `having` features (of that size)
        but none of `kind`, in enrolment order: what a gallery enrolled before `kind` lacks."""
        rows = self.db.execute(
            "SELECT item_id, source, width, height FROM features h WHERE kind = ? AND NOT EXISTS "
            "(SELECT 1 FROM features k WHERE k.kind = ? AND k.item_id = h.item_id AND k.source = h.source) "
            "GROUP BY item_id, source ORDER BY min(id)",
            [having, kind],
        )
        return [(item_id, source, (w, h)) for item_id, source, w, h in rows]

    @guarded
    def _features(self, where: str, params: list) -> list:
        out = []
        for row, item_id, kind, w, h, kp, desc in self.db.execute(
            f"SELECT id, item_id, kind, width, height, keypoints, descriptors FROM features {where} ORDER BY id", params
        ):
            points = np.frombuffer(kp, "<f4").reshape(-1, 2)
            descriptors = np.frombuffer(desc, np.uint8)
            if len(points):
                descriptors = descriptors.reshape(len(points), -1)
            elif len(descriptors) and len(descriptors) == w * h:  # an image (add_features)
                descriptors = descriptors.reshape(h, w)
            else:
                descriptors = descriptors.reshape(0, 32)
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
                [
                    (found.id, quantize.to_blob(c), float(sc), str(src), now)
                    for c, sc, src in zip(codes, scales, sources)
                ],
            )
        return found.id

    @guarded
    def negatives(self) -> tuple[np.ndarray, np.ndarray]:
        """(item ids (n,), float32 vectors (n, dim)) of every enrolled negative."""
        rows = self.db.execute("SELECT item_id, scale, vector FROM negatives ORDER BY id").fetchall()
        dim = self.dim or 0
        if not rows:
            return np.empty(0, np.int64), np.empty((0, dim), np.float32)
        codes = np.frombuffer(b"".join(r[2] for r in rows), np.int8).reshape(len(rows), -1)
        scales = np.array([r[1] for r in rows], np.float32)
        return np.array([r[0] for r in rows], np.int64), codes.astype(np.float32) * scales[:, None]

    def set_thresholds(
        self, threshold: float, per_item: dict[int, float] | None = None, report: dict[str, Any] | None = None
    ) -> None:
        """Replace the calibrated global threshold, the per-item ones and the calibration report."""
        now = time.time()
        with self.transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('threshold', ?), ('calibration', ?)",
                [repr(float(threshold)), json.dumps(report or {})],
            )
            self.db.execute("DELETE FROM thresholds")
            self.db.conn.executemany(
                "INSERT INTO thresholds(item_id, threshold, created) VALUES (?, ?, ?)",
                [(int(i), float(t), now) for i, t in (per_item or {}).items()],
            )

    @property
    def threshold(self) -> float | None:
        """The calibrated global threshold on the final score (None until `calibrate` ran)."""
        value = self._meta("threshold")
        return float(value) if value is not None else None

    def calibration(self) -> dict[str, Any]:
        return json.loads(self._meta("calibration") or "{}")

    @guarded
    def thresholds(self) -> dict[int, float]:
        """Calibrated per-item thresholds {item id: threshold} (items without one use the global)."""
        return dict(self.db.execute("SELECT item_id, threshold FROM thresholds").fetchall())

    @guarded
    def threshold_for(self, item_id: int) -> float | None:
        """The threshold that applies to an item: its own, else the global one, else None."""
        row = self.db.execute("SELECT threshold FROM thresholds WHERE item_id = ?", [int(item_id)]).fetchone()
        return float(row[0]) if row else self.threshold

    # -- export / import (transfer.py) ------------------------------------------
    def export(self, path: str | Path) -> dict[str, int]:
        """Write the gallery to one portable SQLite file with a manifest (`transfer.export`)."""
        return transfer.export(self, path)

    def import_from(self, path: str | Path, *, verify: bool = True) -> dict[str, int]:
        """Merge an exported gallery into this one, in one transaction (`transfer.import_into`)."""
        return transfer.import_into(self, path, verify=verify)

    # -- lifecycle -------------------------------------------------------------
    def close(self) -> None:
        if self._own:
            self.db.close()

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
