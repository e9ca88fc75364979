"""A captured `Frame`, the check of what a camera handed over (`inspect_image`, `DROPPED`,
`NOTED`) and the reduced decoding of Motion-JPEG packets that files and streams share."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import cv2
import numpy as np

from .. import preprocess

if TYPE_CHECKING:
    from .base import Capture


@dataclass(frozen=True)
class Frame:
    """One captured frame."""

    image: np.ndarray  # BGR uint8 (H, W, 3); decoded at a fraction of its size when `jpeg` is set
    time: float  # seconds: media time for files and folders, time.monotonic() for live sources
    index: int  # the source's own frame number (frames skipped or dropped still count)
    captured: float = field(default_factory=time.monotonic)  # monotonic time it was decoded
    jpeg: np.ndarray | None = None  # the frame as encoded (uint8), kept when `image` was decoded smaller

    def full(self) -> np.ndarray:
        """The frame at its full resolution: `image`, or `jpeg` decoded now (a snapshot's picture)."""
        if self.jpeg is None:
            return self.image
        image = cv2.imdecode(self.jpeg, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)  # as `image`
        return self.image if image is None else image

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) at full resolution: the frame's pixels, in which boxes are given."""
        if self.jpeg is not None:  # (checked before it was decoded)
            _, width, height = preprocess.image_size(self.jpeg.tobytes())
            return width, height
        return self.image.shape[1], self.image.shape[0]


# -- what a camera handed over ----------------------------------------------

MIN_SIDE = 16  # pixels: a frame smaller than this on a side cannot show an item
BLANK_LEVEL = 4  # a frame whose every pixel is ≤ this is all black (≥ 255 - this: all white)
# Frames dropped, by kind: what the log says (once per kind; the counts are in STATUS and stats).
DROPPED = {
    "none": "no image (None)",
    "not an array": "not an image array",
    "empty": "an empty image (no pixels)",
    "bad shape": "not an image (neither H×W nor H×W×channels)",
    "bad channels": "neither 1, 3 nor 4 channels",
    "bad dtype": "not 8-bit pixels",
    "too small": f"smaller than {MIN_SIDE} px on a side",
}
# Frames processed but worth a note (once per kind, counted too).
NOTED = {
    "grey": "grey frames, converted to BGR",
    "bgra": "4-channel (BGRA) frames, converted to BGR",
    "black": "all-black frames (lens covered, no light or no signal?); processed",
    "white": "all-white frames (over-exposed or no signal?); processed",
}


def inspect_image(image: Any) -> tuple[np.ndarray | None, str | None, str]:
    """(image to process, kind, detail) for what a source handed over as a frame's image.

    The image is BGR uint8 (H, W, 3), or None when the frame must be dropped; kind is None for
    a plain good frame, a key of `DROPPED` when dropped, a key of `NOTED` when processed
    anyway (grey and BGRA frames are converted; all-black and all-white ones are kept: a dark
    scene is a real observation, and it lets the votes of an item that was in view run out).
    `detail` names the shape and dtype for the log when kind is set ("" for a plain good frame:
    formatting them costs more than the check; measured: benchmarks/README.md, Camera sources).
    """
    if image is None:
        return None, "none", "None"
    if not isinstance(image, np.ndarray):
        return None, "not an array", type(image).__name__
    if image.size == 0:
        return None, "empty", _detail(image)
    if image.ndim not in (2, 3):
        return None, "bad shape", _detail(image)
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels not in (1, 3, 4):
        return None, "bad channels", _detail(image)
    if image.dtype != np.uint8:
        return None, "bad dtype", _detail(image)
    if min(image.shape[:2]) < MIN_SIDE:
        return None, "too small", _detail(image)
    kind, original = None, image
    if channels == 1:
        image, kind = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), "grey"
    elif channels == 4:
        image, kind = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR), "bgra"
    # every 8th row tells a blank frame: whole rows keep it SIMD-fast, an eighth of a frame fresh
    # from the decoder costs few cache misses, and one minMaxLoc reads them once for both ends
    low, high, _, _ = cv2.minMaxLoc(image[::8].reshape(-1, image.shape[1] * 3))
    if high <= BLANK_LEVEL:
        kind = kind or "black"
    elif low >= 255 - BLANK_LEVEL:
        kind = kind or "white"
    return image, kind, "" if kind is None else _detail(original)


def _detail(image: np.ndarray) -> str:
    return f"{image.dtype} {tuple(image.shape)}"


# -- Motion-JPEG packets ----------------------------------------------------

# As FFmpeg decodes a video's JPEGs: an EXIF orientation in a packet is not applied (so the
# header's size is the image's). 1: full size (a program's packets when no smaller size is asked)
_REDUCED_FLAGS = {
    f: flag | cv2.IMREAD_IGNORE_ORIENTATION
    for f, flag in (
        (1, cv2.IMREAD_COLOR),
        (2, cv2.IMREAD_REDUCED_COLOR_2),
        (4, cv2.IMREAD_REDUCED_COLOR_4),
        (8, cv2.IMREAD_REDUCED_COLOR_8),
    )
}


def _decode_reduced(jpeg: np.ndarray, factor: int, before: Callable[[], None] | None = None) -> np.ndarray | None:
    """A JPEG packet decoded at 1/factor; None when damaged. libjpeg decodes damaged data
    anyway (grey blocks, and a warning on stderr), so the markers are checked first: that
    refuses most damaged frames (measured: benchmarks/README.md, Camera sources). `before`
    is called between the two."""
    try:
        preprocess.image_size(jpeg.tobytes())
    except ValueError:
        return None
    if before is not None:
        before()
    return cv2.imdecode(jpeg, _REDUCED_FLAGS[factor])


def _reduction(cap: Capture, size: tuple[int, int]) -> int:
    """For a Motion-JPEG capture whose frames are at least twice `size` (width, height): the
    largest reduction (2, 4, 8) that keeps them at least `size`, with the capture switched to
    handing over its packets (the JPEGs). 1, the capture untouched, otherwise."""
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)) & 0xFFFFFFFF
    if fourcc.to_bytes(4, "little").decode("latin-1").upper() != "MJPG":
        return 1
    width, height = cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)
    factor = max((f for f in _REDUCED_FLAGS if width // f >= size[0] and height // f >= size[1]), default=1)
    if factor == 1 or not cap.set(cv2.CAP_PROP_FORMAT, -1):
        return 1
    return factor
