"""The built-in demo clip: the repo's real photos held up, one after another, in front of a
background made of the texture photos — with motion, scale and light changes and sensor noise.

The clip is rendered at run time (deterministic for a seed) and cached as an MJPEG `.avi`
in `~/.cache/edge-retrieval/` (or `$XDG_CACHE_HOME`); no video file is committed.
`DemoClip.truth(i)` says which item frame i shows, for measurements and tests.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np

from . import demo

log = logging.getLogger(__name__)

VERSION = 1  # bump when the rendering changes (the cache key)
WIDTH, HEIGHT, FPS = 640, 480, 10.0
# The order items appear in; "tissue" is shown but not enrolled by `enrolled()` (no alert expected).
SEQUENCE = ("cat", "astronaut", "coffee", "tissue", "rocket", "coins", "retina")
HELD_OUT = ("tissue",)
ENTER, HOLD, LEAVE, GAP = 1.0, 3.0, 1.0, 1.5  # seconds of each appearance
LEAD_IN = 2.0  # seconds of empty background first


@dataclass(frozen=True)
class Appearance:
    label: str
    start: float  # seconds
    side: int  # -1: enters from the left, +1: from the right
    gain: float  # its own light
    size: float  # height, fraction of the frame
    tilt: float  # degrees

    @property
    def end(self) -> float:
        return self.start + ENTER + HOLD + LEAVE


def enrolled() -> tuple[str, ...]:
    """The items the demo gallery holds (every demo item but the held-out ones)."""
    return tuple(name for name in demo.ITEMS if name not in HELD_OUT)


def _fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale to cover width×height and crop the middle."""
    h, w = image.shape[:2]
    s = max(width / w, height / h)
    img = cv2.resize(image, (math.ceil(w * s), math.ceil(h * s)), interpolation=cv2.INTER_LINEAR)
    y, x = (img.shape[0] - height) // 2, (img.shape[1] - width) // 2
    return img[y : y + height, x : x + width]


def background() -> np.ndarray:
    """A brick wall over a gravel floor, with a strip of grass between them."""
    wall_h, grass_h = int(HEIGHT * 0.62), int(HEIGHT * 0.08)
    wall = _fit(cv2.imread(str(demo.photo("brick"))), WIDTH, wall_h)
    grass = _fit(cv2.imread(str(demo.photo("grass"))), WIDTH, grass_h)
    floor = _fit(cv2.imread(str(demo.photo("gravel"))), WIDTH, HEIGHT - wall_h - grass_h)
    img = np.vstack([wall, grass, floor])
    # light falling off towards the floor
    ramp = np.linspace(1.05, 0.8, HEIGHT, dtype=np.float32)[:, None, None]
    return np.clip(img.astype(np.float32) * ramp, 0, 255).astype(np.uint8)


class DemoClip:
    """The clip's timeline and frames."""

    def __init__(self, seed: int = 0, sequence: tuple[str, ...] = SEQUENCE):
        rng = np.random.default_rng(seed)
        self.seed = seed
        t = LEAD_IN
        appearances = []
        for i, label in enumerate(sequence):
            appearances.append(
                Appearance(
                    label,
                    t,
                    side=-1 if i % 2 == 0 else 1,
                    gain=float(rng.uniform(0.8, 1.15)),
                    size=float(rng.uniform(0.6, 0.75)),
                    tilt=float(rng.uniform(-4, 4)),
                )
            )
            t = appearances[-1].end + GAP
        self.appearances = tuple(appearances)
        self.duration = t
        self.frames = int(round(self.duration * FPS))
        self._photos = {label: cv2.imread(str(demo.photo(label))) for label in set(sequence)}

    @cached_property
    def background(self) -> np.ndarray:
        return background()

    def _appearance(self, t: float) -> Appearance | None:
        return next((a for a in self.appearances if a.start <= t < a.end), None)

    def _pose(self, a: Appearance, t: float) -> tuple[float, float, float, float]:
        """(centre x, centre y, scale, angle) of the item at time t."""
        u = t - a.start
        rest_x = WIDTH / 2 + a.side * 30 * math.sin(u * 0.9)  # drifts while held
        off = WIDTH * 0.5 + 330  # fully outside
        if u < ENTER:
            x = rest_x + a.side * off * (1 - _ease(u / ENTER))
        elif u < ENTER + HOLD:
            x = rest_x
        else:
            x = rest_x - a.side * off * _ease((u - ENTER - HOLD) / LEAVE)
        y = HEIGHT * 0.47 + 12 * math.sin(u * 1.7)
        scale = 1.0 + 0.08 * math.sin(u * 1.3)  # moves towards and away from the camera
        angle = a.tilt + 2.0 * math.sin(u * 1.1)
        return x, y, scale, angle

    def frame(self, i: int) -> np.ndarray:
        """Frame i (BGR, HEIGHT×WIDTH), deterministic for a seed (and an OpenCV version)."""
        t = i / FPS
        img = self.background
        a = self._appearance(t)
        if a is not None:
            photo = self._photos[a.label]
            x, y, scale, angle = self._pose(a, t)
            ph, pw = photo.shape[:2]
            s = scale * a.size * HEIGHT / ph
            m = cv2.getRotationMatrix2D((pw / 2, ph / 2), angle, s)
            m[:, 2] += (x - pw / 2, y - ph / 2)
            warped = cv2.warpAffine(cv2.convertScaleAbs(photo, alpha=a.gain), m, (WIDTH, HEIGHT))
            card = np.full((ph, pw), 255, np.uint8)
            mask = cv2.warpAffine(card, m, (WIDTH, HEIGHT))
            m[:, 2] += (8, 10)  # a soft shadow below and to the right
            shadow = cv2.GaussianBlur(cv2.warpAffine(card, m, (WIDTH, HEIGHT)), (0, 0), 6)
            shade = cv2.cvtColor(cv2.subtract(255, cv2.convertScaleAbs(shadow, alpha=0.35)), cv2.COLOR_GRAY2BGR)
            img = cv2.multiply(img, shade, scale=1 / 255)
            cv2.copyTo(warped, mask, img)
        light = 1.0 + 0.12 * math.sin(2 * math.pi * t / 11.0)  # clouds passing
        noise = np.empty((HEIGHT, WIDTH, 3), np.int16)
        cv2.setRNGSeed(self.seed * 100_003 + i)
        cv2.randn(noise, 0, 3)
        return cv2.add(cv2.convertScaleAbs(img, alpha=light), noise, dtype=cv2.CV_8U)

    def visible(self, i: int) -> tuple[str | None, float]:
        """(label, fraction of the item inside the frame) at frame i."""
        t = i / FPS
        a = self._appearance(t)
        if a is None:
            return None, 0.0
        photo = self._photos[a.label]
        x, _, scale, _ = self._pose(a, t)
        w = photo.shape[1] * scale * a.size * HEIGHT / photo.shape[0]
        inside = max(0.0, min(WIDTH, x + w / 2) - max(0.0, x - w / 2))
        return a.label, inside / w

    def truth(self, i: int, min_visible: float = 0.6) -> str | None:
        """The label of the item frame i shows (at least `min_visible` of it inside), else None."""
        label, fraction = self.visible(i)
        return label if fraction >= min_visible else None

    def write(self, path: str | Path, stop=None) -> Path:
        """Render every frame into an MJPEG .avi, atomically (nothing is left if `stop` gets set)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.avi")
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (WIDTH, HEIGHT))
        if not writer.isOpened():
            raise OSError(f"{tmp}: OpenCV cannot write an MJPEG video here")
        try:
            for i in range(self.frames):
                if stop is not None and stop.is_set():
                    raise InterruptedError("stopped while rendering the demo clip")
                writer.write(self.frame(i))
        except BaseException:
            writer.release()
            tmp.unlink(missing_ok=True)
            raise
        writer.release()
        os.replace(tmp, path)
        return path


def _ease(u: float) -> float:
    u = min(1.0, max(0.0, u))
    return u * u * (3 - 2 * u)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edge-retrieval"


def clip_path(seed: int = 0, folder: str | Path | None = None, stop=None) -> Path:
    """The cached demo clip for `seed`, rendered first if it is not there yet."""
    name = f"demo-clip-v{VERSION}-seed{seed}.avi"
    for candidate in [Path(folder)] if folder else [cache_dir(), Path(tempfile.gettempdir()) / "edge-retrieval"]:
        path = candidate / name
        if path.is_file():
            return path
        log.info("rendering the demo clip into %s (first run only)", path)
        try:
            return DemoClip(seed).write(path, stop)
        except InterruptedError:
            raise
        except OSError:
            continue
    raise OSError(f"cannot write the demo clip {name} to {folder or cache_dir()} nor the temp folder")


def prepare(embedder, folder: str | Path, seed: int = 0, stop=None, with_clip: bool = True) -> tuple[Path | None, Path]:
    """(clip, gallery): the cached clip (None unless `with_clip`), and a gallery in `folder` holding
    the enrolled demo photos."""
    from .enroll import enroll
    from .storage.gallery import Gallery

    clip = clip_path(seed, stop=stop) if with_clip else None
    db = Path(folder) / "demo-gallery.db"
    with Gallery(db) as gallery:
        if not gallery.count()[0]:
            enroll(gallery, embedder, [(name, demo.photo(name)) for name in enrolled()])
    return clip, db
