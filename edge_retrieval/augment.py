"""Enrolment that anticipates the camera: augmented views of an enrolment photo, and checks
that warn about a photo that will not work well (blurry, tiny, dark, or nearly identical to
another item's).

The views are generic camera changes — a crop, a perspective tilt, a light change, a little
blur — not a model of any one benchmark: the camera sees the item partly, from the side,
under other light.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MIN_SIDE = 96  # px: smaller enrolment photos carry too little detail
MIN_SHARPNESS = 30.0  # variance of the Laplacian at 320 px: below this a photo is blurry
MIN_BRIGHTNESS = 40.0  # mean grey level 0..255: below this a photo is dark
MAX_COSINE_OTHER = 0.95  # a photo this similar to another item's is nearly a duplicate


def views(image: np.ndarray, n: int, seed: int = 0) -> list[np.ndarray]:
    """`n` augmented views of a BGR image: tilted, cropped, re-lit, slightly blurred."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    out = []
    for i in range(n):
        # a view from the side: one edge shrinks, corners jitter, the frame crops 0–15 % off
        src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
        dst = src.copy()
        tilt = rng.uniform(0.0, 0.2)
        side = i % 4
        if side == 0:
            dst[[0, 3], 1] += [tilt * h / 2, -tilt * h / 2]
        elif side == 1:
            dst[[1, 2], 1] += [tilt * h / 2, -tilt * h / 2]
        elif side == 2:
            dst[[0, 1], 0] += [tilt * w / 2, -tilt * w / 2]
        else:
            dst[[3, 2], 0] += [tilt * w / 2, -tilt * w / 2]
        dst += rng.uniform(-0.04, 0.04, (4, 2)).astype(np.float32) * [w, h]
        H = cv2.getPerspectiveTransform(src, dst)
        view = cv2.warpPerspective(image, H, (w, h), borderMode=cv2.BORDER_REPLICATE)
        crop = rng.uniform(0.0, 0.15, 4)
        x0, y0 = int(crop[0] * w), int(crop[1] * h)
        x1, y1 = w - int(crop[2] * w), h - int(crop[3] * h)
        view = view[y0:y1, x0:x1]
        # light: per-channel gain and gamma; then a little blur
        img = np.clip(view.astype(np.float32) / 255 * rng.uniform(0.8, 1.2, 3), 0, 1) ** rng.uniform(0.7, 1.4)
        view = (img * 255).astype(np.uint8)
        if rng.random() < 0.5:
            view = cv2.GaussianBlur(view, (0, 0), rng.uniform(0.6, 1.6))
        out.append(view)
    return out


@dataclass(frozen=True)
class Quality:
    """Measurements of one enrolment photo and the warnings they raise."""

    width: int
    height: int
    sharpness: float
    brightness: float
    warnings: tuple[str, ...]


def check(image: np.ndarray) -> Quality:
    """Size, sharpness (variance of the Laplacian at a fixed 320 px scale) and brightness."""
    h, w = image.shape[:2]
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    scale = 320 / max(h, w)
    small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    sharpness = float(cv2.Laplacian(small, cv2.CV_64F).var())
    brightness = float(gray.mean())
    warnings = []
    if min(h, w) < MIN_SIDE:
        warnings.append(f"tiny ({w}×{h} px, want at least {MIN_SIDE} px on the short side)")
    if sharpness < MIN_SHARPNESS:
        warnings.append(f"blurry (sharpness {sharpness:.0f} < {MIN_SHARPNESS:.0f})")
    if brightness < MIN_BRIGHTNESS:
        warnings.append(f"dark (mean brightness {brightness:.0f} < {MIN_BRIGHTNESS:.0f})")
    return Quality(w, h, sharpness, brightness, tuple(warnings))
