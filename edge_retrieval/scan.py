"""Exact top-k over an int8 code matrix (scores = codes · query × scale)."""
from __future__ import annotations

import numpy as np

CHUNK_ROWS = 16384


class CodeMatrix:
    """A growable (n, d) int8 matrix with per-row scales and int64 row keys."""

    def __init__(self, dim: int, capacity: int = 1024):
        self.dim = dim
        self._codes = np.empty((capacity, dim), np.int8)
        self._scales = np.empty(capacity, np.float32)
        self._keys = np.empty(capacity, np.int64)
        self.size = 0

    @property
    def codes(self) -> np.ndarray:
        return self._codes[: self.size]

    @property
    def scales(self) -> np.ndarray:
        return self._scales[: self.size]

    @property
    def keys(self) -> np.ndarray:
        return self._keys[: self.size]

    def append(self, codes: np.ndarray, scales: np.ndarray, keys: np.ndarray) -> None:
        n = len(codes)
        need = self.size + n
        if need > len(self._codes):
            cap = max(need, 2 * len(self._codes))
            for name in ("_codes", "_scales", "_keys"):
                old = getattr(self, name)
                new = np.empty((cap,) + old.shape[1:], old.dtype)
                new[: self.size] = old[: self.size]
                setattr(self, name, new)
        self._codes[self.size : need] = codes
        self._scales[self.size : need] = scales
        self._keys[self.size : need] = keys
        self.size = need

    def topk(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(q, d) float32 queries → row indices (q, k') and scores (q, k'), best first; k' = min(k, n)."""
        return topk(self.codes, self.scales, queries, k)


def topk(codes: np.ndarray, scales: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    q = np.atleast_2d(np.asarray(queries, np.float32))
    n = len(codes)
    k = min(k, n)
    if k <= 0:
        return np.empty((len(q), 0), np.int64), np.empty((len(q), 0), np.float32)
    best_i = np.empty((len(q), 0), np.int64)
    best_s = np.empty((len(q), 0), np.float32)
    for start in range(0, n, CHUNK_ROWS):
        block = codes[start : start + CHUNK_ROWS].astype(np.float32)
        s = (q @ block.T) * scales[start : start + CHUNK_ROWS]
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        best_i = np.concatenate([best_i, part + start], axis=1)
        best_s = np.concatenate([best_s, np.take_along_axis(s, part, axis=1)], axis=1)
        if best_i.shape[1] > k:
            keep = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
            best_i = np.take_along_axis(best_i, keep, axis=1)
            best_s = np.take_along_axis(best_s, keep, axis=1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_i, order, axis=1), np.take_along_axis(best_s, order, axis=1)
