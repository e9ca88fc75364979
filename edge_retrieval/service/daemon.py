"""The service loop: frames from a source through the pipeline to decisions and events.

`Pipeline.process(frame)` (pipeline.py) is one frame's whole journey (ROI → motion gate →
each watch's recognizer → decision). `Daemon` only wires the parts together: it opens them,
reads frames until the stop event is set or a file ends, drops garbage frames
(`camera.inspect_image`), records decisions as events for the sinks, and speaks sd_notify (READY once loaded, WATCHDOG after every frame
handled and while a source waits as designed, never while the loop is stuck; STATUS, STOPPING).
"""

from __future__ import annotations

import logging
import math
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from ..camera import DROPPED, NOTED, FrameSource, SourceEnded, SourceError, inspect_image
from ..config import Config
from ..decide import Decider, Decision
from ..enroll import lacking_photos, refresh_command
from ..errors import ConfigError, EdgeRetrievalError
from ..motion import MotionGate
from ..recognize import Recognizer
from ..storage.gallery import Gallery
from . import parts
from .metrics import SNAPSHOT_LOST, Metrics
from .pipeline import ITEMS, PEOPLE, FrameResult, Pipeline, Watch  # noqa: F401 (FrameResult, Pipeline: the API)
from .systemd import Notifier

log = logging.getLogger(__name__)
READ_TIMEOUT = 0.25  # the longest the loop waits for a frame before looking at the stop event
STOP_TIMEOUT = 0.8  # what the sinks' dispatcher gets to finish when stopping (exit within 2 s)
DRAIN_TIMEOUT = 5.0  # what the sinks get to deliver pending events when a file or folder ended
MAX_POINTS = 64  # inlier points an event keeps for its detail view (≈ 600 bytes of JSON)
IDLE_PING = 1.0  # seconds between watchdog pings while the source waits as designed (see _loop)


@dataclass
class RunSummary:
    reason: str  # "stopped" or "ended"
    frames: int = 0
    embedded: int = 0
    decisions: list[Decision] = field(default_factory=list)
    metrics: Metrics | None = None


def describe_decision(d: Decision, watch: str = ITEMS) -> str:
    margin = f"{d.margin:.3f}" if math.isfinite(d.margin) else "-"
    if watch == PEOPLE:
        what = f"person {d.label}" if d.kind == "match" else "unknown person"
    else:
        what = d.label if d.kind == "match" else "unknown object"
    return (
        f"alert: {what} (score {d.score:.3f}, margin {margin}, votes {d.votes}/{d.window}) "
        f"at {d.time:.1f} s from {d.source}"
    )


MOSAIC = 8  # cells across a hidden face: no identity (nor a face, to a detector) survives


def hide_faces(image: np.ndarray, boxes) -> None:
    """Pixelate these boxes (x0, y0, x1, y1 pixels, a little enlarged) of a BGR image in place."""
    import cv2

    h, w = image.shape[:2]
    for x0, y0, x1, y1 in boxes:
        pad = 0.15 * max(x1 - x0, y1 - y0)
        a, b = max(0, int(x0 - pad)), max(0, int(y0 - pad))
        c, d = min(w, int(x1 + pad) + 1), min(h, int(y1 + pad) + 1)
        if c - a < 2 or d - b < 2:
            continue
        cells = (MOSAIC, max(1, round(MOSAIC * (d - b) / (c - a))))
        small = cv2.resize(image[b:d, a:c], cells, interpolation=cv2.INTER_AREA)
        image[b:d, a:c] = cv2.resize(small, (c - a, d - b), interpolation=cv2.INTER_NEAREST)


class Daemon:
    """Opens the parts a Config describes (`parts`; or takes them ready-made, for tests) and runs the loop.

    `on_frame(result)` is called after every processed frame (the kiosk's screen),
    `on_decision(decision, result)` after every alert; `full_frames` keeps frames at full size
    (the kiosk's live view) even where the recognizer would take them smaller."""

    def __init__(
        self,
        config: Config,
        *,
        stop: threading.Event | None = None,
        notifier: Notifier | None = None,
        embedder=None,
        gallery: Gallery | None = None,
        source: FrameSource | None = None,
        sinks: list | None = None,
        recognizer: Recognizer | None = None,
        demo: bool = False,
        demo_seed: int = 0,
        full_frames: bool = False,
        on_frame: Callable[[FrameResult], None] | None = None,
        on_decision: Callable[[Decision, FrameResult], None] | None = None,
        on_stats: Callable[[Metrics], None] | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.stop = stop or threading.Event()
        self.notifier = notifier or Notifier.from_env()
        self.demo, self.demo_seed, self.full_frames = demo, demo_seed, full_frames
        self.on_frame, self.on_decision, self.on_stats = on_frame, on_decision, on_stats
        self.metrics = metrics or Metrics()
        self.clock, self.wall_clock = clock, wall_clock
        self._embedder, self._gallery, self._source, self._sinks = embedder, gallery, source, sinks
        self.recognizer = recognizer
        self._owned: list[Any] = []  # closed in reverse order
        self.event_log = None
        self.dispatcher = None
        self.fleet = None  # the fleet follower, when [fleet] group is set
        self.pipeline: Pipeline | None = None
        self.last_decision: Decision | None = None
        self.last_result: FrameResult | None = None
        self._last_decision_at = 0.0
        self._ready = False
        self._frame_kinds_logged: set[str] = set()
        self._snapshots_failing_since: int | None = None  # the lost count when snapshots started failing

    # -- setup ---------------------------------------------------------------------
    def _own(self, thing):
        self._owned.append(thing)
        return thing

    def open(self) -> None:
        """Load the models and the galleries, start the sinks and open the source. Items are
        watched with a gallery (or the demo's), people with `[people] gallery`, or both: the
        first watch's gallery file also stores the events."""
        config = self.config
        given = bool(config.gallery.path) or self.demo or self._gallery is not None or self.recognizer is not None
        items = given or not config.people.gallery  # (no gallery at all: check_configured says so)
        if items and self._embedder is None:
            self._embedder = self._own(parts.embedder(config))
        card = getattr(self._embedder, "card", None)
        if self.demo:
            folder = self._own(tempfile.TemporaryDirectory(prefix="edge-retrieval-demo-"))
            try:
                config = parts.demo(config, self._embedder, folder.name, self.demo_seed, self.stop)
            except InterruptedError:
                return
        elif self._source is None and self._gallery is None:
            parts.check_configured(config)
        self.config = config
        decision = config.decision
        watches = []
        if items:
            if self._gallery is None:
                self._gallery = self._own(parts.gallery(config))
            if card is not None:
                self._gallery.check_model(self._embedder.sha256, card.name)
            if config.fleet.group:
                self.fleet = self._own(parts.fleet(config, self._gallery, self._embedder))
            if self.recognizer is None:
                self.recognizer = self._own(parts.recognizer(config, self._embedder, self._gallery, self.metrics.stage))
            watches.append(Watch(ITEMS, self.recognizer, self._gallery, Decider.from_config(decision)))
        elif config.fleet.group:
            raise ConfigError("fleet.group: a fleet shares an items watchlist; set gallery.path too")
        if config.people.gallery:
            people, faces, decider = parts.people(config, lambda name: self.metrics.stage(f"face {name}"))
            self._own(people)
            watches.append(Watch(PEOPLE, self._own(faces), people, decider))
        for w in watches:
            if not w.gallery.count()[0]:
                enrol = "edge-retrieval enroll" + (" --faces" if w.kind == PEOPLE else "")
                log.warning("%s: the gallery is empty; enrol with `%s` (no restart needed)", w.gallery.path, enrol)
            elif w.kind == ITEMS and (lacking := lacking_photos(w.gallery)):
                log.warning(  # enrolled before the second or the dense verifier, which skip these photos' items
                    "%s: %d photo(s) lack the SIFT features or grey image of the second and dense verifiers; "
                    "add them with `%s` (no restart needed)",
                    w.gallery.path,
                    len(lacking),
                    refresh_command(w.gallery.path),
                )
        first = watches[0]
        self._gallery, self.recognizer = first.gallery, first.recognizer
        if self._source is None:
            self._source = self._own(
                parts.source(
                    config, self.stop, self._embedder, self.recognizer if items else None, full_frames=self.full_frames
                )
            )
        source_name = getattr(self._source, "name", None) or config.source.name or config.source.uri or "camera"
        self._open_events(source_name)
        self.pipeline = Pipeline(
            watches, MotionGate.from_config(config.motion), roi=config.roi, source=source_name, metrics=self.metrics
        )
        log.info(
            "watching %s on %s; %s",
            " and ".join(w.kind for w in watches),
            source_name,
            "; ".join(
                f"{w.kind}: gallery {w.gallery.path} ({w.gallery.count()[0]} {w.kind}), preset {w.recognizer.preset.name}"
                + (f", model {card.name}" if w.kind == ITEMS and card else "")
                for w in watches
            ),
        )

    def _open_events(self, source: str) -> None:
        """The event log and the dispatcher delivering this source's events (one service of
        several may share the gallery file: each delivers its own camera's events)."""
        from ..storage.events import EventLog
        from ..storage.outbox import Dispatcher

        if self._gallery.path == ":memory:":
            log.warning("in-memory gallery: events are not recorded")
            return
        sinks = self._sinks if self._sinks is not None else parts.sinks(self.config)
        history = self.config.events
        self.event_log = self._own(
            EventLog(
                self._gallery.db,
                [s.name for s in sinks],
                max_count=history.max_count,
                max_age_days=history.max_age_days,
            )
        )
        if sinks:
            self.dispatcher = Dispatcher(self._gallery.db, sinks, source=source).start()

    # -- the loop ------------------------------------------------------------------
    def run(self) -> RunSummary:
        """Open everything, send READY, process frames until stopped or the source ends."""
        summary = RunSummary("stopped")
        try:
            self.open()
            if self.stop.is_set() or self.pipeline is None:
                return summary
            pipeline = self.pipeline
            summary.metrics = pipeline.metrics
            self.notifier.ready(f"running: {self._source.name}")
            self._ready = True
            summary.reason = self._loop(pipeline, summary)
            if summary.reason == "ended":
                self._drain()
            return summary
        finally:
            self.close()

    def _loop(self, pipeline: Pipeline, summary: RunSummary) -> str:
        """Read, process, emit, ping. The watchdog is pinged only here, in the loop's own thread
        (no timer, no sink thread): after every frame handled (processed, or dropped as
        garbage), and at most every IDLE_PING s while the source says its None is a wait as
        designed (`alive`: a camera being reconnected, a watched folder). A read or a stage that
        never returns, or a source whose None means it stopped answering, pings nothing, and
        systemd's watchdog restarts the service."""
        metrics, source, service = pipeline.metrics, self._source, self.config.service
        next_status = next_log = self.clock()
        last_ping = -math.inf
        attempts = getattr(source, "attempts", 0)
        capture_stage = "wait" if source.live else "capture"
        while not self.stop.is_set():
            start = time.perf_counter()
            try:
                frame = source.read(READ_TIMEOUT)
            except SourceEnded:
                log.info("%s: end of the source after %d frame(s)", source.name, summary.frames)
                return "ended"
            except SourceError as e:
                if source.live:
                    raise
                log.warning("%s: %s; finishing", source.name, e)
                return "ended"
            if frame is None:
                now, fields = time.monotonic(), {}
                if getattr(source, "alive", False) and now - last_ping >= IDLE_PING:
                    last_ping, fields["WATCHDOG"] = now, 1
                if getattr(source, "attempts", 0) != attempts:  # a reconnect attempt (STATUS is no ping)
                    attempts = source.attempts
                    fields["STATUS"] = (
                        f"reconnecting to {source.name} (attempt {attempts}): {getattr(source, 'last_error', '')}"
                    )
                if fields:
                    self.notifier.notify(**fields)
                continue
            image, kind, detail = inspect_image(frame.image)
            if kind is not None:
                self._note_frame(source.name, kind, detail)
            if image is None:  # garbage: dropped, but the loop made progress
                last_ping = time.monotonic()
                self.notifier.watchdog()
                continue
            if image is not frame.image:
                frame = replace(frame, image=image)
            metrics.add(capture_stage, time.perf_counter() - start)
            result = self.last_result = pipeline.process(frame)
            if self.on_frame is not None:
                self.on_frame(result)
            for watched in result.all:  # items, people: each watch's alert of this frame
                if watched.decision is not None:
                    with metrics.stage("emit"):
                        self._emit(watched, result)
                    summary.decisions.append(watched.decision)
            embedded = any(r.embedded for r in result.all)
            metrics.frame_done(embedded, latency=time.monotonic() - frame.captured)
            summary.frames += 1
            summary.embedded += embedded
            last_ping = time.monotonic()
            self.notifier.watchdog()
            now = self.clock()
            if now >= next_status:
                next_status = now + service.status_interval
                self.notifier.status(self.status_text(metrics))
                if self.fleet is not None:
                    self.fleet.fps = metrics.summary()["fps"]
                if self.on_stats is not None:
                    self.on_stats(metrics)
            if service.log_interval and now >= next_log:
                if summary.frames > 1:
                    log.info("%s", metrics.line())
                next_log = now + service.log_interval
        return "stopped"

    def _note_frame(self, source: str, kind: str, detail: str) -> None:
        """Count a dropped or noted frame; log each kind once (the counts are in STATUS and stats)."""
        dropped = kind in DROPPED
        (self.metrics.dropped if dropped else self.metrics.noted)[kind] += 1
        if kind in self._frame_kinds_logged:
            return
        self._frame_kinds_logged.add(kind)
        if dropped:
            log.warning(
                "%s: dropping frames that are %s (first: %s); counted, not logged again", source, DROPPED[kind], detail
            )
        else:
            log.warning("%s: %s (first: %s); counted, not logged again", source, NOTED[kind], detail)

    def status_text(self, metrics: Metrics) -> str:
        s = metrics.summary()
        stages = " ".join(f"{k} {v:.1f}" for k, v in s["stages_ms"].items() if k != "wait")
        text = f"{s['fps']:.1f} fps, {s['frame_ms'] or 0:.1f} ms/frame ({stages} ms)"
        d = self.last_decision
        if d is not None:
            ago = self.clock() - self._last_decision_at
            text += f"; last match {d.label or 'unknown'} {d.score:.2f} {ago:.0f} s ago"
        else:
            text += "; no match yet"
        parked = self.dispatcher.parked() if self.dispatcher is not None else 0  # outbox: parked rows
        trouble = "; ".join(filter(None, [metrics.trouble(), f"{parked} event(s) parked" if parked else ""]))
        return text + (f"; {trouble}" if trouble else "")

    def _emit(self, result: FrameResult, frame_result: FrameResult) -> None:
        """Record one watch's alert (`result`) as an event; `frame_result`: every watch's view of the frame."""
        decision = result.decision
        self.last_decision, self._last_decision_at = decision, self.clock()
        log.info("%s", describe_decision(decision, result.watch))
        if self.on_decision is not None:
            self.on_decision(decision, result)
        if self.event_log is None:
            return
        from ..storage.events import Event

        items = self.pipeline.watch(result.watch).items()
        metadata = items.get(decision.item_id, {}) if decision.item_id is not None else {}
        people = result.watch == PEOPLE
        details = {
            "watch": result.watch,
            "margin": decision.margin if math.isfinite(decision.margin) else None,
            "votes": decision.votes,
            "window": decision.window,
            "threshold": decision.threshold,
            **self._evidence(result),
            "frame": result.frame.index,
            "source_time": round(result.frame.time, 3),
        }
        event = Event(
            time=self.wall_clock(),
            source=decision.source,
            kind=decision.kind,
            score=decision.score,
            label=decision.label,
            item_id=decision.item_id,
            metadata=metadata,
            box=self._face_box(result) if people else self.pipeline.box(result.frame),
            polygon=None if people else self._outline(result),
            details=details,
        )
        snapshot = self.config.snapshot
        if snapshot.enabled and (snapshot.keep == "all" or decision.kind == "match"):
            event = self._snapshot(result.frame.full(), event, self._strangers(frame_result))
        # a person's event keeps no descriptor: the history searches one model's descriptors (items')
        descriptor = None if people else result.ranking.descriptor
        try:
            self.event_log.record(event, descriptor)
        except EdgeRetrievalError as e:  # a broken database must not stop detection
            log.error("event not recorded: %s", e)
            return
        if self.dispatcher is not None:
            self.dispatcher.wake()

    def _face_box(self, result: FrameResult) -> tuple[float, float, float, float] | None:
        """The box (frame pixels) of the face the decision is about: the decided person's best face,
        or for "unknown" the best face no one was identified in."""
        label = result.decision.label
        faces = [f for f in result.ranking.faces or () if (f.match.label if f.match is not None else None) == label]
        if not faces:
            return None
        x0, y0 = self.pipeline.offset(result.frame)
        bx0, by0, bx1, by1 = (float(v) for v in faces[0].box)
        return (bx0 + x0, by0 + y0, bx1 + x0, by1 + y0)

    def _strangers(self, frame_result: FrameResult) -> list[tuple[float, float, float, float]]:
        """With `snapshot.keep = "matches"`: the boxes (frame pixels) of the faces no one was
        identified in, pixelated in a match's snapshot; none otherwise."""
        if self.config.snapshot.keep != "matches":
            return []
        x0, y0 = self.pipeline.offset(frame_result.frame)
        return [
            (float(f.box[0]) + x0, float(f.box[1]) + y0, float(f.box[2]) + x0, float(f.box[3]) + y0)
            for r in frame_result.all
            for f in r.ranking.faces or ()
            if f.match is None
        ]

    def _evidence(self, result: FrameResult) -> dict[str, Any]:
        """The best candidate's cosine, inliers and (at most MAX_POINTS, frame pixels) inlier
        points, for an event's detail view; nothing when it is not the decided label."""
        best = result.ranking.best
        if best is None or best.label != result.decision.label:
            return {}
        out: dict[str, Any] = {"cosine": round(float(best.cosine), 4), "inliers": int(best.inliers)}
        if best.aligned:  # verified by the dense verifier: its correlation
            out["aligned"] = round(float(best.aligned), 4)
        if best.points is not None and len(best.points):
            x0, y0 = self.pipeline.offset(result.frame)
            points = np.asarray(best.points, np.float64)[:MAX_POINTS] + (x0, y0)
            out["points"] = np.round(points).astype(int).tolist()
        return out

    def _outline(self, result: FrameResult) -> tuple[tuple[float, float], ...] | None:
        """Where the recognizer found the matched item, in frame pixels: its verified outline,
        else the region of the frame that matched it best (none for the whole frame)."""
        best = result.ranking.best
        if best is None or best.label != result.decision.label or best.region is None:
            return None
        roi = self.pipeline.box(result.frame)
        w, h = result.frame.size
        x0, y0, x1, y1 = roi if roi is not None else (0, 0, w, h)  # the identification saw the ROI
        if best.outline is not None:
            return tuple((float(x) + x0, float(y) + y0) for x, y in best.outline)
        rx0, ry0, rx1, ry1 = (float(v) for v in best.region)
        xs, ys = (x0 + rx0 * (x1 - x0), x0 + rx1 * (x1 - x0)), (y0 + ry0 * (y1 - y0), y0 + ry1 * (y1 - y0))
        return ((xs[0], ys[0]), (xs[1], ys[0]), (xs[1], ys[1]), (xs[0], ys[1]))

    def _snapshot(self, image: np.ndarray, event, hidden=()):
        """The event with its snapshot saved (`hidden`: face boxes pixelated first); a snapshot that
        cannot be written (a full disk) loses the picture, never the alert: one warning when it
        starts failing, a count in STATUS and stats (`snapshots not saved`), one line when it works again."""
        from ..storage.events import draw_event

        def draw(picture, drawn):
            hide_faces(picture, hidden)
            draw_event(picture, drawn)

        try:
            path = self.event_log.save_snapshot(image, event, self.config.snapshot, draw)
        except EdgeRetrievalError as e:
            self.metrics.counts[SNAPSHOT_LOST] += 1
            if self._snapshots_failing_since is None:
                self._snapshots_failing_since = self.metrics.counts[SNAPSHOT_LOST] - 1
                log.warning(
                    "snapshot not saved: %s; alerts go on without pictures (counted as '%s', not "
                    "logged again until it works)",
                    e,
                    SNAPSHOT_LOST,
                )
            else:
                log.debug("snapshot not saved: %s", e)
            return event
        if self._snapshots_failing_since is not None:
            lost = self.metrics.counts[SNAPSHOT_LOST] - self._snapshots_failing_since
            log.warning("snapshots saved again (%d not saved meanwhile)", lost)
            self._snapshots_failing_since = None
        return replace(event, snapshot=path)

    def _drain(self) -> None:
        """A finite source ended: give the sinks a few seconds to deliver what is pending
        (what is left is delivered on the next start, like after a stop)."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while self.dispatcher is not None and not self.stop.is_set() and time.monotonic() < deadline:
            if not self.dispatcher.pending():
                return
            self.stop.wait(0.05)

    def close(self) -> None:
        if self._ready:
            self.notifier.stopping("stopping")
            self._ready = False
        if self.dispatcher is not None:
            if not self.dispatcher.stop(STOP_TIMEOUT):
                log.warning("sinks still busy at exit; undelivered events are retried at the next start")
            self.dispatcher = None
        while self._owned:
            thing = self._owned.pop()
            try:
                (getattr(thing, "close", None) or thing.cleanup)()
            except Exception as e:  # closing must not hide the reason we are closing
                log.debug("closing %r: %s", thing, e)
