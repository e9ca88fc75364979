"""People: every face in the frame found, aligned, described and matched against a people gallery.

A people gallery is an ordinary gallery whose items are persons, each with the descriptors of
its enrolment faces (several photos a person), bound to the face embedder's sha256 like any
gallery to its model. Each face gets its own ranking and verdict through `thresholds.Thresholds`
(the one place scores become answers); the frame's answer (`Ranking.match`) is the best-scoring
face that was identified, and its candidates are the persons seen, identified ones first.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..faces.align import align
from ..faces.detect import MIN_FACE, Detector
from ..faces.embed import FaceEmbedder
from . import PRESETS, Candidate, Face, Preset, Ranking, Stage, no_stage
from .thresholds import Negatives, Thresholds

FACES = PRESETS["faces"]


class FaceRecognizer:
    def __init__(
        self,
        detector: Detector,
        embedder: FaceEmbedder,
        gallery,
        preset: Preset = FACES,
        thresholds: Thresholds | None = None,
        *,
        stage: Stage = no_stage,
        min_face: float = MIN_FACE,
    ):
        self.detector, self.embedder, self.gallery, self.preset = detector, embedder, gallery, preset
        self.thresholds = thresholds or Thresholds(gallery, preset, embedder.card.name)
        self.stage, self.min_face = stage, min_face
        self.negatives = Negatives(gallery)
        self._owned: list = []  # models opened by open_face_recognizer, closed with it

    def faces(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes, landmarks, descriptors) of the frame's faces, best detection first."""
        with self.stage("detect"):
            found = self.detector.detect(frame, self.min_face)
        with self.stage("embed"):
            vectors = self.embedder.embed([align(frame, lm) for lm in found.landmarks])
        return found.boxes, found.landmarks, vectors

    def recognize(self, frame: np.ndarray, boxes: Sequence[Sequence[float]] = ()) -> Ranking:
        """One BGR frame → every face's ranking and the frame's answer. `boxes` (motion) are not
        used: the detector looks at the whole frame."""
        found, landmarks, vectors = self.faces(frame)
        with self.stage("scan"):
            faces = [self._face(b, lm, v) for b, lm, v in zip(found, landmarks, vectors)]
        faces.sort(key=lambda f: f.score, reverse=True)
        identified = [f for f in faces if f.match is not None]
        lead = identified[0] if identified else (faces[0] if faces else None)
        # the persons seen, each at its best face's score: identified ones first (candidates[0]
        # is the match when there is one), then the rest
        best: dict[int, tuple[bool, Candidate]] = {}
        for f in faces:
            for c in f.candidates:
                key = (f.match is not None and f.match.item_id == c.item_id, c.score)
                if c.item_id not in best or key > (best[c.item_id][0], best[c.item_id][1].score):
                    best[c.item_id] = (key[0], c)
        candidates = [c for _, c in sorted(best.values(), key=lambda x: (x[0], x[1].score), reverse=True)]
        return Ranking(
            self.preset.name,
            candidates,
            lead.match if lead is not None else None,
            lead.threshold if lead is not None else None,
            lead.margin if lead is not None else math.inf,
            faces=faces,
        )

    def _face(self, box: np.ndarray, landmarks: np.ndarray, vector: np.ndarray) -> Face:
        matches = self.gallery.search(vector, k=self.preset.shortlist)
        candidates = [
            Candidate(int(i), str(label), s, s)
            for i, label, s in zip(matches.item_ids[0].tolist(), matches.labels[0].tolist(), matches.scores[0].tolist())
        ]
        vetoed = self.negatives.vetoed(vector[None], candidates) if candidates else set()
        if vetoed:
            candidates = [replace(c, vetoed=True) if c.item_id in vetoed else c for c in candidates]
        match, threshold, margin = self.thresholds.verdict(candidates)
        return Face(box, landmarks, candidates, match, threshold, margin)

    def close(self) -> None:
        for model in self._owned:
            model.close()
        self._owned = []


def open_face_recognizer(
    gallery,
    model: str | Path | None = None,
    *,
    threshold: float | None = None,
    threads: int = 2,
    stage: Stage = no_stage,
    min_face: float = MIN_FACE,
) -> FaceRecognizer:
    """The faces recognizer over a people gallery, with the bundled detector and the face
    embedder `model` (default: the bundled one); `threshold`: the user's override (config,
    kiosk). Raises ModelMismatchError when the gallery belongs to another model. `close()`
    closes the models it opened."""
    embedder = FaceEmbedder(model, threads)
    try:
        gallery.check_model(embedder.sha256, embedder.card.name)
        detector = Detector(threads=threads)
    except BaseException:
        embedder.close()
        raise
    thresholds = Thresholds(gallery, FACES, embedder.card.name, threshold=threshold)
    recognizer = FaceRecognizer(detector, embedder, gallery, FACES, thresholds, stage=stage, min_face=min_face)
    recognizer._owned = [detector, embedder]
    return recognizer
