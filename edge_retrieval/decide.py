"""The decision: when does a frame's verdict become an alert? The only place votes and
cooldowns live; what a frame says (its `Ranking`: match or unknown) comes from the recognizer.

Pure logic with the clock passed in (the frame's time), so tests replay any timeline:

1. a frame *votes* for its match's label (the recognizer's verdict: threshold, margin, veto);
2. a label is *confirmed* when it has M of the last N votes of its source;
3. a confirmed label alerts unless it is cooling down for that (label, source); every
   confirmation extends the cooldown, so a label standing in view alerts once and again only
   after it has been gone for `cooldown` seconds. Cooldowns are per label: a different label
   alerts as soon as it is confirmed.

Frames where the scene moved but nothing matched vote "unknown", which is confirmed the same
way (the kiosk shows it); it alerts only with `unknown = True`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Hashable

from .recognize import Ranking

MATCH, UNKNOWN = "match", "unknown"


@dataclass(frozen=True)
class Decision:
    """An alert (or, from `confirmed`, what M of the last N frames agree on)."""

    kind: str  # "match" or "unknown"
    label: str | None  # None for unknown
    item_id: int | None
    score: float
    margin: float
    votes: int  # agreeing frames in the window
    window: int  # N
    source: str
    time: float  # the frame's time (seconds, the source's clock)
    threshold: float | None = None  # the threshold the frame's score passed


@dataclass
class _SourceState:
    votes: deque = field(default_factory=deque)
    cooldown_until: dict[Hashable, float] = field(default_factory=dict)


class Decider:
    """Turns per-frame rankings into decisions, per source."""

    def __init__(
        self,
        *,
        m: int = 3,
        n: int = 5,
        cooldown: float = 30.0,
        unknown: bool = False,
        unknown_cooldown: float | None = None,
    ):
        """`unknown_cooldown`: the cooldown of "unknown" (None: `cooldown`, as a label's)."""
        if not 1 <= m <= n:
            raise ValueError(f"votes: need 1 <= m <= n, got m={m}, n={n}")
        self.m, self.n = m, n
        self.cooldown, self.unknown = cooldown, unknown
        self.unknown_cooldown = cooldown if unknown_cooldown is None else unknown_cooldown
        self._sources: dict[str, _SourceState] = {}
        self._confirmed: dict[str, Decision | None] = {}

    @classmethod
    def from_config(cls, config) -> "Decider":
        return cls(m=config.votes.m, n=config.votes.n, cooldown=config.cooldown, unknown=config.unknown)

    def update(self, source: str, ranking: Ranking, t: float, moving: bool = False) -> Decision | None:
        """Record one processed frame of `source` at time t; the alert it completes, if any."""
        state = self._sources.setdefault(source, _SourceState(votes=deque(maxlen=self.n)))
        self._prune(state, t)
        match = ranking.match
        if match is not None:
            key: Hashable = (MATCH, match.label)
        elif moving:
            key = (UNKNOWN, None)
        else:
            key = None
        state.votes.append(key)
        self._confirmed[source] = None
        if key is None:
            return None
        count = sum(1 for v in state.votes if v == key)
        if count < self.m:
            return None
        kind = key[0]
        best = ranking.best
        decision = Decision(
            kind=kind,
            label=match.label if match else None,
            item_id=match.item_id if match else None,
            score=best.score if best else -math.inf,
            margin=ranking.margin,
            votes=count,
            window=self.n,
            source=source,
            time=t,
            threshold=ranking.threshold,
        )
        self._confirmed[source] = decision
        if kind == UNKNOWN and not self.unknown:
            return None
        until = state.cooldown_until.get(key)
        state.cooldown_until[key] = t + (self.unknown_cooldown if kind == UNKNOWN else self.cooldown)
        if until is not None and t < until:
            return None
        return decision

    def confirmed(self, source: str) -> Decision | None:
        """What the last frame of `source` confirmed (M of the last N agree), cooling down or not."""
        return self._confirmed.get(source)

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
            self._confirmed.clear()
        else:
            self._sources.pop(source, None)
            self._confirmed.pop(source, None)
