"""The built-in demo: the repo's own real photos, enrolled and then looked up as a camera would see them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .recognize import DEFAULT_PRESET, Ranking, open_recognizer

PHOTOS = Path(__file__).resolve().parent / "data" / "photos"
# Photos enrolled as items; the textures are never enrolled and serve as "unknown" scenes.
ITEMS = ("astronaut", "cat", "coffee", "rocket", "galaxies", "retina", "coins", "cameraman", "tissue")
UNKNOWN = ("brick", "grass", "gravel")


def photo(name: str) -> Path:
    return PHOTOS / f"{name}.jpg"


def camera_view(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible camera capture of `image`: crop, small rotation and tilt, light change, blur, JPEG."""
    h, w = image.shape[:2]
    crop = rng.uniform(0.75, 0.95)
    ch, cw = int(h * crop), int(w * crop)
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    img = image[y : y + ch, x : x + cw]
    src = np.float32([[0, 0], [cw, 0], [cw, ch], [0, ch]])
    jitter = rng.uniform(-0.06, 0.06, size=(4, 2)) * [cw, ch]
    warp = cv2.getPerspectiveTransform(src, (src + jitter).astype(np.float32))
    img = cv2.warpPerspective(img, warp, (cw, ch), borderMode=cv2.BORDER_REFLECT)
    gain, bias = rng.uniform(0.7, 1.3), rng.uniform(-25, 25)
    img = np.clip(img.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)
    img = cv2.GaussianBlur(img, (5, 5), rng.uniform(0.3, 1.2))
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 80))])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


# What a kiosk shows about each demo photo (from SOURCE.md): the built-in demo's item metadata.
DETAILS = {
    "astronaut": {"title": "Eileen Collins, astronaut", "credit": "NASA", "rights": "public domain"},
    "cat": {"title": "Chelsea the cat", "credit": "Stefan van der Walt", "rights": "CC0"},
    "coffee": {"title": "A cup of coffee", "credit": "Rachel Michetti", "rights": "CC0"},
    "rocket": {"title": "DSCOVR launch", "credit": "SpaceX", "rights": "public domain"},
    "galaxies": {"title": "Hubble Deep Field", "credit": "NASA", "rights": "public domain"},
    "retina": {"title": "A human retina", "credit": "Wikimedia Commons", "rights": "CC0"},
    "coins": {
        "title": "Greek coins from Pompeii",
        "credit": "Brooklyn Museum",
        "rights": "no known copyright restrictions",
    },
    "cameraman": {"title": "The cameraman", "credit": "Lav Varshney", "rights": "CC0"},
    "tissue": {
        "title": "Immunohistochemistry stain",
        "credit": "scikit-image sample data",
        "rights": "no known copyright restrictions",
    },
}


@dataclass(frozen=True)
class DemoLookup:
    name: str  # the photo shown
    truth: str  # its label, or "unknown" for a texture never enrolled
    ranking: Ranking
    ms: float  # recognize

    @property
    def answer(self) -> str:
        return self.ranking.label or "unknown"


def run(embedder, gallery, seed: int = 0, preset: str = DEFAULT_PRESET) -> list[DemoLookup]:
    """Enrol the built-in photos into `gallery`, then look up a simulated camera view of each
    and of the textures never enrolled, with the preset's recognizer (as `search` would)."""
    from .enroll import enroll

    rng = np.random.default_rng(seed)
    enroll(gallery, embedder, [(name, photo(name)) for name in ITEMS])
    recognizer = open_recognizer(embedder, gallery, preset)
    out = []
    try:
        for name in ITEMS + UNKNOWN:
            view = camera_view(cv2.imread(str(photo(name))), rng)
            start = time.perf_counter()
            ranking = recognizer.recognize(view)
            ms = 1000 * (time.perf_counter() - start)
            out.append(DemoLookup(name, name if name in ITEMS else "unknown", ranking, ms))
    finally:
        recognizer.close()
    return out
