"""The whole-frame recognizer: one descriptor of the frame, the gallery's nearest items.

The fastest preset (≈ 1.2× a bare model invoke per frame); it finds items that fill much of
the frame (a kiosk, a card held close), not a small item in a busy scene: the `default`
preset does that.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from ..regions import Regions
from . import Candidate, Preset, Ranking, Stage, no_stage
from .thresholds import Negatives, Thresholds

WHOLE_FRAME = np.array([[0, 0, 1, 1]], np.float32)  # the one region (frame fractions) the descriptor covers


class WholeRecognizer:
    def __init__(self, embedder, gallery, preset: Preset, thresholds: Thresholds, *, stage: Stage = no_stage):
        self.embedder, self.gallery, self.preset, self.thresholds = embedder, gallery, preset, thresholds
        self.stage = stage
        self.negatives = Negatives(gallery)

    def recognize(self, frame: np.ndarray, boxes: Sequence[Sequence[float]] = ()) -> Ranking:
        emb, stage = self.embedder, self.stage
        with stage("preprocess"):
            tensor = emb.prepare(frame)
        with stage("invoke"):
            output = emb.invoke(tensor)
        with stage("pool"):
            descriptor = emb.describe(output)
        with stage("scan"):
            matches = self.gallery.search(descriptor, k=self.preset.shortlist)
            scores = matches.scores[0].tolist()
            candidates = [
                Candidate(int(i), str(label), s, s)
                for i, label, s in zip(matches.item_ids[0].tolist(), matches.labels[0].tolist(), scores)
            ]
            vetoed = self.negatives.vetoed(np.asarray(descriptor).reshape(1, -1), candidates)
            if vetoed:
                candidates = [replace(c, vetoed=True) if c.item_id in vetoed else c for c in candidates]
            match, threshold, margin = self.thresholds.verdict(candidates)
        whole = Regions(np.asarray(descriptor, np.float32).reshape(1, -1), WHOLE_FRAME)
        return Ranking(self.preset.name, candidates, match, threshold, margin, whole)

    def close(self) -> None:
        pass
