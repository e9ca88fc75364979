"""One frame's journey, `Pipeline.process(frame)`: ROI → motion gate → each watch's recognizer →
its decision. No threads, timers or signals: tests call it directly; `daemon.Daemon` runs it.

A `Watch` is what the camera is watched for, items or people (`[gallery]`, `[people]`): each has
its recognizer, gallery and decider; the motion gate runs once for all of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from ..camera import Frame
from ..decide import Decider, Decision
from ..motion import Motion, MotionGate, crop_roi
from ..recognize import Ranking, Recognizer
from ..storage.gallery import Gallery
from .metrics import Metrics

log = logging.getLogger(__name__)
# How often the frame loop asks the gallery whether an enrol/remove changed it: a change shows
# within this (the brief: within a second), and the frames in between skip a SQLite query.
REFRESH_INTERVAL = 0.25


ITEMS, PEOPLE = "items", "people"  # what a watch looks for: an event's details.watch


@dataclass(frozen=True)
class FrameResult:
    """One watch's view of a frame (the first watch's; `others`: the other watches' on the same frame)."""

    frame: Frame
    motion: Motion
    embedded: bool  # the recognizer ran on this frame (else the last ranking voted again)
    ranking: Ranking
    decision: Decision | None  # the alert this frame completed
    confirmed: Decision | None = None  # what M of the last N frames agree on now, cooling down or not
    watch: str = ITEMS
    others: tuple["FrameResult", ...] = ()

    @property
    def all(self) -> tuple["FrameResult", ...]:
        return (self, *self.others)


class Watch:
    """What the camera is watched for, items or people: a recognizer over its gallery, a decider of
    its own (votes and cooldowns), and its last ranking, which votes again while nothing moves."""

    def __init__(self, kind: str, recognizer: Recognizer, gallery: Gallery, decider: Decider):
        self.kind, self.recognizer, self.gallery, self.decider = kind, recognizer, gallery, decider
        gallery.refresh_interval = REFRESH_INTERVAL
        self.ranking: Ranking | None = None
        self._ranked_at = -1  # the gallery generation the ranking saw
        self._generation = -1
        self._items: dict[int, dict] = {}

    def items(self) -> dict[int, dict]:
        """The gallery's item metadata, reloaded when the gallery changes."""
        generation = self.gallery.seen_generation  # (the search just asked SQLite, or recently did)
        if generation != self._generation:
            self._items = {item.id: item.metadata for item in self.gallery.items()}
            self._generation = generation
            log.debug("%s gallery (re)loaded: %d item(s)", self.kind, len(self._items))
        return self._items

    def stale(self) -> bool:
        self.gallery.matrix()  # asks SQLite whether the gallery changed, at most every REFRESH_INTERVAL
        return self.ranking is None or self.gallery.seen_generation != self._ranked_at

    def process(self, frame: Frame, image: np.ndarray, motion: Motion, boxes: list, embed: bool, source: str, stage):
        if embed:
            self.ranking = self.recognizer.recognize(image, boxes)
            self._ranked_at = self.gallery.seen_generation
        # items: "unknown" is a scene that moved with nothing recognised; people: a face seen, no one identified
        moving = bool(self.ranking.faces) if self.kind == PEOPLE else motion.reason == "motion"
        with stage("decide"):
            decision = self.decider.update(source, self.ranking, frame.time, moving=moving)
            self.items()
        return FrameResult(frame, motion, embed, self.ranking, decision, self.decider.confirmed(source), self.kind)


class Pipeline:
    """One frame's journey: ROI → motion gate → each watch's recognizer → its decision. The first
    watch's result is the frame's `FrameResult`; the other watches' (people beside items) are its
    `others`."""

    def __init__(
        self,
        watches: list[Watch],
        gate: MotionGate,
        *,
        roi=None,
        metrics: Metrics | None = None,
        source: str = "camera",
    ):
        self.watches = watches
        self.gate, self.roi, self.source = gate, roi, source
        self.metrics = metrics or Metrics()

    def watch(self, kind: str) -> Watch:
        return next(w for w in self.watches if w.kind == kind)

    def box(self, frame: Frame) -> tuple[float, float, float, float] | None:
        """The ROI in frame pixels (x0, y0, x1, y1), None for the whole frame."""
        if self.roi is None:
            return None
        w, h = frame.size
        return (self.roi.x * w, self.roi.y * h, (self.roi.x + self.roi.width) * w, (self.roi.y + self.roi.height) * h)

    def offset(self, frame: Frame) -> tuple[float, float]:
        """Where the ROI starts in the frame (pixels): what turns the recognizer's coordinates into the frame's."""
        box = self.box(frame)
        return (box[0], box[1]) if box is not None else (0, 0)

    def process(self, frame: Frame) -> FrameResult:
        """The motion gate once; then each watch recognises the frame if it changed (or its gallery
        did), else its last ranking votes again: an empty, still hallway costs no detection."""
        stage = self.metrics.stage
        image = crop_roi(frame.image, self.roi)
        with stage("motion"):
            motion = self.gate.check(image, frame.time)
            stale = [w.stale() for w in self.watches]
        boxes = []
        if motion.reason == "motion" and motion.box is not None:
            x, y, w, h = motion.box
            boxes.append((x, y, x + w, y + h))
        results = [
            w.process(frame, image, motion, boxes, motion.changed or is_stale, self.source, stage)
            for w, is_stale in zip(self.watches, stale)
        ]
        return replace(results[0], others=tuple(results[1:]))
