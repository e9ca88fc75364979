"""Frame sources: V4L2 devices, video files, stream URLs and folders of images.

Every source speaks the small `FrameSource` protocol: `read(timeout)` hands over the next
`Frame` to process, or None when none is due within `timeout`; a finite source raises
`SourceEnded` at its end and any source raises `SourceError` when it fails. A source's `alive`
says whether its None means "waiting, as designed" (a watched folder with no new file, a camera
being reconnected) rather than "no progress" (a decoder or a capture that stopped answering):
the daemon feeds the systemd watchdog while it waits, never while it is stuck.

A camera can hand over anything: `inspect_image` tells a frame to process from garbage
(None, empty, tiny, wrong shape or dtype), converts grey and BGRA frames to BGR, and notes
all-black and all-white ones.

Live sources (devices, URLs, watched folders) always hand over their *newest* frame: a
`Grabber` thread drains the capture continuously and keeps only the latest frame, so latency
never builds up however slow the processing is. `Reconnecting` wraps a live source and
reopens it after a failure with a capped exponential backoff that waits on the stop event.
Files and folders play every frame (or, at a target fps, one frame per 1/fps of media time)
and give each frame its media time, so what follows (votes, cooldowns) does not depend on
how fast the machine is.
"""
from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import cv2
import numpy as np

from .. import preprocess
from ..errors import BadImageError, EdgeRetrievalError
from ..sinks import redact_url  # a stream URL's password and query values never reach a log
from ..preprocess import IMAGE_SUFFIXES

log = logging.getLogger(__name__)
if "OPENCV_LOG_LEVEL" not in os.environ:  # our own log says when a source fails, once
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
URL_TIMEOUT_MS = 5000  # FFmpeg's own open and read timeouts for stream URLs
FALLBACK_FPS = 25.0  # a file whose frame rate OpenCV cannot read
FOLDER_INTERVAL = 1.0  # media seconds between the images of a folder played without a target fps
DAMAGED_GRABS = 100  # failed grabs in a row that end a file (fewer are damaged frames, skipped)
PREFETCH_FRAMES = 2  # frames a file's decoder thread keeps ready (it decodes only while the model is idle)
MAX_STUCK = 2  # captures hanging in their driver before a reconnecting source gives up (see Reconnecting)


class SourceError(EdgeRetrievalError):
    """A frame source cannot be opened or stopped delivering frames."""


class SourceEnded(Exception):
    """A finite source (file, folder) has no more frames. Not an error."""


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


class FrameSource(Protocol):
    """Optionally also `alive` (False when absent): True while a None from `read` means the
    source is waiting as designed, not stuck (see the module docstring)."""

    name: str
    live: bool

    def read(self, timeout: float = 0.5) -> Frame | None:
        """The next frame to process; None if none within `timeout`. SourceEnded / SourceError."""

    def close(self) -> None: ...


class Capture(Protocol):
    """The part of cv2.VideoCapture the sources use (fakes in tests implement the same)."""

    def isOpened(self) -> bool: ...
    def read(self) -> tuple[bool, np.ndarray | None]: ...
    def grab(self) -> bool: ...
    def retrieve(self) -> tuple[bool, np.ndarray | None]: ...
    def get(self, prop: int) -> float: ...
    def set(self, prop: int, value: float) -> bool: ...
    def release(self) -> None: ...


def kind_of(uri: str) -> str:
    """"device", "url", "folder" or "file"."""
    uri = uri.strip()
    if uri.isdigit() or uri.startswith("/dev/video"):
        return "device"
    if uri.lower().startswith(STREAM_SCHEMES) or "://" in uri:
        return "url"
    if Path(uri).is_dir():
        return "folder"
    return "file"


def open_capture(uri: str, width: int = 0, height: int = 0) -> Capture:
    """cv2.VideoCapture for a device index/path, URL or file; SourceError if it cannot be opened."""
    kind = kind_of(uri)
    if kind == "device":
        target: Any = int(uri) if uri.isdigit() else uri
        backend = cv2.CAP_V4L2 if os.name == "posix" else cv2.CAP_ANY
        cap = cv2.VideoCapture(target, backend)
    elif kind == "url":
        cap = cv2.VideoCapture(uri, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, URL_TIMEOUT_MS,
                                                     cv2.CAP_PROP_READ_TIMEOUT_MSEC, URL_TIMEOUT_MS])
    else:
        if not Path(uri).is_file():
            raise SourceError(f"{uri}: no such file, folder or device")
        cap = cv2.VideoCapture(uri, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"{redact_url(uri) if kind == 'url' else uri}: cannot open {kind}")
    if kind == "device":
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
    return cap


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
    formatting them costs 20–35 µs, more than the check). Costs ≈ 20 µs on a 640×480 frame
    (33–43 µs when every frame's detail was formatted).
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


# -- rate -------------------------------------------------------------------

class Pacer:
    """Hands out due times one 1/fps apart (fps 0: everything is due at once)."""

    def __init__(self, fps: float):
        self.interval = 1.0 / fps if fps > 0 else 0.0
        self.next_due = -math.inf

    def due(self, t: float) -> bool:
        return t >= self.next_due - 1e-9

    def wait(self, t: float) -> float:
        """Seconds from t until the next due time (0 if due)."""
        return max(0.0, self.next_due - t)

    def taken(self, t: float) -> None:
        """A frame at time t was handed over: the next is due one interval later on the same grid,
        or one interval after t if the source fell behind (no catch-up burst)."""
        if not self.interval:
            return
        if math.isfinite(self.next_due) and t - self.next_due < self.interval:
            self.next_due += self.interval
        else:
            self.next_due = t + self.interval


# -- files ------------------------------------------------------------------

class FileSource:
    """A video file, frame by frame; at a target fps one frame per 1/fps of media time.

    The next frame is decoded in a thread while the current one is processed (`prefetch`),
    as a camera's grabber does, so decoding stays off the pipeline's critical path.
    `realtime` plays the file at its own speed as a camera would: frames whose time has
    passed while the pipeline was busy are dropped (no prefetch then).

    `decode_size` (width, height): the smallest image the reader needs, e.g. the model's
    input. Motion-JPEG frames are then decoded at 1/2, 1/4 or 1/8 of their size as long as
    the image stays at least that large (libjpeg scales while decoding: 1/2 of a 640×480
    frame in 0.55 ms, about two thirds of a full decode's 0.83–0.88 ms); each frame keeps its
    JPEG for `Frame.full`. Other codecs decode at full size.

    `yield_to`: an event clear while the model runs (`Embedder.idle`). The decoder thread then
    starts no decode until it is set again, and keeps up to PREFETCH_FRAMES frames ready: it
    decodes on the core the pipeline's own steps leave idle instead of taking one from the
    interpreter's threads, whose every operation waits for the slowest of them.
    """

    live = False

    def __init__(self, path: str, *, fps: float = 0.0, loop: bool = False, realtime: bool = False,
                 name: str = "", open_fn: Callable[[str], Capture] | None = None, prefetch: bool = True,
                 decode_size: tuple[int, int] | None = None, yield_to: threading.Event | None = None):
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
                        log.warning("%s: damaged frame(s) at frame %d skipped (counted; the file plays on)",
                                    self.path, self._index)
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


# As FFmpeg decodes a video's JPEGs: an EXIF orientation in a packet is not applied (so the
# header's size is the image's)
_REDUCED_FLAGS = {f: flag | cv2.IMREAD_IGNORE_ORIENTATION for f, flag in
                  ((2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4), (8, cv2.IMREAD_REDUCED_COLOR_8))}


def _decode_reduced(jpeg: np.ndarray, factor: int, before: Callable[[], None] | None = None) -> np.ndarray | None:
    """A JPEG packet decoded at 1/factor; None when damaged. libjpeg decodes damaged data
    anyway (grey blocks, and a warning on stderr), so the markers are checked first (≈ 30 µs):
    that refuses most damaged frames (16 of the damaged-clip test's frames, where FFmpeg's
    own decoder refuses 6 and patches the rest). `before` is called between the two."""
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


# -- folders ----------------------------------------------------------------

def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def read_image(path: Path) -> np.ndarray | None:
    """The image, or None when it is unreadable (a camera skips such a file)."""
    try:
        return preprocess.read_image(path)
    except BadImageError:
        return None


class FolderSource:
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

    def __init__(self, path: str, *, fps: float = 0.0, loop: bool = False, watch: bool = False,
                 realtime: bool = False, name: str = "", poll: float = 0.2):
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
        for i, (mtime, key) in enumerate(fresh):  # newest first; older unseen ones are dropped
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


# -- live captures ----------------------------------------------------------

class Grabber:
    """Opens a capture and drains it in a thread, keeping only the newest frame.

    Opening happens in the thread too, so a stream that takes long to connect never blocks
    the caller (who waits at most its own timeout and can stop at once). With `decode_size`
    a Motion-JPEG capture hands over its packets (`_reduction`) and the thread keeps the
    newest one undecoded: the frames dropped are never decoded, and the one read is decoded
    smaller (`LiveSource.read`)."""

    def __init__(self, open_fn: Callable[[], Capture], name: str, decode_size: tuple[int, int] | None = None):
        self._open = open_fn
        self._decode_size = decode_size
        self.reduction = 1  # > 1: the capture hands over Motion-JPEG packets, decoded at 1/this by the reader
        self._cond = threading.Condition()
        self._image: np.ndarray | None = None
        self._stamp = 0.0
        self._seq = 0
        self._error: str | None = None
        self._running = True
        self._thread = threading.Thread(target=self._run, name=f"grab {name}", daemon=True)
        self._thread.start()

    def _set_error(self, error: str) -> None:
        with self._cond:
            self._error = error
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            cap = self._open()
        except SourceError as e:
            self._set_error(str(e))
            return
        try:
            if self._decode_size:
                self.reduction = _reduction(cap, self._decode_size)  # before the first frame is handed over
            while self._running:
                ok, image = cap.read()
                if not ok or image is None:
                    self._set_error("the capture returned no frame")
                    break
                if self.reduction > 1:
                    image = image.reshape(-1)  # the packet: a JPEG
                with self._cond:
                    self._image, self._seq, self._stamp = image, self._seq + 1, time.monotonic()
                    self._cond.notify_all()
        except Exception as e:  # a backend failure ends this capture, not the process
            self._set_error(f"capture failed ({e})")
        finally:
            cap.release()

    def latest(self, after: int, timeout: float) -> tuple[int, np.ndarray, float] | None:
        """(seq, image, monotonic time) of the newest frame with seq > after, waiting up to timeout;
        SourceError once the capture failed (after its last frame was handed over)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._seq > after or self._error, timeout):
                return None
            if self._seq > after:
                return self._seq, self._image, self._stamp
            raise SourceError(self._error or "capture failed")

    def close(self, timeout: float = 1.0) -> None:
        self._running = False
        self._thread.join(timeout)  # a capture stuck in read() is left to its daemon thread

    @property
    def stuck(self) -> bool:
        """Closed, but the thread still hangs in the capture's open() or read()."""
        return not self._running and self._thread.is_alive()


class LiveSource:
    """A V4L2 device or a stream URL: always the newest frame, at most `fps` per second.

    `decode_size` (width, height), as for `FileSource`: a Motion-JPEG stream (an HTTP MJPEG
    camera) is then read as packets and only the frames handed over are decoded, at the
    smallest scale that keeps them at least that large; each keeps its JPEG for `Frame.full`.
    """

    live = True

    def __init__(self, uri: str, *, fps: float = 0.0, width: int = 0, height: int = 0,
                 read_timeout: float = 5.0, name: str = "",
                 open_fn: Callable[[str], Capture] | None = None, decode_size: tuple[int, int] | None = None):
        self.uri = uri
        self.name = name or uri
        self.read_timeout = read_timeout
        open_fn = open_fn or (lambda u: open_capture(u, width, height))
        self._grabber = Grabber(lambda: open_fn(uri), self.name, decode_size)
        self._pacer = Pacer(fps)
        self._seq = 0
        self._last_frame_at = time.monotonic()
        self.frames_read = 0
        self.frames_dropped = 0
        self.frames_damaged = 0  # packets that did not decode (reduced decoding only)

    def read(self, timeout: float = 0.5) -> Frame | None:
        now = time.monotonic()
        wait = self._pacer.wait(now)
        if wait >= timeout:
            time.sleep(timeout)
            return None
        if wait:
            time.sleep(wait)
        got = self._grabber.latest(self._seq, timeout - wait)
        now = time.monotonic()
        if got is None:
            if now - self._last_frame_at > self.read_timeout:
                raise SourceError(f"no frame for {now - self._last_frame_at:.1f} s")
            return None
        seq, image, stamp = got
        self.frames_dropped += seq - self._seq - 1
        self._seq = seq
        jpeg, reduction = None, self._grabber.reduction
        if reduction > 1:
            jpeg, image = image, _decode_reduced(image, reduction)
            if image is None:  # a damaged packet: dropped (a stream of them runs into read_timeout)
                if not self.frames_damaged:
                    log.warning("%s: damaged frame(s) skipped (counted; the stream goes on)", self.name)
                self.frames_damaged += 1
                return None
        self._last_frame_at = now
        self._pacer.taken(now)
        self.frames_read += 1
        return Frame(image, stamp, seq - 1, captured=stamp, jpeg=jpeg)

    def close(self) -> None:
        self._grabber.close()

    @property
    def stuck(self) -> bool:
        """Closed, but its capture still hangs inside the driver (a read that never returns)."""
        return self._grabber.stuck


# -- reconnecting -----------------------------------------------------------

class Backoff:
    """Capped exponential backoff: initial, 2×initial, … up to maximum; reset() after success."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0, factor: float = 2.0):
        self.initial, self.maximum, self.factor = initial, maximum, factor
        self.failures = 0

    def next(self) -> float:
        delay = min(self.maximum, self.initial * self.factor ** self.failures)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


class Reconnecting:
    """A live source that reopens itself after failures, waiting with a capped backoff.

    `read` never blocks longer than its timeout and returns None while the source is down;
    the waits end early when `stop` is set. `attempts` counts reopen attempts.

    The watchdog decision (`alive`): while the source is down and being reopened, the loop
    is alive and doing what it should: a camera unplugged for an hour keeps the service
    running (and pinging systemd's watchdog), and it picks the camera up again by itself;
    restarting the service would only reload the model. What is *stuck* is a capture hanging
    inside its driver: a read that never returns. Such a capture is abandoned to its thread
    and the source reopened, up to MAX_STUCK hanging captures at once; then nothing more is
    opened (no thread pile-up) and `alive` turns False, so the daemon stops pinging and
    systemd's watchdog restarts the process: the one cure for a hung driver.
    """

    live = True

    def __init__(self, open_fn: Callable[[], FrameSource], name: str, *, backoff: Backoff | None = None,
                 stop: threading.Event | None = None, clock: Callable[[], float] = time.monotonic):
        self._open = open_fn
        self.name = name
        self.backoff = backoff or Backoff()
        self.stop = stop or threading.Event()
        self.clock = clock
        self._source: FrameSource | None = None
        self._retry_at = clock()
        self.attempts = 0
        self.failures = 0
        self.last_error = ""
        self._fresh = False
        self._abandoned: list[FrameSource] = []  # closed sources whose capture still hangs
        self._stuck_logged = False

    @property
    def connected(self) -> bool:
        return self._source is not None

    @property
    def stuck(self) -> int:
        """Closed captures still hanging inside their driver."""
        return sum(1 for s in self._abandoned if getattr(s, "stuck", False))

    @property
    def alive(self) -> bool:
        """A None from `read` is the reconnect wait, as designed (see the class docstring);
        False while connected (a None is then no frame yet: the live source itself raises
        after `read_timeout`) and while MAX_STUCK captures hang."""
        return self._source is None and self.stuck < MAX_STUCK

    def _drop_source(self) -> None:
        self._source.close()
        if getattr(self._source, "stuck", False):
            self._abandoned.append(self._source)
        self._source = None

    def _fail(self, error: Exception) -> None:
        self.failures += 1
        self.last_error = str(error)
        delay = self.backoff.next()
        self._retry_at = self.clock() + delay
        message = self.last_error if self.last_error.startswith(self.name) else f"{self.name}: {self.last_error}"
        log.warning("%s; reconnecting in %.1f s", message, delay)

    def read(self, timeout: float = 0.5) -> Frame | None:
        if self._source is None:
            self._abandoned = [s for s in self._abandoned if getattr(s, "stuck", False)]
            if len(self._abandoned) >= MAX_STUCK:
                if not self._stuck_logged:
                    self._stuck_logged = True
                    log.error("%s: %d captures hang inside the driver (reads that never return); not opening "
                              "another: the systemd watchdog restarts the service", self.name, len(self._abandoned))
                self.stop.wait(timeout)
                return None
            self._stuck_logged = False
            wait = self._retry_at - self.clock()
            if wait > 0:
                if self.stop.wait(min(wait, timeout)) or wait > timeout:
                    return None
            self.attempts += 1
            try:
                self._source = self._open()
            except SourceError as e:
                self._fail(e)
                return None
            self._fresh = True
        try:
            frame = self._source.read(timeout)
        except (SourceError, SourceEnded) as e:
            self._drop_source()
            self._fail(e if isinstance(e, SourceError) else SourceError("the stream ended"))
            return None
        if frame is not None:
            self.backoff.reset()
            if self._fresh:
                self._fresh = False
                log.info("%s: receiving frames%s", self.name,
                         f" again (after {self.attempts} attempts)" if self.failures else "")
        return frame

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None


# -- the factory ------------------------------------------------------------

def source_name(config) -> str:
    """What logs, events, STATUS and the kiosk page call a `SourceConfig`'s source: its `name`,
    else its URI, a stream URL without its password and query values."""
    uri = config.uri.strip()
    return config.name or (redact_url(uri) if kind_of(uri) == "url" else uri)


def open_source(config, stop: threading.Event | None = None,
                open_fn: Callable[[str], Capture] | None = None,
                decode_size: tuple[int, int] | None = None, yield_to: threading.Event | None = None) -> FrameSource:
    """The source a `SourceConfig` describes. Live ones come wrapped in `Reconnecting`
    (and so open lazily, on the first read); files and folders open now (SourceError).
    `decode_size`: see `FileSource`; for stream URLs, `LiveSource`. `yield_to`: see `FileSource`."""
    uri = config.uri.strip()
    if not uri:
        raise SourceError("no source configured (source.uri)")
    kind = kind_of(uri)
    name = source_name(config)
    if kind == "folder":
        return FolderSource(uri, fps=config.fps, loop=config.loop, watch=config.watch,
                            realtime=config.realtime, name=name)
    if kind == "file":
        return FileSource(uri, fps=config.fps, loop=config.loop, realtime=config.realtime, name=name,
                          open_fn=open_fn, decode_size=decode_size, yield_to=yield_to)
    opener = open_fn or (lambda u: open_capture(u, config.width, config.height))
    # a device keeps OpenCV's own decoding: its V4L2 packet mode is untested here
    packets = decode_size if kind == "url" else None
    return Reconnecting(
        lambda: LiveSource(uri, fps=config.fps, read_timeout=config.read_timeout, name=name, open_fn=opener,
                           decode_size=packets),
        name, backoff=Backoff(config.reconnect_initial, config.reconnect_max), stop=stop)
