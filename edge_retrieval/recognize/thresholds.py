"""The one place a ranking becomes match or unknown.

Threshold precedence, for the best candidate's item:
1. its calibrated per-item threshold (`edge-retrieval calibrate`, the gallery's `thresholds`
   table), when the gallery was calibrated for this preset;
2. the user's threshold (`decision.threshold` in the config, or the kiosk's staff setting);
3. the calibrated global threshold, when calibrated for this preset;
4. the preset's own, when the model is the one it was measured with; else none (no match
   until `calibrate` ran: another model's scores mean something else).
A match needs score > threshold (calibrate sets thresholds so), a lead of at least the margin
(the user's, else the preset's; none by default for the regional presets) over the next
different label, and no veto by the item's negatives.
"""

from __future__ import annotations

import math

from . import Candidate, Preset


class Thresholds:
    def __init__(
        self, gallery, preset: Preset, model_name: str, *, threshold: float | None = None, margin: float | None = None
    ):
        self.gallery, self.preset, self.model_name = gallery, preset, model_name
        self.threshold = threshold  # the user's global threshold (None: calibrated or the preset's)
        self.margin = margin if margin is not None else preset.margin
        self._generation = None
        self._calibrated: tuple[float | None, dict[int, float]] = (None, {})

    def calibrated(self) -> tuple[float | None, dict[int, float]]:
        """The gallery's global and per-item thresholds for this preset, read once per gallery generation."""
        generation = self.gallery.seen_generation
        if generation != self._generation or generation < 0:
            if self.gallery.calibration().get("preset") == self.preset.name:
                self._calibrated = (self.gallery.threshold, self.gallery.thresholds())
            else:
                self._calibrated = (None, {})
            self._generation = generation
        return self._calibrated

    def for_item(self, item_id: int) -> float | None:
        _, per_item = self.calibrated()
        return per_item[item_id] if item_id in per_item else self.default()

    def default(self) -> float | None:
        """The global threshold in force (what the kiosk's staff page shows)."""
        calibrated, _ = self.calibrated()
        if self.threshold is not None:
            return self.threshold
        if calibrated is not None:
            return calibrated
        return self.preset.threshold if self.model_name == self.preset.tuned_for else None

    def verdict(self, candidates: list[Candidate]) -> tuple[Candidate | None, float | None, float]:
        """(the match or None, the threshold applied, the margin) for candidates ranked best first."""
        if not candidates:
            return None, None, math.inf
        top = candidates[0]
        runner = max((c.score for c in candidates[1:] if c.label != top.label), default=None)
        margin = top.score - runner if runner is not None else math.inf
        threshold = self.for_item(top.item_id)
        passed = (
            not top.vetoed
            and threshold is not None
            and top.score > threshold
            and (self.margin is None or margin >= self.margin)
        )
        return (top if passed else None), threshold, margin


QUANTIZATION_SLACK = 0.01  # int8 scan scores vs dequantized negatives: equal within this


class Negatives:
    """The gallery's "this is NOT X" photos, read once per gallery generation."""

    def __init__(self, gallery):
        self.gallery = gallery
        self._generation = None
        self._items, self._vectors = None, None

    def vetoed(self, vectors, candidates: list[Candidate]) -> set[int]:
        """Items whose negatives resemble the frame's descriptors (`vectors`, one per region) at
        least as much as the item itself does (its candidate's cosine)."""
        generation = self.gallery.seen_generation
        if generation != self._generation or generation < 0:
            self._items, self._vectors = self.gallery.negatives()
            self._generation = generation
        items = self._items
        if not len(items):
            return set()
        best = (vectors @ self._vectors.T).max(0)
        return {
            c.item_id
            for c in candidates
            if (items == c.item_id).any() and best[items == c.item_id].max() >= c.cosine - QUANTIZATION_SLACK
        }
