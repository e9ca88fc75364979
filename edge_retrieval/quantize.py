"""float32 ⇄ int8 codes with one scale per vector (symmetric, zero point 0).

A vector x is stored as codes q = round(x / s) with s = max|x| / 127, so every
component comes back within s / 2: |x - q·s| ≤ s / 2 (`ROUNDTRIP_BOUND`).
Shared by the gallery, the scan and `tools/`.
"""

from __future__ import annotations

import numpy as np

QMAX = 127
ROUNDTRIP_BOUND = 0.5  # in units of the vector's scale


def quantize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) float → (n, d) int8 codes and (n,) float32 scales."""
    x = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    peak = np.abs(x).max(axis=1)
    scales = np.where(peak > 0, peak / QMAX, 1.0).astype(np.float32)
    codes = np.rint(x / scales[:, None]).clip(-QMAX, QMAX).astype(np.int8)
    return codes, scales


def dequantize(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """(n, d) int8 codes and (n,) scales → (n, d) float32."""
    return codes.astype(np.float32) * np.asarray(scales, np.float32)[:, None]


def to_blob(code: np.ndarray) -> bytes:
    """One int8 vector as little-endian bytes (int8 has no byte order)."""
    return np.ascontiguousarray(code, dtype=np.int8).tobytes()


def from_blob(blob: bytes, dim: int) -> np.ndarray:
    code = np.frombuffer(blob, dtype=np.int8)
    if code.size != dim:
        raise ValueError(f"vector has {code.size} components, expected {dim}")
    return code
