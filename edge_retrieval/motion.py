"""The motion gate and the region of interest.

The gate compares a small grey thumbnail of each frame with the thumbnail of the last frame
that was *embedded*: slow drifts add up until they count, and a scene that stays as it was
costs one resize and one subtraction instead of a model invocation.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def crop_roi(image: np.ndarray, roi) -> np.ndarray:
    """The part of `image` a RoiConfig (fractions x, y, width, height) selects; the image if roi is None."""
    if roi is None:
        return image
    h, w = image.shape[:2]
    x0, y0 = int(round(roi.x * w)), int(round(roi.y * h))
    x1, y1 = min(w, x0 + max(1, int(round(roi.width * w)))), min(h, y0 + max(1, int(round(roi.height * h))))
    return image[y0:y1, x0:x1]


def thumbnail(image: np.ndarray, width: int) -> np.ndarray:
    """A grey, slightly blurred thumbnail `width` pixels wide (aspect kept), int16 for subtraction.

    Each thumbnail pixel averages a 4×4 sample of its area (nearest-neighbour sampling to 4× the
    size, then an area resize): nearly the noise averaging of a full area resize at a tenth of its
    cost."""
    h, w = image.shape[:2]
    height = max(1, round(h * width / w))
    if w > 4 * width and h > 4 * height:
        image = cv2.resize(image, (4 * width, 4 * height), interpolation=cv2.INTER_NEAREST)
    small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    if small.ndim == 3:
        small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    return cv2.GaussianBlur(small, (3, 3), 0).astype(np.int16)


@dataclass(frozen=True)
class Motion:
    """How much of the scene changed since the last embedded frame."""

    changed: bool  # embed this frame
    fraction: float  # of the thumbnail's pixels that changed, 0..1
    box: tuple[float, float, float, float] | None  # x, y, w, h of the change, fractions of the image
    reason: str  # "first", "motion", "still", "refresh", "off"


class MotionGate:
    """Decides, frame by frame, whether the scene changed enough to run the model again."""

    def __init__(
        self,
        *,
        enabled: bool = True,
        width: int = 64,
        pixel_threshold: int = 12,
        min_changed: float = 0.02,
        refresh: float = 10.0,
    ):
        self.enabled, self.width = enabled, width
        self.pixel_threshold, self.min_changed, self.refresh = pixel_threshold, min_changed, refresh
        self._reference: np.ndarray | None = None
        self._reference_time = 0.0

    @classmethod
    def from_config(cls, config) -> "MotionGate":
        return cls(
            enabled=config.enabled,
            width=config.width,
            pixel_threshold=config.pixel_threshold,
            min_changed=config.min_changed,
            refresh=config.refresh,
        )

    def check(self, image: np.ndarray, t: float) -> Motion:
        """Compare `image` (taken at time t, seconds) with the reference; a changed frame becomes
        the new reference (call `reset` to force the next frame through)."""
        if not self.enabled:
            return Motion(True, 1.0, None, "off")
        thumb = thumbnail(image, self.width)
        ref = self._reference
        if ref is None or ref.shape != thumb.shape:
            self._take(thumb, t)
            return Motion(True, 1.0, None, "first")
        mask = np.abs(thumb - ref) > self.pixel_threshold
        fraction = float(mask.mean())
        box = _box(mask) if fraction else None
        if fraction >= self.min_changed and fraction > 0:
            self._take(thumb, t)
            return Motion(True, fraction, box, "motion")
        if self.refresh and t - self._reference_time >= self.refresh:
            self._take(thumb, t)
            return Motion(True, fraction, box, "refresh")
        return Motion(False, fraction, box, "still")

    def _take(self, thumb: np.ndarray, t: float) -> None:
        self._reference, self._reference_time = thumb, t

    def reset(self) -> None:
        self._reference = None


def _box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    return (x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h)
