"""Which enrolled item is in this frame — or none. ONE interface for every surface.

`search`, `demo`, `calibrate`, `eval`, the service and the kiosk (live view and uploaded photo)
all call `Recognizer.recognize(frame) -> Ranking`: the candidates in their final order with
their final scores, and the verdict (match or unknown) decided by `thresholds.Thresholds`,
the one place scores become answers. Votes over frames and cooldowns are the decision
layer's (decide.py).

Implementations: `whole.WholeRecognizer` (the whole-frame descriptor: the fastest, for items
that fill the frame), `regional.RegionalRecognizer` (R-MAC regions, ORB votes over the
gallery's local features, geometric verification: items anywhere in a cluttered scene) and
`faces.FaceRecognizer` (people: each face found, aligned and matched against a people
gallery; `open_face_recognizer`). A `Preset` names one of them with its settings and its
score scale.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ContextManager, Protocol, Sequence

import numpy as np

from .. import verify as verify_mod

if TYPE_CHECKING:
    from ..regions import Regions

# Until `edge-retrieval calibrate` stores thresholds, a preset's own apply — measured with this
# model only (scores of another model mean something else: nothing matches before calibrate).
TUNED_FOR = "mobilenet_v2_240x320_int8"


@dataclass(frozen=True)
class Preset:
    """A speed/quality trade-off and its score scale."""

    name: str
    threshold: float  # until calibrate: whole: the demo clip's gap; others: FPIR 1 % on the tune captures
    margin: float | None = None  # lead over the next different label's score (None: not asked)
    regional: bool = True  # regions + verification (RegionalRecognizer), else the whole frame
    verify: bool = False  # ORB votes and geometric verification
    shortlist: int = 5  # the scan's best items, verified and reported
    levels: int = 3  # R-MAC grid levels of the query's regions
    query_features: int = verify_mod.QUERY_FEATURES
    voted: int = 0  # the most voted items added to the shortlist (verify only)
    sift: bool = False  # the second verifier (SIFT) on the candidates ORB left without inliers (verify only)
    dense: bool = False  # the dense verifier (verify.align) on the best candidate, if still unverified (verify only)
    tuned_for: str = TUNED_FOR  # the model `threshold` was measured with (another's scores mean something else)


# whole: the built-in demo clip's whole-frame scores (benchmarks/thresholds.py): items >= 0.486,
# everything else <= 0.222 (threshold 0.35), margins >= 0.326 against <= 0.130 (margin 0.2)
PRESETS = {
    "default": Preset("default", threshold=0.632, verify=True, voted=3, sift=True, dense=True),
    "quick": Preset("quick", threshold=0.620, verify=True, voted=3, query_features=1000),
    "fast": Preset("fast", threshold=0.60),
    "whole": Preset("whole", threshold=0.35, margin=0.2, regional=False),
    # people (recognize/faces.py): cosine of a face to a person's best enrolment face; the threshold
    # is FPIR 1 % on the tune fold's camera views of ../shared/data/faces (benchmarks/faces.py)
    "faces": Preset("faces", threshold=0.353, regional=False, tuned_for="mobilefacenet_int8"),
}
DEFAULT_PRESET = "default"


@dataclass(frozen=True)
class Candidate:
    """One item as the frame's evidence for it."""

    item_id: int
    label: str
    score: float  # the final score: what the threshold is compared with (the preset's scale)
    cosine: float  # the CNN's: the item's best embedding against the frame's best region
    region: np.ndarray | None = None  # that region, frame fractions x0, y0, x1, y1
    inliers: int = 0  # geometric verification's inliers
    votes: int = 0  # ORB features of the frame whose nearest gallery feature is the item's
    outline: np.ndarray | None = None  # the item's verified outline in the frame, (4, 2) pixels
    points: np.ndarray | None = None  # inlier points in the frame, pixels
    aligned: float = 0.0  # the dense verifier's correlation at `outline`, when it verified the item (else 0)
    vetoed: bool = False  # a negative of the item ("this is NOT X") resembles the frame more


@dataclass(frozen=True)
class Face:
    """One face in the frame (the faces preset) and who it is: its own ranking and verdict."""

    box: np.ndarray  # x0, y0, x1, y1 pixels
    landmarks: np.ndarray  # (5, 2) pixels: eyes, nose, mouth corners
    candidates: list[Candidate] = field(default_factory=list)  # people, best first
    match: Candidate | None = None
    threshold: float | None = None
    margin: float = math.inf  # the best candidate's lead over the next different person's

    @property
    def score(self) -> float:
        return self.candidates[0].score if self.candidates else -math.inf


@dataclass(frozen=True)
class Ranking:
    """A frame's answer: the ranked candidates (best first, final scores) and the verdict."""

    preset: str
    candidates: list[Candidate] = field(default_factory=list)
    match: Candidate | None = None  # candidates[0] when it passed, else None: unknown
    threshold: float | None = None  # the threshold applied to candidates[0] (None: no match possible)
    margin: float = math.inf  # candidates[0]'s score over the next different label's
    regions: Regions | None = None  # the frame's descriptors (row 0: the whole frame; whole: only it)
    faces: list[Face] | None = None  # every face found, best score first (the faces preset only)

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    @property
    def descriptor(self) -> np.ndarray | None:
        """The descriptor the verdict rests on, what an event stores for search by example: the
        best candidate's region (the part of the frame that looked most like an item), else the
        whole frame's; None if the recognizer kept none."""
        if self.regions is None:
            return None
        best = self.best
        if best is not None and best.region is not None:
            rows = np.flatnonzero(np.all(self.regions.boxes == best.region, axis=1))
            if len(rows):
                return self.regions.vectors[rows[0]]
        return self.regions.vectors[0]

    @property
    def label(self) -> str | None:
        return self.match.label if self.match is not None else None

    @property
    def score(self) -> float:
        return self.candidates[0].score if self.candidates else -math.inf


class Recognizer(Protocol):
    """What every surface calls."""

    preset: Preset

    def recognize(self, frame: np.ndarray, boxes: Sequence[Sequence[float]] = ()) -> Ranking:
        """One BGR frame → its ranking. `boxes`: extra regions (frame fractions x0, y0, x1, y1),
        e.g. where the scene moved; recognizers that do not use regions ignore them."""
        ...


Stage = Callable[[str], ContextManager]


def no_stage(name: str) -> ContextManager:
    return nullcontext()


def open_recognizer(
    embedder,
    gallery,
    preset: str | Preset = DEFAULT_PRESET,
    *,
    threshold: float | None = None,
    margin: float | None = None,
    stage: Stage = no_stage,
) -> Recognizer:
    """The recognizer a preset names. `threshold`, `margin`: the user's overrides (config, kiosk)."""
    from .regional import RegionalRecognizer
    from .thresholds import Thresholds
    from .whole import WholeRecognizer

    preset = PRESETS[preset] if isinstance(preset, str) else preset
    if preset.name == "faces":
        raise ValueError("the faces preset needs the face models: recognize.faces.open_face_recognizer")
    card = getattr(embedder, "card", None)  # (test fakes have none)
    thresholds = Thresholds(gallery, preset, card.name if card else "", threshold=threshold, margin=margin)
    cls = RegionalRecognizer if preset.regional else WholeRecognizer
    return cls(embedder, gallery, preset, thresholds, stage=stage)


def ranking_json(ranking: Ranking, metadata: dict[int, dict], k: int | None = None) -> dict:
    """The ranking as `search --json` and the kiosk's `POST /api/search` give it: `matches` is
    the final ranking (its first entry is `match` when there is one)."""

    def num(x: float | None) -> float | None:
        return round(float(x), 4) if x is not None and math.isfinite(x) else None

    best = ranking.best
    out = {
        "match": ranking.label,
        "score": num(ranking.score),
        "threshold": num(ranking.threshold),
        "margin": num(ranking.margin),
        "inliers": best.inliers if best else 0,
        "preset": ranking.preset,
        "matches": [
            {
                "label": c.label,
                "item_id": c.item_id,
                "score": num(c.score),
                "cosine": num(c.cosine),
                "inliers": c.inliers,
                "aligned": num(c.aligned),
                "votes": c.votes,
                "vetoed": c.vetoed,
                "metadata": metadata.get(c.item_id, {}),
            }
            for c in ranking.candidates[:k]
        ],
    }
    if ranking.faces is not None:
        out["faces"] = [
            {
                "box": [int(round(float(v))) for v in f.box],
                "match": f.match.label if f.match is not None else None,
                "score": num(f.score),
            }
            for f in ranking.faces
        ]
    return out
