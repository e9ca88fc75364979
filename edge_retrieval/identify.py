"""Which enrolled item is in this frame — or none: the query path of one frame.

    embed once → global + regional descriptors → scan (an item scores by its best region)
    → verify the shortlist (ORB + MAGSAC) → score = cosine + W·ln(1 + inliers)
    → match if the score passes the item's calibrated threshold and no negative vetoes it.

A `Preset` names a speed/quality trade-off; `default` verifies, `fast` does not.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from . import verify as verify_mod
from .embedder import Embedder
from .gallery import Gallery
from .regions import Regions

# score = cosine + INLIER_WEIGHT · ln(1 + inliers); chosen on the *tune* capture split
# (benchmarks/quality.py), where it beat inliers alone and cosine + inliers/25 or /50.
INLIER_WEIGHT = 0.25
QUANTIZATION_SLACK = 0.01  # int8 scan scores vs dequantized negatives: equal within this


@dataclass(frozen=True)
class Preset:
    name: str
    shortlist: int  # candidates verified (and reported)
    verify: bool
    levels: int  # R-MAC grid levels of the query's regions
    threshold: float  # until `edge-retrieval calibrate` stores one: FPIR 1 % on the tune captures, TUNED_FOR only
    query_features: int = verify_mod.QUERY_FEATURES


TUNED_FOR = "mobilenet_v2_240x320_int8"  # the model the presets' thresholds were measured with
PRESETS = {
    "default": Preset("default", shortlist=5, verify=True, levels=3, threshold=1.03),
    "fast": Preset("fast", shortlist=5, verify=False, levels=3, threshold=0.60),
}


@dataclass(frozen=True)
class Candidate:
    item_id: int
    label: str
    cosine: float  # best region's cosine with any of the item's embeddings
    region: np.ndarray  # that region, frame fractions x0, y0, x1, y1
    inliers: int = 0
    quad: np.ndarray | None = None  # the item's outline in the frame (verified), pixels
    points: np.ndarray | None = None  # inlier points in the frame, pixels
    vetoed: bool = False  # a negative of this item is closer than the item itself

    @property
    def score(self) -> float:
        return self.cosine + INLIER_WEIGHT * math.log1p(self.inliers)


@dataclass(frozen=True)
class Identification:
    match: str | None  # the label, or None: unknown
    item_id: int | None
    score: float  # the best candidate's score
    threshold: float | None
    candidates: list[Candidate] = field(default_factory=list)  # best first
    regions: Regions | None = None  # the frame's descriptors (row 0: the whole frame)

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None


class Identifier:
    """Embedder + gallery (+ verifier) → `Identification` per frame."""

    def __init__(self, embedder: Embedder, gallery: Gallery, preset: str | Preset = "default"):
        self.embedder, self.gallery = embedder, gallery
        self.preset = PRESETS[preset] if isinstance(preset, str) else preset
        self.verifier = verify_mod.Verifier()
        self._features: dict[int, list[verify_mod.LocalFeatures]] = {}
        self._generation = -1

    # -- pieces ------------------------------------------------------------------
    def item_features(self, item_id: int) -> list[verify_mod.LocalFeatures]:
        generation = self.gallery.generation()
        if generation != self._generation:  # the gallery changed: forget cached features
            self._features, self._generation = {}, generation
        if item_id not in self._features:
            self._features[item_id] = [verify_mod.LocalFeatures(kp, desc, size)
                                       for _kind, size, kp, desc in self.gallery.features(item_id)]
        return self._features[item_id]

    def shortlist(self, regions: Regions, k: int) -> list[Candidate]:
        """Items ranked by their best region's cosine."""
        matches = self.gallery.search(regions.vectors, k)
        best: dict[int, tuple[float, int, str]] = {}
        for r in range(len(regions)):
            for item_id, label, score in zip(matches.item_ids[r], matches.labels[r], matches.scores[r]):
                if item_id not in best or score > best[item_id][0]:
                    best[int(item_id)] = (float(score), r, str(label))
        ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:k]
        return [Candidate(i, label, s, regions.boxes[r]) for i, (s, r, label) in ranked]

    def vetoes(self, regions: Regions, candidates: list[Candidate]) -> set[int]:
        """Items whose enrolled negatives resemble the frame more than the item does."""
        neg_items, neg_vectors = self.gallery.negatives()
        if not len(neg_items):
            return set()
        best = (regions.vectors @ neg_vectors.T).max(0)
        return {c.item_id for c in candidates
                if (neg_items == c.item_id).any()
                and best[neg_items == c.item_id].max() >= c.cosine - QUANTIZATION_SLACK}

    # -- the frame -----------------------------------------------------------------
    def identify(self, frame: np.ndarray, boxes: Sequence[Sequence[float]] = ()) -> Identification:
        """One BGR frame (any size) → the identification. `boxes` (frame fractions x0, y0, x1, y1,
        e.g. from the motion mask) are described as extra regions."""
        preset = self.preset
        if not self.gallery.matrix().size:  # nothing enrolled (no count(*) of every item per frame)
            return Identification(None, None, float("-inf"), None)
        regions = self.embedder.regions(frame, preset.levels, boxes)
        candidates = self.shortlist(regions, preset.shortlist)
        if preset.verify:
            query = verify_mod.extract(frame, preset.query_features)
            sx, sy = frame.shape[1] / query.size[0], frame.shape[0] / query.size[1]
            verified = []
            for c in candidates:
                best = verify_mod.NOTHING
                for feats in self.item_features(c.item_id):
                    v = self.verifier.verify(query, feats)
                    if v.inliers > best.inliers:
                        best = v
                quad = best.quad * [sx, sy] if best.quad is not None else None
                verified.append(Candidate(c.item_id, c.label, c.cosine, c.region, best.inliers, quad,
                                          best.points * [sx, sy]))
            candidates = verified
        vetoed = self.vetoes(regions, candidates)
        candidates = [c if c.item_id not in vetoed else Candidate(**{**c.__dict__, "vetoed": True})
                      for c in candidates]
        candidates.sort(key=lambda c: -c.score)
        top = candidates[0]
        threshold = self.threshold_for(top.item_id)
        passed = not top.vetoed and threshold is not None and top.score > threshold
        return Identification(top.label if passed else None, top.item_id if passed else None, top.score,
                              threshold, candidates, regions)

    def threshold_for(self, item_id: int) -> float | None:
        """The gallery's calibrated threshold if it was calibrated for this preset, else the
        preset's when the model is the one it was measured with, else None (no match until
        `calibrate` ran: scores of another model mean something else)."""
        if self.gallery.calibration().get("preset") == self.preset.name:
            t = self.gallery.threshold_for(item_id)
            if t is not None:
                return t
        return self.preset.threshold if self.embedder.card.name == TUNED_FOR else None
