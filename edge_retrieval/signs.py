"""The two-stage scan's first pass (`scan.topk(..., shortlist=...)`): sign bits per row and
their Hamming distances to the query, then the `shortlist` nearest rows for the exact int8 pass.

Built on scan.py's helpers (scratch buffers, row ranges, threads, BLAS held to one thread) and
read through the module, so its tunables stay scan.py's.
"""

from __future__ import annotations

import numpy as np

from . import scan

SIGN_BITS = 256  # sign bits per row for the two-stage first pass
SIGN_GROUP = 16  # bits per block of the block-diagonal random rotation
SIGN_SEED = 20240501  # the rotation is fixed: the same rows give the same bits
HAMMING_BYTES = 1 << 18  # sign words per block of the Hamming pass


class SignIndex:
    """SIGN_BITS sign bits per row: sign((x - mean) R) with R a fixed block-diagonal rotation.

    Stored per segment as (words, rows) uint64 so the Hamming pass runs over contiguous
    arrays. The mean is fitted once (from up to 65536 rows) and refitted while the
    matrix is still small and has grown 4×.
    """

    FIT_ROWS = 1 << 16

    def __init__(self, m: scan.CodeMatrix):
        d = m.dim
        self.bits = min(SIGN_BITS, -(-d // 64) * 64)
        self.words = self.bits // 64
        self.live = min(self.bits, 248)  # ≤ 255 bits can differ: uint8 distances
        self.groups = self.bits // SIGN_GROUP
        self.group_in = -(-d // self.groups)  # input dims per group (zero padded)
        rng = np.random.default_rng(SIGN_SEED)
        rot = np.empty((self.groups, self.group_in, SIGN_GROUP), np.float32)
        for g in range(self.groups):
            basis = np.linalg.qr(rng.standard_normal((self.group_in, max(self.group_in, SIGN_GROUP))))[0]
            rot[g] = (
                basis[:, :SIGN_GROUP]
                if basis.shape[1] >= SIGN_GROUP
                else np.pad(basis, ((0, 0), (0, SIGN_GROUP - basis.shape[1])))
            )
        self.rot = rot
        n = m.size
        sample = np.linspace(0, n - 1, min(n, self.FIT_ROWS)).astype(np.int64) if n else np.zeros(0, np.int64)
        if len(sample):
            x = m.rows(sample).astype(np.float32) * m._scales[sample, None]
            self.mean = x.mean(axis=0)
        else:
            self.mean = np.zeros(d, np.float32)
        self.fitted = n
        self.offset = self._project(self.mean[None])[0]  # (bits,)
        self.segments = [np.empty((self.words, len(seg)), np.uint64) for seg in m._segments]
        if n:
            threads = scan.THREADS if n >= scan.HAMMING_MIN_ROWS else 1
            work = scan._Chunks(0, n, threads * scan.CHUNKS_PER_THREAD, 64)
            with scan._blas_one_thread():
                scan._parallel(lambda _: [self.encode_range(m, *ab) for ab in work], threads)

    def stale(self, n: int) -> bool:
        return self.fitted < self.FIT_ROWS and n >= 4 * max(self.fitted, 64)

    def add_segment(self, rows: int) -> None:
        self.segments.append(np.empty((self.words, rows), np.uint64))

    def _project(self, x: np.ndarray) -> np.ndarray:
        """(r, d) float32 → (r, bits) float32 block-diagonal rotation."""
        r, d = x.shape
        pad = self.groups * self.group_in - d
        if pad:
            x = np.pad(x, ((0, 0), (0, pad)))
        y = np.matmul(x.reshape(r, self.groups, self.group_in).transpose(1, 0, 2), self.rot)
        return y.transpose(1, 0, 2).reshape(r, self.bits)

    def _pack(self, positive: np.ndarray) -> np.ndarray:
        """(r, bits) bool → (words, r) uint64; bits past `live` are 0 (distances fit a uint8)."""
        positive[:, self.live :] = False
        packed = np.packbits(positive, axis=1, bitorder="little")
        return np.ascontiguousarray(packed.view(np.uint64).T)

    def encode_range(self, m: scan.CodeMatrix, lo: int, hi: int) -> None:
        step = max(64, scan.BLOCK_BYTES // 2 // (4 * m.dim))
        for seg, a, b, g in m._pieces(lo, hi):
            words = self.segments[m._starts.index(g - a)]
            for s in range(a, b, step):
                e = min(s + step, b)
                x = scan._scratch("codes_f32", (e - s, m.dim), np.float32)
                np.copyto(x, seg[s:e], casting="unsafe")
                y = self._project(x)
                y *= m._scales[g - a + s : g - a + e, None]
                words[:, s:e] = self._pack(y > self.offset)

    def encode_queries(self, q: np.ndarray) -> np.ndarray:
        return self._pack(self._project(q - self.mean) > 0).T.copy()  # (q, words)

    def hamming(self, m: scan.CodeMatrix, qbits: np.ndarray, dist: np.ndarray, ranges) -> np.ndarray:
        """dist[lo:hi] = Hamming distances (uint8) to qbits over the ranges; their histogram (256,)."""
        rows = max(64, HAMMING_BYTES // (8 * self.words))
        x = scan._scratch("hamming_xor", (self.words, rows), np.uint64)
        c = scan._scratch("hamming_count", (self.words, rows), np.uint8)
        q = qbits[:, None]
        hist = np.zeros(256, np.int64)
        for lo, hi in ranges:
            for _seg, a, b, g in m._pieces(lo, hi):
                words = self.segments[m._starts.index(g - a)]
                for s in range(a, b, rows):
                    e = min(s + rows, b)
                    r = e - s
                    np.bitwise_xor(words[:, s:e], q, out=x[:, :r])
                    np.bitwise_count(x[:, :r], out=c[:, :r])
                    np.add.reduce(c[:, :r], axis=0, out=dist[g - a + s : g - a + e])
            hist += np.bincount(dist[lo:hi], minlength=256)
        return hist


def nearest(dist: np.ndarray, hist: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n smallest distances (ties at the cut: lower index first), ascending."""
    radius = int(np.searchsorted(np.cumsum(hist), n))
    inside = np.flatnonzero(dist <= radius)
    if len(inside) > n:
        at_edge = dist[inside] == radius
        extra = n - int(np.count_nonzero(~at_edge))
        keep = ~at_edge
        keep[np.flatnonzero(at_edge)[:extra]] = True
        inside = inside[keep]
    return inside
