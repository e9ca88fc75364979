"""What the kiosk page shows: `Screen` turns the frames the camera loop processes into a `Shown`."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

from ..decide import MATCH
from ..service.daemon import FrameResult

STARTING, IDLE, RECOGNISED, UNKNOWN, ERROR, ENDED = "starting", "idle", "match", "unknown", "error", "ended"


@dataclass(frozen=True)
class Shown:
    """What the page shows: a status and, for a match, the item."""

    status: str  # starting | idle | match | unknown | error | ended
    item_id: int | None = None
    label: str | None = None
    score: float | None = None
    since: float = 0.0  # wall-clock time it appeared
    message: str = ""


class Screen:
    """Turns processed frames into what the page shows. Thread-safe; `version` counts changes.

    A frame *confirms* a key (an item, or "unknown") when the service's decision layer says M of
    the last N frames agree (`FrameResult.confirmed`, cooling down or not). A confirmed item
    shows its record at once; it stays until it has not been confirmed for `hold` seconds of
    source time. "Unknown" confirmed while a record is held is an item leaving and is ignored.
    """

    def __init__(self, hold: float, clock: Callable[[], float] = time.time):
        self.hold = hold
        self.clock = clock
        self._lock = threading.Lock()
        self._shown = Shown(STARTING, since=clock())
        self._last_seen = -math.inf
        self.version = 0
        self.frame_index = -1
        self.frames = 0

    @property
    def shown(self) -> Shown:
        return self._shown

    def _show(self, shown: Shown) -> None:
        self._shown = shown
        self.version += 1

    def frame(self, result: FrameResult, source: str = "camera") -> Shown:
        """Record one processed frame; what is shown afterwards."""
        t = result.frame.time
        confirmed = result.confirmed
        with self._lock:
            self.frame_index, self.frames = result.frame.index, self.frames + 1
            shown = self._shown
            if confirmed is not None and confirmed.kind == MATCH:
                if shown.status != RECOGNISED or shown.item_id != confirmed.item_id:
                    self._show(Shown(RECOGNISED, confirmed.item_id, confirmed.label, confirmed.score, self.clock()))
                elif round(confirmed.score, 2) != round(shown.score or 0, 2):
                    self._show(replace(shown, score=confirmed.score))
                self._last_seen = t
            elif confirmed is not None:  # unknown
                if shown.status == RECOGNISED and t - self._last_seen <= self.hold:
                    pass  # the held item leaving the view
                else:
                    if shown.status != UNKNOWN:
                        self._show(Shown(UNKNOWN, since=self.clock()))
                    self._last_seen = t
            elif shown.status == STARTING or (
                shown.status in (RECOGNISED, UNKNOWN) and t - self._last_seen > self.hold
            ):
                self._show(Shown(IDLE, since=self.clock()))
            return self._shown

    def set_status(self, status: str, message: str = "") -> None:
        with self._lock:
            self._show(Shown(status, since=self.clock(), message=message))

    def touch(self) -> None:
        """Something the page shows changed elsewhere (an item's record was edited)."""
        with self._lock:
            self.version += 1
