"""The decision: when does a frame's best match become an alert?

Pure logic with the clock passed in (the frame's time), so tests replay any timeline:

1. a frame *votes* for its top label when the score passes the threshold (the item's own
   `threshold` metadata, else `thresholds[label]`, else the global one) and leads the best
   score of a different label by at least `margin`;
2. a label is *confirmed* when it has M of the last N votes of its source;
3. a confirmed label alerts unless it is cooling down for that (label, source); every
   confirmation extends the cooldown, so a label standing in view alerts once and again only
   after it has been gone for `cooldown` seconds. Cooldowns are per label: a different label
   alerts as soon as it is confirmed.

Optionally, frames where the scene moved but nothing passed vote "unknown", which is
confirmed and cooled down the same way.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

MATCH, UNKNOWN = "match", "unknown"


@dataclass(frozen=True)
class Candidate:
    """What one processed frame says."""

    label: str | None  # the top label (None: empty gallery)
    item_id: int | None
    score: float  # its cosine score
    margin: float  # over the best different label (inf when there is none)
    threshold: float  # the threshold that applied
    passed: bool  # score and margin both good enough
    moving: bool = False  # the scene changed (motion gate) in this frame


@dataclass(frozen=True)
class Decision:
    """An alert."""

    kind: str  # "match" or "unknown"
    label: str | None  # None for unknown
    item_id: int | None
    score: float
    margin: float
    votes: int  # agreeing frames in the window
    window: int  # N
    source: str
    time: float  # the frame's time (seconds, the source's clock)


@dataclass
class _SourceState:
    votes: deque = field(default_factory=deque)
    cooldown_until: dict[Hashable, float] = field(default_factory=dict)


class Decider:
    """Turns per-frame candidates into decisions, per source."""

    def __init__(self, *, threshold: float = 0.5, margin: float = 0.05, m: int = 3, n: int = 5,
                 cooldown: float = 30.0, unknown: bool = False, thresholds: dict[str, float] | None = None,
                 item_threshold: Callable[[int], float | None] | None = None):
        if not 1 <= m <= n:
            raise ValueError(f"votes: need 1 <= m <= n, got m={m}, n={n}")
        self.threshold, self.margin, self.m, self.n = threshold, margin, m, n
        self.cooldown, self.unknown = cooldown, unknown
        self.thresholds = dict(thresholds or {})
        self.item_threshold = item_threshold
        self._sources: dict[str, _SourceState] = {}

    @classmethod
    def from_config(cls, config, item_threshold: Callable[[int], float | None] | None = None) -> "Decider":
        return cls(threshold=config.threshold, margin=config.margin, m=config.votes.m, n=config.votes.n,
                   cooldown=config.cooldown, unknown=config.unknown, thresholds=config.thresholds,
                   item_threshold=item_threshold)

    def threshold_for(self, item_id: int | None, label: str | None) -> float:
        if item_id is not None and self.item_threshold is not None:
            own = self.item_threshold(item_id)
            if own is not None:
                return float(own)
        if label is not None and label in self.thresholds:
            return self.thresholds[label]
        return self.threshold

    def candidate(self, item_ids: Sequence[int], labels: Sequence[str], scores: Sequence[float],
                  moving: bool = False) -> Candidate:
        """One frame's top-k row (best first) → its candidate."""
        if len(labels) == 0:
            return Candidate(None, None, -math.inf, math.inf, self.threshold, False, moving)
        label, item_id, score = str(labels[0]), int(item_ids[0]), float(scores[0])
        runner = next((float(s) for lab, s in zip(labels[1:], scores[1:]) if str(lab) != label), None)
        margin = score - runner if runner is not None else math.inf
        threshold = self.threshold_for(item_id, label)
        passed = score >= threshold and margin >= self.margin
        return Candidate(label, item_id, score, margin, threshold, passed, moving)

    def update(self, source: str, candidate: Candidate, t: float) -> Decision | None:
        """Record one processed frame of `source` at time t; the decision it completes, if any."""
        state = self._sources.setdefault(source, _SourceState(votes=deque(maxlen=self.n)))
        self._prune(state, t)
        if candidate.passed:
            key: Hashable = (MATCH, candidate.label)
        elif self.unknown and candidate.moving:
            key = (UNKNOWN, None)
        else:
            key = None
        state.votes.append(key)
        if key is None:
            return None
        count = sum(1 for v in state.votes if v == key)
        if count < self.m:
            return None
        until = state.cooldown_until.get(key)
        state.cooldown_until[key] = t + self.cooldown
        if until is not None and t < until:
            return None
        kind = key[0]
        return Decision(kind=kind, label=candidate.label if kind == MATCH else None,
                        item_id=candidate.item_id if kind == MATCH else None, score=candidate.score,
                        margin=candidate.margin, votes=count, window=self.n, source=source, time=t)

    def cooling(self, source: str, t: float) -> list[str]:
        """Labels (and "unknown") of `source` still cooling down at time t."""
        state = self._sources.get(source)
        if state is None:
            return []
        return [k[1] if k[0] == MATCH else UNKNOWN for k, until in state.cooldown_until.items() if t < until]

    @staticmethod
    def _prune(state: _SourceState, t: float) -> None:
        for key in [k for k, until in state.cooldown_until.items() if until <= t]:
            del state.cooldown_until[key]

    def reset(self, source: str | None = None) -> None:
        """Forget votes and cooldowns (of one source, or all)."""
        if source is None:
            self._sources.clear()
        else:
            self._sources.pop(source, None)
