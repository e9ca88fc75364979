"""Regional descriptors from one feature map: a global GeM descriptor plus GeM descriptors of
R-MAC-style grid regions (and of boxes given by the caller, e.g. the motion mask), all
PCA-whitened when the model card ships a whitening, and L2-normalized.

A frame then matches an item by its *best* region, so an item that fills a third of the
frame is compared with the part of the frame it fills, not with the whole scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np

from .descriptors import EPS, l2_normalize, norms
from .errors import ModelError


@dataclass(frozen=True)
class Regions:
    """Descriptors of one frame: row 0 is the whole frame, then the regions."""

    vectors: np.ndarray  # (n, dim) float32, unit norm
    boxes: np.ndarray  # (n, 4) float32 x0, y0, x1, y1 as fractions of the frame (row 0 = 0, 0, 1, 1)

    def __len__(self) -> int:
        return len(self.vectors)


def grid_boxes(height: int, width: int, levels: int = 3, overlap: float = 0.4) -> np.ndarray:
    """R-MAC grid on an H×W feature map: the whole map, then at level l = 1..levels square
    regions of side 2·min(H, W)/(l + 1) cells, spread evenly with about `overlap` overlap.
    Returns (n, 4) integer cell boxes y0, x0, y1, x1 (end exclusive), duplicates removed."""
    boxes = [(0, 0, height, width)]
    short = min(height, width)
    for level in range(1, levels + 1):
        side = max(1, int(round(2 * short / (level + 1))))
        if side >= short and level > 1:
            continue
        step = max(1.0, side * (1 - overlap))
        for y0 in _starts(height, side, step):
            for x0 in _starts(width, side, step):
                boxes.append((y0, x0, min(height, y0 + side), min(width, x0 + side)))
    return np.array(list(dict.fromkeys(boxes)), np.int32)


def _starts(length: int, side: int, step: float) -> list[int]:
    if side >= length:
        return [0]
    n = int(math.ceil((length - side) / step)) + 1
    return sorted({int(round(i * (length - side) / (n - 1))) for i in range(n)})


def cells_for(box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
    """A box in frame fractions (x0, y0, x1, y1) → the feature-map cells covering it (y0, x0, y1, x1)."""
    x0, y0, x1, y1 = box
    cy0, cx0 = int(np.floor(y0 * height)), int(np.floor(x0 * width))
    cy1, cx1 = int(np.ceil(y1 * height)), int(np.ceil(x1 * width))
    cy0, cx0 = min(max(cy0, 0), height - 1), min(max(cx0, 0), width - 1)
    return cy0, cx0, max(cy1, cy0 + 1), max(cx1, cx0 + 1)


def gem_boxes(fmap: np.ndarray, boxes: np.ndarray, p: float = 3.0) -> np.ndarray:
    """GeM of every cell box (y0, x0, y1, x1) of an (H, W, C) map, through one integral image."""
    x = np.power(np.maximum(np.asarray(fmap, np.float32), EPS), p)
    h, w, c = x.shape
    integral = np.zeros((h + 1, w + 1, c), np.float32)
    integral[1:, 1:] = x.cumsum(0).cumsum(1)
    y0, x0, y1, x1 = (boxes[:, i] for i in range(4))
    sums = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    area = ((y1 - y0) * (x1 - x0)).astype(np.float32)[:, None]
    return np.power(np.maximum(sums / area, EPS), 1.0 / p)


@dataclass(frozen=True)
class Whitening:
    """Learned PCA-whitening: x → l2(proj · (l2(x) − mean)); proj already holds 1/√eigenvalue."""

    mean: np.ndarray  # (C,) float32
    proj: np.ndarray  # (d, C) float32

    @property
    def dim(self) -> int:
        return self.proj.shape[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # (x/|x| − mean)·projᵀ = (x·projᵀ)/|x| − mean·projᵀ: one product, the C-dim vector touched once
        x = np.asarray(x, np.float32)
        norm = np.maximum(norms(x), EPS)
        return l2_normalize((x @ self.proj.T) / norm - self._projected_mean)

    @cached_property
    def _projected_mean(self) -> np.ndarray:
        return (self.mean @ self.proj.T).astype(np.float32)

    @classmethod
    def learn(cls, vectors: np.ndarray, dim: int, shrinkage: float = 0.0) -> "Whitening":
        """PCA-whitening of unit vectors (rows), keeping `dim` components. `shrinkage` adds a
        fraction of the mean eigenvalue before the square root, so weak components are not
        blown up (0 = plain whitening)."""
        x = l2_normalize(np.asarray(vectors, np.float64))
        if dim > min(x.shape):
            raise ValueError(f"whitening: {len(x)} vectors of {x.shape[1]} dims cannot give {dim} components")
        mean = x.mean(0)
        cov = np.cov((x - mean).T)
        values, vecs = np.linalg.eigh(cov)
        order = np.argsort(values)[::-1][:dim]
        values, vecs = values[order], vecs[:, order]
        values = values + shrinkage * values.mean()
        proj = (vecs / np.sqrt(np.maximum(values, 1e-12))).T
        return cls(mean.astype(np.float32), proj.astype(np.float32))

    def save(self, path: str | Path) -> None:
        np.savez(path, mean=self.mean, proj=self.proj.astype(np.float16))

    @classmethod
    def load(cls, path: str | Path) -> "Whitening":
        try:
            with np.load(path) as data:
                return cls(data["mean"].astype(np.float32), data["proj"].astype(np.float32))
        except (OSError, KeyError, ValueError) as e:
            raise ModelError(f"{path}: not a whitening file ({e})") from None


def describe(
    fmap: np.ndarray,
    p: float = 3.0,
    levels: int = 3,
    whitening: Whitening | None = None,
    extra: Sequence[Sequence[float]] = (),
) -> Regions:
    """An (H, W, C) feature map → the whole-frame descriptor, the grid regions' and those of
    `extra` boxes (frame fractions x0, y0, x1, y1), whitened if given, unit norm."""
    h, w = fmap.shape[:2]
    cells = grid_boxes(h, w, levels) if levels > 0 else np.array([(0, 0, h, w)], np.int32)
    if len(extra):
        cells = np.concatenate([cells, np.array([cells_for(b, h, w) for b in extra], np.int32)])
    vectors = gem_boxes(fmap, cells, p)
    vectors = whitening(vectors) if whitening is not None else l2_normalize(vectors)
    fractions = cells[:, [1, 0, 3, 2]].astype(np.float32) / np.array([w, h, w, h], np.float32)
    return Regions(vectors.astype(np.float32), fractions)


def dense_boxes(height: int, width: int, min_fraction: float = 0.3) -> np.ndarray:
    """Every cell box whose sides are at least `min_fraction` of the map's (y0, x0, y1, x1)."""
    hs = range(max(1, int(math.ceil(min_fraction * height))), height + 1)
    ws = range(max(1, int(math.ceil(min_fraction * width))), width + 1)
    boxes = [(0, 0, height, width)]
    for bh in hs:
        for bw in ws:
            for y0 in range(0, height - bh + 1):
                for x0 in range(0, width - bw + 1):
                    boxes.append((y0, x0, y0 + bh, x0 + bw))
    return np.array(list(dict.fromkeys(boxes)), np.int32)
