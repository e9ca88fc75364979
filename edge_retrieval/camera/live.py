"""Live sources: a V4L2 device or a stream URL (`LiveSource`, its `Grabber` thread keeping the
newest frame, the packets of an HTTP Motion-JPEG camera decoded only when handed over), and
`Reconnecting`, which reopens a live source after failures with a capped `Backoff`."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import numpy as np

from .base import Capture, FrameSource, Pacer, SourceEnded, SourceError, open_capture
from .frame import Frame, _decode_reduced, _reduction

log = logging.getLogger(__name__)

MAX_STUCK = 2  # captures hanging in their driver before a reconnecting source gives up (see Reconnecting)


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
        self._cap: Capture | None = None
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
        with self._cond:  # close() sees this capture (and interrupts it), or the loop sees close()
            self._cap = cap
        try:
            if self._decode_size and self._running:
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
        with self._cond:
            self._running = False
            cap = self._cap
        interrupt = getattr(cap, "interrupt", None)  # a program's pipe: ends a read blocked on it
        if interrupt is not None:
            interrupt()
        self._thread.join(timeout)  # a capture stuck in read() is left to its daemon thread

    @property
    def stuck(self) -> bool:
        """Closed, but the thread still hangs in the capture's open() or read()."""
        return not self._running and self._thread.is_alive()


class LiveSource(FrameSource):
    """A V4L2 device or a stream URL: always the newest frame, at most `fps` per second.

    `decode_size` (width, height), as for `FileSource`: a Motion-JPEG stream (an HTTP MJPEG
    camera) is then read as packets and only the frames handed over are decoded, at the
    smallest scale that keeps them at least that large; each keeps its JPEG for `Frame.full`.
    """

    live = True

    def __init__(
        self,
        uri: str,
        *,
        fps: float = 0.0,
        width: int = 0,
        height: int = 0,
        read_timeout: float = 5.0,
        name: str = "",
        open_fn: Callable[[str], Capture] | None = None,
        decode_size: tuple[int, int] | None = None,
    ):
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
        delay = min(self.maximum, self.initial * self.factor**self.failures)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


class Reconnecting(FrameSource):
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

    def __init__(
        self,
        open_fn: Callable[[], FrameSource],
        name: str,
        *,
        backoff: Backoff | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
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
                    log.error(
                        "%s: %d captures hang inside the driver (reads that never return); not opening "
                        "another: the systemd watchdog restarts the service",
                        self.name,
                        len(self._abandoned),
                    )
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
                log.info(
                    "%s: receiving frames%s",
                    self.name,
                    f" again (after {self.attempts} attempts)" if self.failures else "",
                )
        return frame

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None
