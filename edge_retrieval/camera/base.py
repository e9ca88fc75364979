"""What every frame source shares: the `FrameSource` base, its errors, the capture it opens
(`open_capture`), what a URI names (`kind_of`) and the rate a source hands frames over at (`Pacer`)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np

from ..errors import EdgeRetrievalError
from ..sinks import redact_url  # a stream URL's password and query values never reach a log

if TYPE_CHECKING:
    from .frame import Frame

if "OPENCV_LOG_LEVEL" not in os.environ:  # our own log says when a source fails, once
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
URL_TIMEOUT_MS = 5000  # FFmpeg's own open and read timeouts for stream URLs


class SourceError(EdgeRetrievalError):
    """A frame source cannot be opened or stopped delivering frames."""


class SourceEnded(Exception):
    """A finite source (file, folder) has no more frames. Not an error."""


class FrameSource(Protocol):
    """Optionally also `alive` (False when absent): True while a None from `read` means the
    source is waiting as designed, not stuck (see the package docstring, camera/__init__.py).

    The sources here subclass it and so are context managers (`with` closes them); any
    object with `name`, `live`, `read` and `close` will do where a source is expected."""

    name: str
    live: bool

    def read(self, timeout: float = 0.5) -> Frame | None:
        """The next frame to process; None if none within `timeout`. SourceEnded / SourceError."""

    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
    """ "device", "program" (exec:COMMAND, program.py), "picamera2" (picamera.py), "url", "folder" or "file"."""
    uri = uri.strip()
    if uri.startswith("exec:"):
        return "program"
    if uri == "picamera2" or uri.startswith("picamera2:"):
        return "picamera2"
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
        cap = cv2.VideoCapture(
            uri,
            cv2.CAP_FFMPEG,
            [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, URL_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, URL_TIMEOUT_MS],
        )
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
