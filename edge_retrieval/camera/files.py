"""A video file as a frame source (`FileSource`): every frame, or one per 1/fps of media time,
decoded ahead in a thread that yields to the model, Motion-JPEG at a reduced size."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any, Callable

import cv2
import numpy as np

from .base import Capture, FrameSource, Pacer, SourceEnded, open_capture
from .frame import Frame, _decode_reduced, _reduction

log = logging.getLogger(__name__)

FALLBACK_FPS = 25.0  # a file whose frame rate OpenCV cannot read
DAMAGED_GRABS = 100  # failed grabs in a row that end a file (fewer are damaged frames, skipped)
PREFETCH_FRAMES = 2  # frames a file's decoder thread keeps ready (it decodes only while the model is idle)


class FileSource(FrameSource):
    """A video file, frame by frame; at a target fps one frame per 1/fps of media time.

    The next frame is decoded in a thread while the current one is processed (`prefetch`),
    as a camera's grabber does, so decoding stays off the pipeline's critical path.
    `realtime` plays the file at its own speed as a camera would: frames whose time has
    passed while the pipeline was busy are dropped (no prefetch then).

    `decode_size` (width, height): the smallest image the reader needs, e.g. the model's
    input. Motion-JPEG frames are then decoded at 1/2, 1/4 or 1/8 of their size as long as
    the image stays at least that large (libjpeg scales while decoding, for a fraction of a
    full decode's time; measured: benchmarks/README.md, Camera sources); each frame keeps its
    JPEG for `Frame.full`. Other codecs decode at full size.

    `yield_to`: an event clear while the model runs (`Embedder.idle`). The decoder thread then
    starts no decode until it is set again, and keeps up to PREFETCH_FRAMES frames ready: it
    decodes on the core the pipeline's own steps leave idle instead of taking one from the
    interpreter's threads, whose every operation waits for the slowest of them.
    """

    live = False

    def __init__(
        self,
        path: str,
        *,
        fps: float = 0.0,
        loop: bool = False,
        realtime: bool = False,
        name: str = "",
        open_fn: Callable[[str], Capture] | None = None,
        prefetch: bool = True,
        decode_size: tuple[int, int] | None = None,
        yield_to: threading.Event | None = None,
    ):
        self.path = str(path)
        self._yield_to = yield_to
        self.name = name or self.path
        self.loop, self.realtime = loop, realtime
        self.prefetch = prefetch and not realtime
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self._open = open_fn or (lambda uri: open_capture(uri))
        self._cap = self._open(self.path)
        self._reduction = _reduction(self._cap, decode_size) if decode_size else 1  # decoded at 1/this
        media_fps = self._cap.get(cv2.CAP_PROP_FPS)
        if not (0 < media_fps < 1000):
            log.warning("%s: frame rate unknown, assuming %g fps", self.path, FALLBACK_FPS)
            media_fps = FALLBACK_FPS
        self.media_fps = float(media_fps)
        self._pacer = Pacer(fps)
        self._index = 0  # next frame number in the file
        self._offset = 0.0  # media time of the earlier loops
        self._base = 0  # frames in the earlier loops
        self._start: float | None = None  # monotonic time of media time 0 (realtime)
        self.frames_read = 0
        self.frames_skipped = 0
        self.frames_damaged = 0  # undecodable frames skipped (a damaged file)
        self._pass_decoded = self._pass_damaged = 0  # in this pass over the file

    @property
    def alive(self) -> bool:
        """In real time a None is a wait for the next frame's time; with the decoder thread a
        None means the decoder did not deliver in time (it may be stuck)."""
        return self.realtime

    def _media_time(self, index: int) -> float:
        return self._offset + index / self.media_fps

    def _rewind(self) -> None:
        if self._pass_damaged and not self._pass_decoded:
            log.warning("%s: no decodable frame in the whole file", self.path)
            raise SourceEnded(self.path)  # looping over it would only spin
        self._pass_decoded = self._pass_damaged = 0
        self._offset = self._media_time(self._index)
        self._base += self._index
        self._cap.release()
        self._cap = self._open(self.path)
        if self._reduction > 1:
            self._cap.set(cv2.CAP_PROP_FORMAT, -1)  # packets, as when opened
        self._index = 0

    def _grab(self) -> bool:
        """grab(), going on past damaged frames: FFmpeg fails one grab per undecodable packet
        and the next grab reads on, so only DAMAGED_GRABS failures in a row are the end
        (failures at the real end cost microseconds)."""
        for failures in range(DAMAGED_GRABS):
            if self._cap.grab():
                if failures:
                    if not self.frames_damaged:
                        log.warning(
                            "%s: damaged frame(s) at frame %d skipped (counted; the file plays on)",
                            self.path,
                            self._index,
                        )
                    self.frames_damaged += failures
                    self._pass_damaged += failures
                    self._index += failures  # each failed grab consumed one frame's packet
                return True
        return False

    def _advance(self, keep: bool) -> tuple[np.ndarray, np.ndarray | None] | None:
        """Grab the next frame; decode it only if kept: (image, its JPEG when decoded reduced),
        None when skipped or damaged. SourceEnded at the end."""
        for attempt in (0, 1):
            if self._grab():
                break
            if not self.loop or attempt or self._index == 0:
                raise SourceEnded(self.path)
            self._rewind()
        self._index += 1
        if not keep:
            self.frames_skipped += 1
            return None
        if self._reduction == 1:
            self._yield_to_model()  # retrieve() decodes
        ok, image = self._cap.retrieve()
        jpeg = None
        if ok and image is not None and self._reduction > 1:  # the packet: a JPEG
            jpeg = image.reshape(-1)
            image = _decode_reduced(jpeg, self._reduction, before=self._yield_to_model)
        if not ok or image is None:  # grabbed but not decodable: a damaged frame
            self.frames_damaged += 1
            self._pass_damaged += 1
            return None
        self._pass_decoded += 1
        return image, jpeg

    def _yield_to_model(self) -> None:
        """In the decoder thread, before decoding: wait while the model runs (`yield_to` clear)."""
        if self._yield_to is not None:
            while self._running and not self._yield_to.wait(0.1):
                pass

    def _next(self) -> Frame:
        """The next frame due by media time (skipped ones are grabbed, not decoded)."""
        decoded = None
        while decoded is None:
            while not self._pacer.due(self._media_time(self._index)):
                self._advance(keep=False)
            t = self._media_time(self._index)
            decoded = self._advance(keep=True)
        self._pacer.taken(t)
        self.frames_read += 1
        return Frame(decoded[0], t, self._base + self._index - 1, jpeg=decoded[1])

    def _prefetch(self) -> None:
        # The decoder thread yields to the model: it starts no decode while the model runs
        # (`yield_to`), and at nice 19 (Linux sets it per thread) the rest of its work (reading
        # packets) runs on the cores the interpreter's threads leave idle instead of slowing the
        # invoke (benchmarks/README.md: pipeline.py).
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        while self._running:
            try:
                item: Any = self._next()
            except SourceEnded as e:
                item = e
            except Exception as e:  # a decoder failure ends the file like its end does
                log.warning("%s: %s", self.path, e)
                item = SourceEnded(self.path)
            while self._running:
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, SourceEnded):
                return

    def read(self, timeout: float = 0.5) -> Frame | None:
        if self._cap is None:
            raise SourceEnded(self.path)
        if self.prefetch:
            if self._thread is None:
                self._queue, self._running = queue.Queue(maxsize=PREFETCH_FRAMES), True
                self._thread = threading.Thread(target=self._prefetch, name=f"decode {self.name}", daemon=True)
                self._thread.start()
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                return None
            if isinstance(item, SourceEnded):
                self._queue.put(item)  # stays ended
                raise item
            return item
        now = time.monotonic()
        if self.realtime:
            if self._start is None:
                self._start = now - self._media_time(self._index)
            # drop the frames whose time has passed (keep the newest one that is due)
            while self._media_time(self._index + 1) <= now - self._start:
                self._advance(keep=False)
            wait = self._media_time(self._index) - (now - self._start)
            if wait > timeout:
                time.sleep(timeout)
                return None
            if wait > 0:
                time.sleep(wait)
        return self._next()

    def close(self) -> None:
        if self._thread is not None:
            self._running = False
            self._thread.join(2.0)
            self._thread = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None
