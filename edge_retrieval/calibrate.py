"""Calibrated "unknown": thresholds on the final score for a target false-alarm rate.

Negatives are frames whose item is not enrolled (or nothing at all): the user's own (e.g.
empty-scene frames of the camera), else a built-in bank — the bundled photos that are not
enrolled, each with camera-like views — plus the photos enrolled as "this is NOT item X"
whose files are still there. The global threshold is the lowest that lets at most
`fpir` of them through (a score must be *above* it). Labelled positive captures, when given,
say what that costs: the expected detection-and-identification rate (DIR).

Per-item thresholds where the data supports them (at least MIN_POSITIVES_PER_ITEM positives
of the item): lowered to the item's 5th-percentile positive score, never to or below the best
negative that landed on that item, and never raised (so the false alarms on the calibration
negatives do not grow).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from . import augment
from .demo import PHOTOS
from .enroll import list_images
from .errors import GalleryError
from .preprocess import read_image
from .recognize import Recognizer

MIN_POSITIVES_PER_ITEM = 5
BUILTIN_VIEWS = 4  # views per bundled photo in the built-in negative bank


@dataclass(frozen=True)
class Calibration:
    preset: str
    target_fpir: float
    threshold: float
    per_item: dict[int, float]
    negatives: int
    negatives_source: str
    fpir: float  # measured on the negatives at the thresholds
    positives: int = 0
    dir: float | None = None  # measured on the positives at the thresholds (None without positives)
    recall_at_1: float | None = None  # top candidate right, whatever the score
    notes: list[str] = field(default_factory=list)

    def report(self) -> dict:
        out = asdict(self)
        out["per_item"] = {str(k): v for k, v in self.per_item.items()}
        return out


def threshold_at(scores: np.ndarray, fpir: float) -> float:
    """The lowest threshold that lets at most `fpir` of `scores` through (strictly above)."""
    s = np.sort(np.asarray(scores, np.float64))[::-1]
    allowed = int(np.floor(fpir * len(s)))
    return float(s[allowed]) if allowed < len(s) else float("-inf")


def builtin_negatives(recognizer: Recognizer) -> tuple[list[np.ndarray], str]:
    """Bundled photos that are not enrolled (label or file name), each with views; plus the
    readable photos of enrolled negatives."""
    gallery = recognizer.gallery
    labels = {item.label for item in gallery.items()}
    enrolled_files = {Path(s).name for (s,) in gallery.db.execute("SELECT source FROM embeddings")}
    frames = []
    photos = [p for p in list_images(PHOTOS) if p.stem not in labels and p.name not in enrolled_files]
    for i, p in enumerate(photos):
        image = read_image(p)
        frames.extend([image] + augment.views(image, BUILTIN_VIEWS, seed=i))
    negative_files = [s for (s,) in gallery.db.execute("SELECT source FROM negatives") if s and Path(s).is_file()]
    frames.extend(read_image(s) for s in negative_files)
    return frames, (
        f"built-in: {len(photos)} bundled photos × {BUILTIN_VIEWS + 1} views"
        f" + {len(negative_files)} enrolled negative photo(s)"
    )


def calibrate(
    recognizer: Recognizer,
    positives: Iterable[tuple[str, np.ndarray]] = (),
    negatives: Iterable[np.ndarray] | None = None,
    *,
    fpir: float = 0.01,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> Calibration:
    """Thresholds for `recognizer`'s preset from (label, frame) positives and negative frames
    (None: the built-in bank). Does not store them: `store` does."""
    if not 0 < fpir < 1:
        raise GalleryError(f"target false-alarm rate must be between 0 and 1, not {fpir}")
    gallery = recognizer.gallery
    ids = {item.label: item.id for item in gallery.items()}
    if not ids:
        raise GalleryError(f"{gallery.path}: nothing enrolled to calibrate")
    notes = []
    if negatives is None:
        negatives, source = builtin_negatives(recognizer)
    else:
        negatives, source = list(negatives), "given"
    if not negatives:
        raise GalleryError("no negative images to calibrate with")
    neg_scores, neg_items = [], []
    for frame in progress(negatives):
        result = recognizer.recognize(frame)
        best = result.best
        neg_scores.append(result.score if best and not best.vetoed else float("-inf"))
        neg_items.append(best.item_id if best else None)
    neg_scores = np.array(neg_scores)
    threshold = threshold_at(neg_scores, fpir)
    if len(negatives) < 1 / fpir:
        notes.append(
            f"only {len(negatives)} negatives: a false-alarm rate of {fpir:g} is not resolved "
            f"(want at least {int(np.ceil(1 / fpir))})"
        )

    pos = []  # (item id, correct, score)
    for label, frame in progress(list(positives)):
        if label not in ids:
            raise GalleryError(f"positive labelled {label!r}: no such item in {gallery.path}")
        result = recognizer.recognize(frame)
        best = result.best
        pos.append((ids[label], best is not None and best.item_id == ids[label] and not best.vetoed, result.score))

    per_item: dict[int, float] = {}
    by_item: dict[int, list[float]] = {}
    for item_id, correct, score in pos:
        if correct:
            by_item.setdefault(item_id, []).append(score)
    for item_id, scores in by_item.items():
        if len(scores) < MIN_POSITIVES_PER_ITEM:
            continue
        on_item = [s for s, i in zip(neg_scores, neg_items) if i == item_id]
        floor = max(on_item) if on_item else float("-inf")
        lowered = float(np.percentile(scores, 5)) - 1e-6
        t = max(floor, min(threshold, lowered))
        if t < threshold:
            per_item[item_id] = t

    def passes(item_id, score):
        return score > per_item.get(item_id, threshold)

    measured_fpir = float(np.mean([passes(i, s) for s, i in zip(neg_scores, neg_items)]))
    result = Calibration(
        recognizer.preset.name, fpir, threshold, per_item, len(negatives), source, measured_fpir, notes=notes
    )
    if pos:
        result = Calibration(
            **{
                **asdict(result),
                "positives": len(pos),
                "dir": float(np.mean([c and passes(i, s) for i, c, s in pos])),
                "recall_at_1": float(np.mean([c for _, c, _ in pos])),
            }
        )
    return result


def store(recognizer: Recognizer, calibration: Calibration) -> None:
    """Write the thresholds into the gallery (every recognizer of that preset reads them from there)."""
    recognizer.gallery.set_thresholds(calibration.threshold, calibration.per_item, calibration.report())


def labelled_frames(folder: Path) -> list[tuple[str, np.ndarray]]:
    """A folder of positives: sub-folder names are the labels."""
    out = []
    for path in list_images(folder):
        rel = path.relative_to(folder)
        if len(rel.parts) < 2:
            raise GalleryError(f"{path}: positives must sit in a sub-folder named after their label")
        out.append((rel.parts[0], read_image(path)))
    return out
