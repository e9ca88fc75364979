"""Feature maps → L2-normalized float32 descriptors."""

from __future__ import annotations

import numpy as np

EPS = 1e-6


def norms(x: np.ndarray) -> np.ndarray:
    """L2 norms along the last axis (kept), as np.linalg.norm gives them without its Python-level
    checks: a camera frame's descriptor is made right after the model's invoke, when each
    line of Python run costs cache misses."""
    return np.sqrt(np.add.reduce(x * x, axis=-1, keepdims=True))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(norms(x), EPS)


def gem(fmap: np.ndarray, p: float = 3.0, nonnegative: bool | None = None) -> np.ndarray:
    """Generalized-mean pooling of an (..., H, W, C) map over H, W → (..., C).

    `nonnegative`: whether the map is known to have no negative value (a quantized ReLU
    output, see `Embedder`); None looks at the map (a pass over it)."""
    x = np.asarray(fmap, np.float32)
    if nonnegative is None:
        nonnegative = bool(x.size) and x.min() >= 0
    if p == 3.0 and x.size and nonnegative:
        # the default, on a post-ReLU map: two multiplications instead of pow (≈ 4× faster), and
        # the clamp at EPS moved after the mean (np.maximum over the map costs as much as the
        # rest): the two differ by at most EPS³ in the mean, far below float32 resolution
        h, w, c = x.shape[-3:]
        flat = x.reshape(*x.shape[:-3], h * w, c)  # one reduction axis: ≈ 30 % faster than two
        cube = flat * flat
        cube *= flat
        mean = cube.sum(axis=-2)
        mean /= h * w
        return np.cbrt(np.maximum(mean, np.float32(EPS) ** 3))
    x = np.maximum(x, np.float32(EPS))
    if p == 1.0:
        return x.mean(axis=(-3, -2))
    if p == 3.0:
        return np.cbrt((x * x * x).mean(axis=(-3, -2)))
    return np.power(np.power(x, p).mean(axis=(-3, -2)), 1.0 / p)


def pool(fmap: np.ndarray, method: str, p: float = 3.0, nonnegative: bool | None = None) -> np.ndarray:
    """Pool a feature map with the model card's method ("gem" or "avg")."""
    if method == "avg":
        return np.asarray(fmap, np.float32).mean(axis=(-3, -2))
    return gem(fmap, p, nonnegative)
