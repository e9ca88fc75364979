"""Per-stage timings and the processed-frame rate, over a sliding window of frames.

metrics = Metrics()
with metrics.stage("invoke"):
    ...
metrics.frame_done(embedded=True)
metrics.line()  # "9.8 fps, 12.1 ms/frame: capture 1.3, motion 0.2, preprocess 0.6, invoke 9.4, ..."
"""

from __future__ import annotations

import time
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

# The order stages happen in a frame ("wait" replaces "capture" for live sources, whose frames
# are decoded in the grabber thread: it is the time spent waiting for the next frame; with a
# search preset (decision.preset) "identify" replaces preprocess … scan; "face …": the people watch's).
STAGES = (
    "capture",
    "wait",
    "motion",
    "preprocess",
    "invoke",
    "pool",
    "scan",
    "identify",
    "face detect",
    "face embed",
    "face scan",
    "decide",
    "emit",
)
MODEL_STAGES = ("invoke", "identify", "face detect")  # a frame with one of these was embedded
WORK_STAGES = tuple(s for s in STAGES if s != "wait")
SNAPSHOT_LOST = "snapshots not saved"  # a count in `Metrics.counts` (a full disk, say)


def _embedded(frame_stages: dict[str, float]) -> bool:
    return any(name in frame_stages for name in MODEL_STAGES)


@dataclass(frozen=True)
class StageStats:
    count: int
    mean_ms: float
    p50_ms: float
    p95_ms: float


class Metrics:
    """Collects stage times of the frame in progress, then keeps the last `window` frames."""

    def __init__(self, window: int = 200, clock: Callable[[], float] = time.perf_counter):
        self.window = window
        self.clock = clock
        self._current: dict[str, float] = {}
        self._frames: deque[dict[str, float]] = deque(maxlen=window)
        self._done_at: deque[float] = deque(maxlen=window)
        self._latency: deque[float] = deque(maxlen=window)
        self.frames = 0
        self.embedded = 0
        self.dropped: Counter[str] = Counter()  # frames dropped as garbage, by kind (camera.DROPPED)
        self.noted: Counter[str] = Counter()  # frames processed but noted, by kind (camera.NOTED)
        self.counts: Counter[str] = Counter()  # other things that went wrong, e.g. SNAPSHOT_LOST

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = self.clock()
        try:
            yield
        finally:
            self.add(name, self.clock() - start)

    def add(self, name: str, seconds: float) -> None:
        self._current[name] = self._current.get(name, 0.0) + seconds

    def frame_done(self, embedded: bool, latency: float | None = None) -> None:
        """Close the frame in progress; `latency`: seconds from capture to decision, if known."""
        self._frames.append(self._current)
        self._current = {}
        self._done_at.append(self.clock())
        if latency is not None:
            self._latency.append(latency)
        self.frames += 1
        self.embedded += embedded

    def fps(self) -> float:
        if len(self._done_at) < 2:
            return 0.0
        span = self._done_at[-1] - self._done_at[0]
        return (len(self._done_at) - 1) / span if span > 0 else 0.0

    def stages(self, embedded_only: bool = False) -> dict[str, StageStats]:
        """Per-stage statistics over the frames in the window in which the stage ran."""
        out = {}
        for name in STAGES:
            values = (
                np.array([f[name] for f in self._frames if name in f and (not embedded_only or _embedded(f))]) * 1000
            )
            if values.size:
                out[name] = StageStats(
                    int(values.size),
                    float(values.mean()),
                    float(np.percentile(values, 50)),
                    float(np.percentile(values, 95)),
                )
        return out

    def frame_ms(self, embedded_only: bool = False) -> StageStats | None:
        """The work of one frame (every stage but waiting), over the window."""
        totals = (
            np.array(
                [sum(v for k, v in f.items() if k != "wait") for f in self._frames if not embedded_only or _embedded(f)]
            )
            * 1000
        )
        if not totals.size:
            return None
        return StageStats(
            int(totals.size), float(totals.mean()), float(np.percentile(totals, 50)), float(np.percentile(totals, 95))
        )

    def latency_ms(self) -> StageStats | None:
        if not self._latency:
            return None
        values = np.array(self._latency) * 1000
        return StageStats(
            len(values), float(values.mean()), float(np.percentile(values, 50)), float(np.percentile(values, 95))
        )

    def summary(self) -> dict:
        """Plain data for STATUS, logs and --stats."""
        total = self.frame_ms()
        latency = self.latency_ms()
        return {
            "fps": round(self.fps(), 2),
            "frames": self.frames,
            "embedded": self.embedded,
            "frame_ms": round(total.mean_ms, 2) if total else None,
            "latency_ms": round(latency.mean_ms, 2) if latency else None,
            "stages_ms": {k: round(v.mean_ms, 2) for k, v in self.stages().items()},
            "dropped": dict(self.dropped),
            "noted": dict(self.noted),
            "counts": dict(self.counts),
        }

    def trouble(self) -> str:
        """What went wrong since the start, in one phrase ("" if nothing): dropped frames by
        kind, noted frames, other counts."""
        parts = []
        if self.dropped:
            parts.append(
                f"{sum(self.dropped.values())} frame(s) dropped ("
                + ", ".join(f"{k} {n}" for k, n in self.dropped.most_common())
                + ")"
            )
        parts += [f"{n} {k} frame(s)" for k, n in self.noted.most_common()]
        parts += [f"{n} {k}" for k, n in self.counts.most_common()]
        return "; ".join(parts)

    def line(self) -> str:
        """One line: fps, work per frame and the mean of each stage, in ms."""
        total = self.frame_ms()
        parts = [f"{self.fps():.1f} fps"]
        if total:
            parts.append(f"{total.mean_ms:.1f} ms/frame")
        stages = ", ".join(f"{k} {v.mean_ms:.1f}" for k, v in self.stages().items())
        skipped = self.frames - self.embedded
        text = ", ".join(parts) + (f" ({stages} ms)" if stages else "")
        text += f", {skipped}/{self.frames} frames skipped by the motion gate" if skipped else ""
        trouble = self.trouble()
        return text + (f"; {trouble}" if trouble else "")

    def table(self) -> str:
        """A per-stage table (mean / p50 / p95 ms) for --stats."""
        rows = [f"{'stage':<11}{'frames':>7}{'mean ms':>10}{'p50 ms':>9}{'p95 ms':>9}"]
        for name, s in self.stages().items():
            rows.append(f"{name:<11}{s.count:>7}{s.mean_ms:>10.2f}{s.p50_ms:>9.2f}{s.p95_ms:>9.2f}")
        for name, s in (
            ("frame", self.frame_ms()),
            ("embedded", self.frame_ms(embedded_only=True)),
            ("latency", self.latency_ms()),
        ):
            if s is not None:
                rows.append(f"{name:<11}{s.count:>7}{s.mean_ms:>10.2f}{s.p50_ms:>9.2f}{s.p95_ms:>9.2f}")
        rows.append(
            f"{self.fps():.2f} fps over the last {len(self._frames)} frames; "
            f"{self.embedded}/{self.frames} frames embedded"
        )
        trouble = self.trouble()
        if trouble:
            rows.append(trouble)
        return "\n".join(rows)
