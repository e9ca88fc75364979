"""A program writing Motion-JPEG to its standard output as a live source (`exec:` URIs):
`rpicam-vid --codec mjpeg -o -` for a Raspberry Pi camera, `ffmpeg … -f mjpeg -`, anything.

`ProgramCapture` is a `Capture` (base.py) over the program's pipe, so `LiveSource` reads it as
it reads an HTTP Motion-JPEG camera: its grabber keeps the newest packet undecoded, the frame
handed over is decoded at the model's input size, and `Reconnecting` starts the program again
with backoff when it exits. The program runs without a shell in its own process group, which
is killed (SIGTERM, then SIGKILL) and reaped on close; its stderr goes to the log line by line.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
from collections import deque

import cv2
import numpy as np

from .. import preprocess
from ..sinks import redact_urls
from .base import SourceError
from .frame import _decode_reduced

log = logging.getLogger(__name__)

PREFIX = "exec:"
TERM_GRACE = 2.0  # seconds a program gets to exit on SIGTERM before its group is killed
CHUNK = 1 << 16  # bytes read from the pipe at a time (at most: a read returns what is there)
MAX_PACKET = 32 << 20  # bytes without a whole JPEG: the program is not writing Motion-JPEG
STDERR_LINE = 4096  # a longer stderr line (progress redrawn with \r) is logged in pieces
MJPG = cv2.VideoWriter_fourcc(*"MJPG")


def program_argv(uri: str) -> list[str]:
    """The argv an `exec:` URI names (split as a shell would, run without one); SourceError when
    it names no program or one that is not on PATH."""
    try:
        argv = shlex.split(uri.strip()[len(PREFIX) :])
    except ValueError as e:
        raise SourceError(f"{redact_urls(uri)}: cannot split the command line ({e})") from None
    if not argv:
        raise SourceError(f"{uri!r} names no program (exec:PROGRAM ARGUMENTS…)")
    if shutil.which(argv[0]) is None:
        raise SourceError(f"{argv[0]}: program not found (source {redact_urls(uri.strip())[:80]})")
    return argv


class JpegSplitter:
    """Cuts a Motion-JPEG byte stream into its JPEGs. From each start-of-image marker the header
    segments are skipped by their lengths (an EXIF thumbnail holds a JPEG of its own), then the
    image data runs to the end-of-image marker (inside it 0xFF is always followed by 0x00 or a
    restart marker). Bytes outside a JPEG are dropped; a broken header drops that JPEG."""

    def __init__(self):
        self.buffer = bytearray()
        self._pos = 2  # the next header segment (after the SOI)
        self._scan: int | None = None  # in the image data: where to look for the EOI

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        packets = []
        while (packet := self._next()) is not None:
            packets.append(packet)
        return packets

    def _next(self) -> bytes | None:
        buf = self.buffer
        while self._scan is None:
            if not buf.startswith(b"\xff\xd8"):
                start = buf.find(b"\xff\xd8")
                del buf[: start if start >= 0 else max(0, len(buf) - 1)]  # a last 0xFF may start an SOI
                self._pos = 2
                if start < 0:
                    return None
            i = self._pos
            while True:
                if i + 4 > len(buf):
                    self._pos = i
                    return None
                marker = buf[i + 1]
                if buf[i] != 0xFF or marker in (0xD8, 0xD9):
                    break  # not a header: a damaged JPEG
                if marker == 0xFF:  # fill byte
                    i += 1
                elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
                    i += 2
                else:
                    i += 2 + (buf[i + 2] << 8 | buf[i + 3])
                    if marker == 0xDA:  # start of scan: the image data follows its header
                        self._scan = i
                        break
            if self._scan is None:
                del buf[:2]  # look for the next SOI
        end = buf.find(b"\xff\xd9", self._scan)
        if end < 0:
            self._scan = max(self._scan, len(buf) - 1)
            return None
        packet = bytes(buf[: end + 2])
        del buf[: end + 2]
        self._scan, self._pos = None, 2
        return packet


class ProgramCapture:
    """The part of cv2.VideoCapture a `LiveSource` uses, over a program's stdout: `read` hands
    over the next JPEG decoded, or the JPEG itself once `set(CAP_PROP_FORMAT, -1)` asked for
    packets; `get` answers the codec (MJPG) and the first frame's size. A program that exits
    (or writes no JPEG) makes `read` raise SourceError with its status and last stderr line.

    `interrupt` may be called from another thread: it kills the program, so a read blocked on
    the pipe returns; `release` does the same and closes the pipe (the reading thread calls it).
    """

    def __init__(self, argv: list[str], name: str = ""):
        self.argv, self.name = argv, name or argv[0]
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group: killed with its children
                bufsize=0,
            )
        except OSError as e:
            raise SourceError(f"{argv[0]}: cannot start ({e.strerror or e})") from None
        self._splitter = JpegSplitter()
        self._packets: deque[bytes] = deque()
        self._unsplit = 0  # bytes read since the last whole JPEG
        self._packet_mode = False
        self._lock = threading.Lock()
        self._killed = False
        self.last_line = ""  # the program's last stderr line, for the error when it exits
        self._stderr = threading.Thread(target=self._log_stderr, name=f"stderr {self.name}", daemon=True)
        self._stderr.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _log_stderr(self) -> None:
        for line in iter(lambda: self._proc.stderr.readline(STDERR_LINE), b""):
            text = redact_urls(line.decode("utf-8", "replace").strip())  # a camera URL's password
            if text:
                self.last_line = text
                log.info("%s: %s", self.name, text)
        self._proc.stderr.close()

    def _fill(self) -> None:
        """Read until a whole JPEG is waiting; SourceError when the program's output ends."""
        while not self._packets:
            data = os.read(self._proc.stdout.fileno(), CHUNK)
            if not data:
                raise SourceError(self._ended())
            self._packets.extend(self._splitter.feed(data))
            self._unsplit = 0 if self._packets else self._unsplit + len(data)
            if self._unsplit > MAX_PACKET:
                raise SourceError(f"{self.argv[0]} wrote {self._unsplit >> 20} MB without a JPEG: is it Motion-JPEG?")

    def _ended(self) -> str:
        try:
            status = self._proc.wait(1.0)
        except subprocess.TimeoutExpired:
            return f"{self.argv[0]} closed its output"
        self._stderr.join(0.5)  # its last line
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        return f"{self.argv[0]} {how}" + (f": {self.last_line}" if self.last_line else "")

    def isOpened(self) -> bool:
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        while True:
            try:
                self._fill()
            except OSError as e:  # the pipe closed under us (released)
                raise SourceError(f"{self.argv[0]}: {e.strerror or e}") from None
            packet = np.frombuffer(self._packets.popleft(), np.uint8)
            if self._packet_mode:
                return True, packet
            image = _decode_reduced(packet, 1)
            if image is not None:  # (a damaged JPEG is skipped)
                return True, image

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_FOURCC:
            return float(MJPG)
        if prop in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT):
            self._fill()  # the first JPEG tells; it stays queued for `read`
            try:
                _, width, height = preprocess.image_size(self._packets[0])
            except ValueError:
                return 0.0
            return float(width if prop == cv2.CAP_PROP_FRAME_WIDTH else height)
        return 0.0

    def set(self, prop: int, value: float) -> bool:
        if prop == cv2.CAP_PROP_FORMAT and value == -1:
            self._packet_mode = True
            return True
        return False

    def interrupt(self) -> None:
        """Kill the program's group (SIGTERM, SIGKILL after TERM_GRACE) and reap it; idempotent."""
        with self._lock:
            if self._killed:
                return
            self._killed = True
        self._signal(signal.SIGTERM)
        try:
            self._proc.wait(TERM_GRACE)
        except subprocess.TimeoutExpired:
            log.warning("%s: %s ignored SIGTERM; killing it", self.name, self.argv[0])
            self._signal(signal.SIGKILL)
            self._proc.wait()
        self._signal(signal.SIGKILL)  # what it left behind in its group

    def _signal(self, signum: int) -> None:
        try:
            os.killpg(self._proc.pid, signum)
        except (ProcessLookupError, PermissionError):  # the group is gone
            pass

    def release(self) -> None:
        self.interrupt()
        self._proc.stdout.close()
        self._stderr.join(0.5)
