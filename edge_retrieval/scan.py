"""Top-k over an int8 code matrix: score = (codes · query) × scale, best first.

The scan is the part of the system that grows with the gallery, so it is written to
stay as close to the memory-bandwidth limit as plain NumPy allows:

* rows are scanned in blocks: each block of int8 codes is cast to float32 into a
  per-thread scratch buffer (it stays in cache) and multiplied by the queries with BLAS
  (`block @ q.T`), limited to one BLAS thread;
* Python threads take row ranges one at a time from a shared list (the cast and BLAS
  release the GIL; a thread slowed by another process simply takes fewer ranges);
* a running threshold per query keeps only the rows that can still enter the top-k,
  so selecting from a million scores costs a comparison, not an `argpartition`;
* the matrix lives in fixed segments: appending never copies the codes already held;
* a small matrix (n·d ≤ `FLOAT_CACHE_CODES`) keeps a float32 copy and skips the cast.

The floor of this design is NumPy's int8 → float32 cast (≈ 0.1 ns a code and core, no
AVX-512 loop) plus BLAS reading the float32 block back (≈ 0.06 ns): ≈ 45 ms a core for
1M × 256, so one query reaches about a third of the bandwidth limit on two cores, while
a batch of queries shares the cast and runs at or beyond it (`benchmarks/README.md`).

Ties (equal float32 scores) go to the lower row. Scores agree with a float32
`codes @ q * scale` reference to float32 rounding. Not thread-safe for an append during
a search: the caller serializes them.

Two-stage mode (`topk(..., shortlist=...)`, signs.py) for large galleries: a first pass over 256
sign bits per row (centred, randomly rotated: Hamming distance by `np.bitwise_count`),
then the exact int8 scores of the `shortlist` nearest rows. It is approximate: measure
its recall (`benchmarks/scan.py` does) before relying on it.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .signs import SignIndex

BLOCK_BYTES = 1 << 22  # float32 scratch per thread and block (L2 + a share of L3)
SCORE_BYTES = 1 << 20  # scores buffered per thread before threshold selection
SEGMENT_ROWS = 1 << 16  # rows per storage segment allocated by `append`
PARALLEL_MIN_CODES = 1 << 23  # below n·d = 8M codes (≈ 1 ms) a scan runs in the calling thread:
# handing work to a pool thread costs ≈ 50 µs here
BLAS_SMALL = 8192  # OpenBLAS threads a product above 9216 elements: limit it above this
FLOAT_CACHE_CODES = 1 << 22  # up to n·d = 4M codes (16 MB) the matrix keeps a float32 copy
TINY_CODES = 1 << 14  # up to n·d = 16k codes (64 rows of 256) a full sort beats the kernel's bookkeeping
THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

SHORTLIST_FRACTION = 1 / 500  # default shortlist: 0.2 % of the rows ...
SHORTLIST_MIN = 1000  # ... but at least this many (and at least 16·k)
TWO_STAGE_MIN_ROWS = 1 << 15  # "auto" scans smaller matrices exactly (it is as fast, and exact)
HAMMING_MIN_ROWS = 1 << 18  # below this many rows the Hamming pass runs in one thread
CHUNKS_PER_THREAD = 8  # row ranges per thread, taken one at a time (load balance) ...
CHUNK_MIN_CODES = 1 << 20  # ... of at least this many codes each


def default_shortlist(n: int, k: int) -> int:
    """Rows rescored exactly by the two-stage mode when `shortlist="auto"`."""
    return max(SHORTLIST_MIN, 16 * k, math.ceil(n * SHORTLIST_FRACTION))


class CodeMatrix:
    """A growable (n, d) int8 matrix with per-row scales and int64 row keys.

    `append` fills fixed segments (the first one holds `capacity` rows), so a new row is
    searchable at once and nothing already stored is copied; `scales` and `keys` are
    contiguous (capacity-doubling; `reserve` makes room ahead). `codes` is a view while
    the rows fit one segment and a copy after that: search with `topk`, fetch rows with
    `rows`. Codes may also be uint8 (`dtype`), e.g. for post-ReLU vectors.
    """

    def __init__(self, dim: int, capacity: int = 1024, dtype=np.int8):
        if dim < 1:
            raise ValueError(f"dim must be positive, not {dim}")
        self.dim = int(dim)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.int8), np.dtype(np.uint8)):
            raise ValueError(f"codes must be int8 or uint8, not {self.dtype}")
        capacity = max(int(capacity), 1)
        self._segments: list[np.ndarray] = [np.empty((capacity, self.dim), self.dtype)]
        self._starts: list[int] = [0]
        self._scales = np.empty(capacity, np.float32)
        self._keys = np.empty(capacity, np.int64)
        self.size = 0
        self._signs: SignIndex | None = None
        self._f32: np.ndarray | None = None  # float32 copy of the rows of a small matrix

    @classmethod
    def wrap(cls, codes: np.ndarray, scales: np.ndarray, keys: np.ndarray | None = None) -> CodeMatrix:
        """A matrix over existing arrays, without copying them (keys default to 0..n-1)."""
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.dtype not in (np.int8, np.uint8):
            raise ValueError(f"codes must be a 2-D int8 or uint8 array, not {codes.dtype} {codes.shape}")
        self = cls.__new__(cls)
        self.dim, self.dtype, self.size = codes.shape[1], codes.dtype, len(codes)
        self._segments, self._starts = [np.ascontiguousarray(codes)], [0]
        self._scales = np.ascontiguousarray(scales, np.float32).reshape(-1)
        self._keys = np.arange(len(codes), dtype=np.int64) if keys is None else np.asarray(keys, np.int64)
        if len(self._scales) != len(codes) or len(self._keys) != len(codes):
            raise ValueError(f"{len(codes)} rows but {len(self._scales)} scales and {len(self._keys)} keys")
        self._signs = None
        self._f32 = None
        return self

    # -- storage ------------------------------------------------------------------
    @property
    def codes(self) -> np.ndarray:
        if len(self._segments) == 1:
            return self._segments[0][: self.size]
        return np.concatenate(
            [seg[: max(0, min(len(seg), self.size - s))] for seg, s in zip(self._segments, self._starts)]
        )

    @property
    def scales(self) -> np.ndarray:
        return self._scales[: self.size]

    @property
    def keys(self) -> np.ndarray:
        return self._keys[: self.size]

    def __len__(self) -> int:
        return self.size

    def append(self, codes: np.ndarray, scales: np.ndarray, keys: np.ndarray) -> None:
        codes = np.asarray(codes)
        if codes.ndim == 1:
            codes = codes[None]
        n = len(codes)
        scales = np.asarray(scales, np.float32).reshape(-1)
        keys = np.asarray(keys, np.int64).reshape(-1)
        if codes.shape[1:] != (self.dim,) or len(scales) != n or len(keys) != n:
            raise ValueError(
                f"append needs (n, {self.dim}) codes, n scales and n keys; "
                f"got {codes.shape}, {scales.shape}, {keys.shape}"
            )
        if codes.dtype != self.dtype:
            if (
                codes.dtype.kind not in "iu"
                or n
                and (codes.min() < np.iinfo(self.dtype).min or codes.max() > np.iinfo(self.dtype).max)
            ):
                raise ValueError(f"codes of type {codes.dtype} do not fit {self.dtype}")
            codes = codes.astype(self.dtype)
        if n == 0:
            return
        start = self.size
        need = start + n
        if need > len(self._scales):
            self.reserve(max(need, 2 * len(self._scales)))
        self._scales[start:need] = scales
        self._keys[start:need] = keys
        done = 0
        while done < n:
            seg, s0 = self._segments[-1], self._starts[-1]
            free = s0 + len(seg) - (start + done)
            if free == 0:
                self._segments.append(np.empty((max(SEGMENT_ROWS, n - done), self.dim), self.dtype))
                self._starts.append(start + done)
                if self._signs is not None:
                    self._signs.add_segment(len(self._segments[-1]))
                continue
            m = min(free, n - done)
            off = start + done - s0
            seg[off : off + m] = codes[done : done + m]
            done += m
        self.size = need
        if self._f32 is not None:
            self._cache_floats()
        if self._signs is not None:
            with _blas_one_thread():
                self._signs.encode_range(self, start, need)

    def _cache_floats(self) -> None:
        """Keep (or drop) the float32 copy: a small matrix is scanned from it, with no cast.

        While the copy fits the caches (n·d ≤ FLOAT_CACHE_CODES), BLAS reading it beats
        converting the codes on every search; a larger one would only cost memory.
        """
        if self.size * self.dim > FLOAT_CACHE_CODES:
            self._f32 = None
            return
        f32 = self._f32
        done = 0 if f32 is None else self._f32_rows
        if f32 is None or len(f32) < self.size:
            new = np.empty(
                (min(max(2 * self.size, 64), max(FLOAT_CACHE_CODES // self.dim, self.size)), self.dim), np.float32
            )
            if done:
                new[:done] = f32[:done]
            self._f32 = f32 = new
        for seg, a, b, g in self._pieces(done, self.size):
            np.copyto(f32[g : g + b - a], seg[a:b], casting="unsafe")
        self._f32_rows = self.size

    def reserve(self, rows: int) -> None:
        """Room for `rows` scales and keys, so appends up to there copy nothing at all."""
        if rows > len(self._scales):
            for name in ("_scales", "_keys"):
                old = getattr(self, name)
                new = np.empty(rows, old.dtype)
                new[: self.size] = old[: self.size]
                setattr(self, name, new)

    def remove(self, keys) -> int:
        """Drop every row whose key is in `keys` (order kept); returns how many went. O(n)."""
        keep = ~np.isin(self.keys, np.asarray(keys, np.int64))
        removed = int(self.size - keep.sum())
        if removed:
            idx = np.flatnonzero(keep)
            codes, scales, ks = self.rows(idx), self.scales[idx], self.keys[idx]
            signs = self._signs is not None
            self.__init__(self.dim, max(len(idx), 1), self.dtype)  # (drops the float copy too)
            self.append(codes, scales, ks)
            if signs:
                self.enable_two_stage()
        return removed

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Codes of the rows `idx` (any order), as a new (len(idx), d) array."""
        idx = np.asarray(idx, np.int64).reshape(-1)
        if len(self._segments) == 1:
            return self._segments[0].take(idx, axis=0)
        out = np.empty((len(idx), self.dim), self.dtype)
        seg_of = np.searchsorted(self._starts, idx, side="right") - 1
        for s in np.unique(seg_of):
            sel = seg_of == s
            out[sel] = self._segments[s].take(idx[sel] - self._starts[s], axis=0)
        return out

    def _pieces(self, lo: int, hi: int):
        """(segment array, first local row, last local row + 1, first global row) covering [lo, hi)."""
        for seg, s0 in zip(self._segments, self._starts):
            a, b = max(lo, s0), min(hi, s0 + len(seg))
            if a < b:
                yield seg, a - s0, b - s0, a

    # -- search -------------------------------------------------------------------
    def topk(
        self, queries: np.ndarray, k: int, *, threads: int | None = None, shortlist: int | str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(q, d) float32 queries → row indices (q, k') and scores (q, k'), best first; k' = min(k, n).

        `threads`: Python threads for the scan (default: all usable CPUs). `shortlist`:
        None for the exact scan; an int or "auto" (`default_shortlist`; exact below
        `TWO_STAGE_MIN_ROWS` rows) for the two-stage mode, which rescores that many rows
        chosen by sign-bit Hamming distance.
        """
        q = _as_queries(queries, self.dim)
        k = min(int(k), self.size)
        threads = THREADS if threads is None else max(1, int(threads))
        if k <= 0:
            return np.empty((len(q), 0), np.int64), np.empty((len(q), 0), np.float32)
        if shortlist == "auto" and self.size < TWO_STAGE_MIN_ROWS:
            shortlist = None
        if shortlist is not None:
            n_short = default_shortlist(self.size, k) if shortlist == "auto" else int(shortlist)
            if n_short < self.size:
                return self._two_stage(q, k, max(n_short, k), threads)
        return self._exact(q, k, 0, self.size, threads)

    def _exact(self, q: np.ndarray, k: int, lo: int, hi: int, threads: int):
        n = hi - lo
        if self._f32 is None and self.size * self.dim <= FLOAT_CACHE_CODES:
            self._cache_floats()
        if n * self.dim <= TINY_CODES:  # a watchlist: one product and a sort of n scores
            if self._f32 is not None:
                block = self._f32[lo:hi]
            else:
                block = np.concatenate([seg[a:b] for seg, a, b, _ in self._pieces(lo, hi)]).astype(np.float32)
            if len(q) == 1:  # a camera frame's query: the fewest calls (they run cold
                scores = block @ q[0]  # after the model's invoke, ≈ 10 µs each)
                scores *= self._scales[lo:hi]
                rows = (-scores).argsort(kind="stable")[:k]  # ties: the lower row
                return rows[None] + lo, scores[rows][None]
            scores = np.matmul(block, q.T)
            np.multiply(scores, self._scales[lo:hi, None], out=scores)
            rows = np.argsort(-scores.T, axis=1, kind="stable")[:, :k]  # ties: the lower row
            return rows + lo, np.take_along_axis(scores.T, rows, axis=1)
        if n * self.dim <= BLAS_SMALL:  # OpenBLAS runs these in one thread anyway
            best_s, best_i = _scan(self, q, k, [(lo, hi)])
        elif threads > 1 and n * self.dim >= PARALLEL_MIN_CODES and self._f32 is None:
            chunks = min(threads * CHUNKS_PER_THREAD, max(threads, n * self.dim // CHUNK_MIN_CODES))
            work = _Chunks(lo, hi, chunks, _block_rows(self.dim))
            with _blas_one_thread():
                parts = _parallel(lambda _: _scan(self, q, k, work), threads)
            best_s, best_i = _top_per_query(
                np.concatenate([p[0] for p in parts], axis=1), np.concatenate([p[1] for p in parts], axis=1), k
            )
        else:
            with _blas_one_thread():
                best_s, best_i = _scan(self, q, k, [(lo, hi)])
        return best_i, best_s

    # -- two-stage mode -------------------------------------------------------------
    def enable_two_stage(self) -> None:
        """Compute (and from now on maintain on append) the sign bits of the two-stage mode."""
        from .signs import SignIndex  # (signs.py builds on this module's helpers)

        if self._signs is None or self._signs.stale(self.size):
            self._signs = SignIndex(self)

    def _two_stage(self, q: np.ndarray, k: int, n_short: int, threads: int):
        self.enable_two_stage()
        with _blas_one_thread():
            return self._two_stage_locked(q, k, n_short, threads)

    def _two_stage_locked(self, q: np.ndarray, k: int, n_short: int, threads: int):
        from .signs import nearest

        signs = self._signs
        qbits = signs.encode_queries(q)
        out_i = np.empty((len(q), k), np.int64)
        out_s = np.empty((len(q), k), np.float32)
        dist = np.empty(self.size, np.uint8)
        threads = threads if self.size >= HAMMING_MIN_ROWS else 1
        for j in range(len(q)):
            work = _Chunks(0, self.size, threads * CHUNKS_PER_THREAD, 64)
            counts = _parallel(lambda _: signs.hamming(self, qbits[j], dist, work), threads)  # noqa: B023 (runs now)
            cand = nearest(dist, np.sum(counts, axis=0), n_short)
            sub = CodeMatrix.wrap(self.rows(cand), self._scales[cand])
            i, s = sub._exact(q[j : j + 1], k, 0, len(cand), 1)
            out_i[j], out_s[j] = cand[i[0]], s[0]
        return out_i, out_s


def topk(
    codes: np.ndarray,
    scales: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    threads: int | None = None,
    shortlist: int | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of `codes` (n, d) int8 with `scales` (n,) for each of `queries` (q, d); no copy."""
    return CodeMatrix.wrap(codes, scales).topk(queries, k, threads=threads, shortlist=shortlist)


# -- the exact kernel --------------------------------------------------------------------
def _as_queries(queries, dim: int) -> np.ndarray:
    q = np.asarray(queries, np.float32)
    q = q.reshape(1, -1) if q.ndim == 1 else np.atleast_2d(q)
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"queries must be (q, {dim}), not {np.shape(queries)}")
    # a finite sum says every value is finite (one C reduction, where isfinite().all() is three
    # calls; a frame's search runs cold after the invoke); only an overflowing sum looks closer
    if not math.isfinite(np.add.reduce(q, axis=None)) and not np.isfinite(q).all():
        raise ValueError("queries contain NaN or infinity")
    return np.ascontiguousarray(q)


def _block_rows(dim: int) -> int:
    return max(16, BLOCK_BYTES // (4 * dim))


_local = threading.local()


def _scratch(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A per-thread buffer reused across calls (grown when too small)."""
    buf = getattr(_local, name, None)
    size = math.prod(shape)
    if buf is None or buf.size < size or buf.dtype != dtype:
        buf = np.empty(max(size, 1), dtype)
        setattr(_local, name, buf)
    return buf[:size].reshape(shape)


def _scan(m: CodeMatrix, q: np.ndarray, k: int, ranges):
    """Exact top-k over the row ranges [(lo, hi), ...] for queries q.

    Returns ((q, k) scores, (q, k) rows), padded with -inf / -1 when fewer than k rows.
    """
    nq, dim = q.shape
    f32 = m._f32
    brows = _block_rows(dim)
    chunk = max(brows, SCORE_BYTES // (4 * nq) // brows * brows)
    if f32 is not None:  # no cast to do: blocks as large as the score buffer
        brows = chunk
    else:
        buf = _scratch("codes_f32", (brows, dim), np.float32)
    scores = _scratch("scores", (chunk, nq), np.float32)
    qt = q.T
    best_s = np.full((nq, k), -np.inf, np.float32)
    best_i = np.full((nq, k), -1, np.int64)
    scales = m._scales
    seen = 0  # rows selected so far: the first selections of a long
    for lo, hi in ranges:  # scan come early (they set the thresholds), later ones
        pending = 0  # batch more rows; rows in `scores` not yet selected:
        base = lo  # pending; global row of scores[0]: base
        early = seen or hi - lo > chunk
        for seg, a, b, g in m._pieces(lo, hi):
            for s in range(a, b, brows):
                e = min(s + brows, b)
                if pending + e - s > (min(chunk, max(brows, 2 * seen)) if early else chunk):
                    best_s, best_i = _select(scores[:pending], scales[base : base + pending], base, best_s, best_i, k)
                    base, seen, pending = base + pending, seen + pending, 0
                if f32 is None:
                    blk = buf[: e - s]
                    np.copyto(blk, seg[s:e], casting="unsafe")
                else:
                    blk = f32[g - a + s : g - a + e]
                np.matmul(blk, qt, out=scores[pending : pending + e - s])
                pending += e - s
        if pending:
            best_s, best_i = _select(scores[:pending], scales[base : base + pending], base, best_s, best_i, k)
            seen += pending
    return best_s, best_i


def _select(scores, scales, base, best_s, best_i, k):
    """Merge the rows of `scores` (r, q) that beat the running k-th best into (best_s, best_i)."""
    np.multiply(scores, scales[:, None], out=scores)
    hits = scores > best_s[:, -1]  # beat the k-th best so far (-inf until k rows
    n_hits = np.count_nonzero(hits)  # are seen); a later row equal to it loses the tie
    if n_hits == 0:
        return best_s, best_i
    r, nq = scores.shape
    if n_hits > 4 * nq * k and r > k:
        # the k-th best of every stride-th row is a lower bound of the k-th best of all
        # rows: cut there (≈ r / 256 rows stay) instead of partitioning all r scores
        sample = scores[:: max(1, r // (256 * k))]
        kth = np.partition(sample, len(sample) - k, axis=0)[len(sample) - k]
        np.logical_and(hits, scores >= kth, out=hits)
    ri, qi = np.divmod(np.flatnonzero(hits), nq)  # (2-D np.nonzero is 50x slower)
    cand_s = np.concatenate([best_s.ravel(), scores[ri, qi]])
    cand_i = np.concatenate([best_i.ravel(), ri + base])
    cand_q = np.concatenate([np.repeat(np.arange(nq), k), qi])
    return _top_k_grouped(cand_q, cand_s, cand_i, nq, k)


def _top_k_grouped(cand_q, cand_s, cand_i, nq, k):
    """Per group q: the k best (score desc, row asc); every group must have ≥ k entries."""
    order = np.lexsort((cand_i, -cand_s, cand_q))
    starts = np.searchsorted(cand_q[order], np.arange(nq))
    pick = order[starts[:, None] + np.arange(k)]
    return cand_s[pick], cand_i[pick]


def _top_per_query(best_s, best_i, k):
    """(q, m) candidates (e.g. one (q, k) per thread side by side) → the (q, k) best of each row."""
    nq, m = best_s.shape
    return _top_k_grouped(np.repeat(np.arange(nq), m), best_s.ravel(), best_i.ravel(), nq, k)


# -- threads ------------------------------------------------------------------------------
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


class _Chunks:
    """Row ranges that threads take one at a time: a thread slowed by another process on its
    core takes fewer, so two threads are never much slower than one on a busy machine."""

    def __init__(self, lo: int, hi: int, parts: int, align: int):
        step = max(align, -(-(hi - lo) // max(1, parts) // align) * align)
        self.ranges = [(a, min(a + step, hi)) for a in range(lo, hi, step)]
        self._next = itertools.count()  # next() is atomic under the GIL

    def __iter__(self):
        for i in self._next:
            if i >= len(self.ranges):
                return
            yield self.ranges[i]


def _parallel(fn, threads: int) -> list:
    """fn(0) in this thread and fn(1..threads-1) on the shared pool; their results."""
    global _pool
    if threads <= 1:
        return [fn(0)]
    with _pool_lock:
        if _pool is None or _pool._max_workers < threads - 1:
            _pool = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="scan")
        pool = _pool
    futures = [pool.submit(fn, i) for i in range(1, threads)]
    first = fn(0)
    return [first] + [f.result() for f in futures]


_blas_lock = threading.Lock()
_blas_depth = 0
_blas_saved: list[tuple[object, int]] = []
_blas_libs: list | None = None


@contextmanager
def _blas_one_thread():
    """BLAS limited to one thread while scans run (our threads split the rows instead).

    OpenBLAS's own threads fight our Python threads for the cores; under contention that
    costs several times the scan. The limit is process-wide while any scan runs.
    """
    global _blas_depth, _blas_libs
    with _blas_lock:
        if _blas_libs is None:
            from threadpoolctl import ThreadpoolController

            _blas_libs = ThreadpoolController().select(user_api="blas").lib_controllers
        if _blas_depth == 0:
            _blas_saved[:] = [(lib, lib.get_num_threads()) for lib in _blas_libs]
            for lib, n in _blas_saved:
                if n != 1:
                    lib.set_num_threads(1)
        _blas_depth += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_depth -= 1
            if _blas_depth == 0:
                for lib, n in _blas_saved:
                    if n != 1:
                        lib.set_num_threads(n)
