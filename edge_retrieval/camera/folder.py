"""A folder of images as a frame source (`FolderSource`): played in name order, or watched
for new files as a time-lapse camera writes them."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from .. import preprocess
from ..errors import BadImageError
from ..preprocess import IMAGE_SUFFIXES
from .base import FrameSource, Pacer, SourceEnded, SourceError
from .frame import Frame

log = logging.getLogger(__name__)

FOLDER_INTERVAL = 1.0  # media seconds between the images of a folder played without a target fps


def list_images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def read_image(path: Path) -> np.ndarray | None:
    """The image, or None when it is unreadable (a camera skips such a file)."""
    try:
        return preprocess.read_image(path)
    except BadImageError:
        return None


class FolderSource(FrameSource):
    """A folder of images as a slow camera.

    By default the images play in name order, one per 1/fps of media time (1 s apart without
    a target fps), and the source ends after the last one (or starts again with `loop`).
    With `watch` it is live: it waits for new image files and hands over the newest one
    (older unseen ones are dropped), as from a time-lapse camera writing into the folder.
    Unreadable files are logged and skipped (a file being written is retried once).
    Reading is done in `read` itself, so a None is always a wait (for a new file or for the
    next image's time), never a stall: `alive`.
    """

    alive = True

    def __init__(
        self,
        path: str,
        *,
        fps: float = 0.0,
        loop: bool = False,
        watch: bool = False,
        realtime: bool = False,
        name: str = "",
        poll: float = 0.2,
    ):
        self.path = Path(path)
        if not self.path.is_dir():
            raise SourceError(f"{path}: no such folder")
        self.name = name or str(path)
        self.live = watch
        self.loop, self.realtime, self.poll = loop, realtime, poll
        self.interval = 1.0 / fps if fps > 0 else FOLDER_INTERVAL
        self._pacer = Pacer(fps if watch else 0.0)
        self._files = list_images(self.path)
        if not self._files and not watch:
            raise SourceError(f"{path}: no images in the folder")
        self._pos = 0
        self._index = 0
        self._start: float | None = None
        self._seen: dict[str, float] = {} if not watch else {str(p): p.stat().st_mtime for p in self._files}
        self._retry: set[str] = set()

    def _next_played(self, timeout: float) -> Frame | None:
        if self._pos >= len(self._files):
            if not self.loop:
                raise SourceEnded(str(self.path))
            self._pos = 0
        t = self._index * self.interval
        if self.realtime:
            now = time.monotonic()
            if self._start is None:
                self._start = now - t
            wait = t - (now - self._start)
            if wait > timeout:
                time.sleep(timeout)
                return None
            if wait > 0:
                time.sleep(wait)
        path = self._files[self._pos]
        self._pos += 1
        self._index += 1
        image = read_image(path)
        if image is None:
            log.warning("%s: not a readable image, skipped", path)
            return None
        return Frame(image, t, self._index - 1)

    def _newest_unseen(self, now: float) -> Frame | None:
        fresh = []
        for p in list_images(self.path):
            try:
                mtime = p.stat().st_mtime
            except FileNotFoundError:
                continue
            if self._seen.get(str(p)) != mtime:
                fresh.append((mtime, str(p)))
        fresh.sort(reverse=True)
        for i, (_mtime, key) in enumerate(fresh):  # newest first; older unseen ones are dropped
            image = read_image(Path(key))
            if image is None and key not in self._retry:
                self._retry.add(key)  # maybe still being written: look again at the next poll
                continue
            self._retry.discard(key)
            for m, k in fresh[i:]:
                self._seen[k] = m
            if image is None:
                log.warning("%s: not a readable image, skipped", key)
                return None
            self._pacer.taken(now)
            self._index += 1
            return Frame(image, now, self._index - 1)
        return None

    def _next_watched(self, timeout: float) -> Frame | None:
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if self._pacer.due(now):
                frame = self._newest_unseen(now)
                if frame is not None:
                    return frame
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(self.poll, left))

    def read(self, timeout: float = 0.5) -> Frame | None:
        return self._next_watched(timeout) if self.live else self._next_played(timeout)

    def close(self) -> None:
        pass
