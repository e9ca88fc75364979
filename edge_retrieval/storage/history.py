"""Search by example over the event history: every event's int8 descriptor, scanned in memory.

An event's descriptor (`Ranking.descriptor`: the region of the frame that looked most like an
item, else the whole frame) is stored as the gallery stores its vectors — int8 codes and one
scale per vector (`quantize.py`) — in `event_vectors`, keyed by event id (events.py's ladder,
step 2). `HistoryIndex` holds them in memory with the columns the filters need (time, kind,
label, source), as the gallery holds its matrix: loaded once, extended with the events recorded
since (any process), reloaded when `event_state.generation` says an event was deleted. A search
scores every row (≈ 5 ms for 100,000 on one core), masks the filtered-out ones and takes the best.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import EventError
from ..quantize import dequantize
from ..scan import _blas_one_thread  # a matrix-vector product needs no BLAS threads (they cost 5× under load)
from .database import Database

BLOCK_ROWS = 8192  # rows cast to float32 at a time: 8 MB of scratch for 256-d codes, not the whole matrix
_ROWS_SQL = (
    "SELECT v.event_id, v.scale, v.vector, e.time, e.kind, e.label, e.source "
    "FROM event_vectors v JOIN events e ON e.id = v.event_id WHERE v.event_id > ? ORDER BY v.event_id"
)


def photo_descriptor(embedder, image: np.ndarray) -> np.ndarray:
    """An uploaded photo's (or crop's) descriptor, comparable with the events': the whole image,
    described as an enrolled photo is. The events hold the region of their frame that matched
    an item, so a photo of the object (cropped to it, as for enrolment) compares like with like."""
    return np.asarray(embedder.embed(image), np.float32).reshape(-1)


@dataclass(frozen=True)
class Filters:
    """What `EventLog.query`, `similar` and `similar_to` narrow by (None: any). since ≤ time < until."""

    label: str | None = None
    kind: str | None = None
    source: str | None = None
    since: float | None = None
    until: float | None = None

    def sql(self) -> tuple[list[str], list]:
        """WHERE terms over `events` and their arguments."""
        terms, args = [], []
        for column, op, value in (
            ("label", "=", self.label),
            ("kind", "=", self.kind),
            ("source", "=", self.source),
            ("time", ">=", self.since),
            ("time", "<", self.until),
        ):
            if value is not None:
                terms.append(f"{column} {op} ?")
                args.append(value)
        return terms, args


class _Column:
    """A growable 1-D (or 2-D) array: appends double its capacity, never copying per row."""

    def __init__(self, dtype, width: int | None = None):
        self.shape = (width,) if width else ()
        self.data = np.empty((1024, *self.shape), dtype)
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        need = self.size + len(values)
        if need > len(self.data):
            grown = np.empty((max(need, 2 * len(self.data)), *self.shape), self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : need] = values
        self.size = need

    def __call__(self) -> np.ndarray:
        return self.data[: self.size]


class HistoryIndex:
    """The events' descriptors and filter columns of one database, in memory."""

    def __init__(self, db: Database):
        self.db, self.path = db, db.path
        self._lock = threading.Lock()  # a web server searches from several threads
        self._reset(dim=None)

    def _reset(self, dim: int | None) -> None:
        self.dim = dim
        self.generation = -1
        self.last_id = 0
        self.ids = _Column(np.int64)
        self.scales = _Column(np.float32)
        self.times = _Column(np.float64)
        self.matches = _Column(np.bool_)
        self.labels = _Column(np.int32)  # codes into self._names
        self.sources = _Column(np.int32)
        self.alive = _Column(np.bool_)  # False: deleted here since the last load
        self.codes = _Column(np.int8, dim) if dim else None
        self._names: dict[str | None, int] = {}

    def _codes(self, names: tuple) -> np.ndarray:
        """Labels or sources as int codes (None is a name like any other: no filter asks for it)."""
        known = self._names
        for name in set(names) - known.keys():
            known[name] = len(known)
        return np.array([known[x] for x in names], np.int32)

    # -- keeping up with the file ------------------------------------------------------
    def refresh(self) -> None:
        """Bring the index up to the file: appends since the last look, a reload after deletions."""
        conn = self.db.conn
        own = not conn.in_transaction
        if own:
            conn.execute("BEGIN")  # one snapshot: the generation and the rows agree
        try:
            generation = conn.execute("SELECT generation FROM event_state").fetchone()[0]
            if generation != self.generation:
                self._reset(self.dim)
            rows = conn.execute(_ROWS_SQL, [self.last_id]).fetchall()
        finally:
            if own:
                conn.execute("COMMIT")
        self.generation = generation
        if rows:
            self._append(rows)

    def _append(self, rows: list) -> None:
        n = len(rows)
        ids, scales, vectors, times, kinds, labels, sources = zip(*rows)  # columns: one pass in C
        blob = b"".join(vectors)
        dim = self.dim or len(vectors[0])
        if len(blob) != n * dim:
            raise EventError(f"{self.path}: event descriptors of mixed lengths (expected {dim} bytes each)")
        if self.codes is None:
            self.dim, self.codes = dim, _Column(np.int8, dim)
        self.codes.extend(np.frombuffer(blob, np.int8).reshape(n, dim))
        self.ids.extend(np.array(ids, np.int64))
        self.scales.extend(np.array(scales, np.float32))
        self.times.extend(np.array(times, np.float64))
        self.matches.extend(np.array(kinds, object) == "match")
        self.labels.extend(self._codes(labels))
        self.sources.extend(self._codes(sources))
        self.alive.extend(np.ones(n, np.bool_))
        self.last_id = int(ids[-1])

    def forget(self, event_id: int, generation_before: int, generation_after: int) -> None:
        """An event this process deleted: dropped from the index without a reload, unless another
        change came between (then the next search reloads)."""
        with self._lock:
            if self.generation != generation_before:
                return
            at = np.searchsorted(self.ids(), event_id)
            if at < self.ids.size and self.ids()[at] == event_id:
                self.alive()[at] = False
            self.generation = generation_after

    # -- searching ------------------------------------------------------------------
    def vector(self, event_id: int) -> np.ndarray | None:
        """An event's stored descriptor (dequantized), None if it has none."""
        row = self.db.execute("SELECT scale, vector FROM event_vectors WHERE event_id = ?", [event_id]).fetchone()
        if row is None:
            return None
        return dequantize(np.frombuffer(row[1], np.int8).reshape(1, -1), np.array([row[0]], np.float32))[0]

    def search(
        self, vector: np.ndarray, top_k: int, filters: Filters, exclude: int | None = None
    ) -> list[tuple[int, float]]:
        """(event id, cosine) of the top_k events closest to `vector` that pass `filters`, best first."""
        query = np.asarray(vector, np.float32).reshape(-1)
        if not np.isfinite(query).all():
            raise EventError("search by example: the descriptor holds NaN or infinity")
        if top_k < 1:
            raise EventError(f"top_k must be at least 1, not {top_k}")
        with self._lock:
            self.refresh()
            n = self.ids.size
            if not n:
                return []
            if len(query) != self.dim:
                raise EventError(
                    f"{self.path}: a {len(query)}-d descriptor cannot be compared with the events' {self.dim}-d ones"
                )
            keep = self._mask(filters, exclude)
            scores = self._scores(query)
            ids = self.ids()
        scores[~keep] = -np.inf
        k = min(top_k, int(keep.sum()))
        if k == 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.lexsort((-ids[top], -scores[top]))]  # best first; ties: the newer event
        return [(int(ids[i]), float(scores[i])) for i in top]

    def _mask(self, f: Filters, exclude: int | None) -> np.ndarray:
        keep = self.alive().copy()
        if f.kind is not None:
            keep &= self.matches() == (f.kind == "match")
        for column, name in ((self.labels, f.label), (self.sources, f.source)):
            if name is not None:
                code = self._names.get(name)
                keep &= column() == code if code is not None else False
        if f.since is not None:
            keep &= self.times() >= f.since
        if f.until is not None:
            keep &= self.times() < f.until
        if exclude is not None:
            keep &= self.ids() != exclude
        return keep

    def _scores(self, query: np.ndarray) -> np.ndarray:
        """Cosine of every row with the query: int8 codes cast block by block (cache-sized), times the scale."""
        codes, n = self.codes.data, self.ids.size
        out = np.empty(n, np.float32)
        scratch = np.empty((min(BLOCK_ROWS, n), self.dim), np.float32)
        with _blas_one_thread():
            for lo in range(0, n, BLOCK_ROWS):
                hi = min(n, lo + BLOCK_ROWS)
                block = scratch[: hi - lo]
                np.copyto(block, codes[lo:hi], casting="unsafe")
                out[lo:hi] = block @ query
        out *= self.scales()
        return out


def generation(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT generation FROM event_state").fetchone()[0]
