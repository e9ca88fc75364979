"""Enrolling people: one face a photo, checked, described, added to the person's item.

A photo is refused, with a one-line reason, unless exactly one face is found in it (faces
less than COMPETING × the largest one's width are the background and do not count), at
least MIN_WIDTH pixels wide, not in profile (from the landmarks) and not too blurred (the
variance of the aligned crop's Laplacian). Smaller, turned, softer or darker faces are
enrolled with a warning. Every photo is checked before anything is written; the accepted
ones go in one transaction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

from ..enroll import EnrollReport, add_item
from ..errors import BadImageError, EdgeRetrievalError, GalleryError
from ..preprocess import read_image
from .align import align

DETECT_SIDE = 1280  # photos are searched at most this large (a phone photo's face stays ≥ 100 px)
DETECT_MIN_FACE = 20  # pixels at that size: smaller faces are reported as too small, not as missing
COMPETING = 0.6  # a second face at least this fraction of the largest's width: "several faces"
MIN_WIDTH, WARN_WIDTH = 48, 80  # face width in the photo's pixels: refused below, warned below
MIN_SHARPNESS, WARN_SHARPNESS = 30.0, 80.0  # Laplacian variance of the 112×112 crop (sharp: 150–2600)
PROFILE, TURNED = 0.05, 0.25  # nose position between the eyes (0.5 frontal): refused / warned beyond
DARK = 50  # mean grey level of the crop below which a warning is given


class FaceEnrollError(EdgeRetrievalError):
    """Photos refused for enrolment; `refused` holds one BadImageError (path: reason) each."""

    def __init__(self, refused: list[BadImageError]):
        self.refused = refused
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        super().__init__(f"{refused[0]}{more}; nothing enrolled (--skip-bad enrols the other photos)")


def nose_position(landmarks: np.ndarray) -> float:
    """Where the nose sits along the line from the left eye to the right eye: 0.5 frontal,
    near 0 or 1 (or beyond) when the head is turned to profile."""
    left, right, nose = landmarks[0], landmarks[1], landmarks[2]
    axis = right - left
    return float(np.dot(nose - left, axis) / max(float(np.dot(axis, axis)), 1e-6))


def sharpness(crop: np.ndarray) -> float:
    """The variance of the aligned crop's Laplacian (low: blurred)."""
    return float(cv2.Laplacian(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


def face_of(recognizer, image: np.ndarray, name: str) -> tuple[np.ndarray, list[str]]:
    """The one face of an enrolment photo as (descriptor, warnings); BadImageError(name, reason) otherwise."""
    scale = min(1.0, DETECT_SIDE / max(image.shape[:2]))
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image
    found = recognizer.detector.detect(small, DETECT_MIN_FACE)
    if not len(found):
        raise BadImageError(name, "no face found")
    widths = found.widths / scale
    largest = int(np.argmax(widths))
    competing = int((widths >= COMPETING * widths[largest]).sum())
    if competing > 1:
        raise BadImageError(name, f"{competing} faces found (an enrolment photo shows one person)")
    width = float(widths[largest])
    if width < MIN_WIDTH:
        raise BadImageError(name, f"face too small ({width:.0f} px wide, at least {MIN_WIDTH})")
    landmarks = found.landmarks[largest] / scale
    nose = nose_position(landmarks)
    if not PROFILE <= nose <= 1 - PROFILE:
        raise BadImageError(name, "face in profile (the landmarks show the head turned sideways)")
    crop = align(image, landmarks)
    sharp = sharpness(crop)
    if sharp < MIN_SHARPNESS:
        raise BadImageError(name, f"face too blurred (sharpness {sharp:.0f}, at least {MIN_SHARPNESS:.0f})")
    warnings = []
    if width < WARN_WIDTH:
        warnings.append(f"small face ({width:.0f} px wide): a photo with the face ≥ {WARN_WIDTH} px identifies better")
    if not TURNED <= nose <= 1 - TURNED:
        warnings.append("face turned: a frontal photo identifies better")
    if sharp < WARN_SHARPNESS:
        warnings.append(f"soft face (sharpness {sharp:.0f})")
    if cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).mean() < DARK:
        warnings.append("dark face")
    return recognizer.embedder.embed([crop])[0], warnings


def _faces(recognizer, paths: Iterable[tuple[str, Path]], progress) -> tuple[list, list, list]:
    accepted, refused, warnings = [], [], []  # accepted: (label, path, descriptor)
    for label, path in progress(list(paths)):
        try:
            vector, warned = face_of(recognizer, read_image(path), str(path))
        except BadImageError as e:
            refused.append(e)
            continue
        accepted.append((label, str(path), vector))
        warnings.extend(f"{path}: {w}" for w in warned)
    return accepted, refused, warnings


def enroll_faces(
    recognizer,
    pairs: list[tuple[str, Path]],
    *,
    metadata: dict | None = None,
    skip_bad: bool = False,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> EnrollReport:
    """Enrol (person, photo) pairs into the recognizer's people gallery, one face a photo.

    A refused photo raises FaceEnrollError (naming every refused photo) before anything is
    written, unless `skip_bad`. Warns about photos resembling another person's enrolled face."""
    gallery, embedder = recognizer.gallery, recognizer.embedder
    gallery.check_model(embedder.sha256, embedder.card.name)
    accepted, refused, warnings = _faces(recognizer, pairs, progress)
    if refused and not skip_bad:
        raise FaceEnrollError(refused)
    if not accepted:
        raise GalleryError(f"nothing to enroll: no usable face photos{f' (first: {refused[0]})' if refused else ''}")
    warnings.extend(_look_alikes(recognizer, accepted))
    by_label: dict[str, tuple[list, list]] = {}
    for label, path, vector in accepted:
        vectors, sources = by_label.setdefault(label, ([], []))
        vectors.append(vector)
        sources.append(path)
    with gallery.transaction():
        for label, (vectors, sources) in by_label.items():
            add_item(gallery, embedder, label, vectors, sources, metadata)
    return EnrollReport(len(accepted), len(by_label), refused, warnings)


def _look_alikes(recognizer, accepted: list) -> list[str]:
    """Warnings for photos whose face would be taken for another person (enrolled or in this batch)."""
    threshold = recognizer.thresholds.default()
    if threshold is None:
        return []
    out = []
    vecs = np.stack([v for _, _, v in accepted])
    sims = vecs @ vecs.T
    for i, (label, path, _) in enumerate(accepted):
        for j in range(i):
            if accepted[j][0] != label and sims[i, j] > threshold:
                out.append(f"{path}: resembles {accepted[j][1]} of {accepted[j][0]!r} (cosine {sims[i, j]:.2f})")
    if recognizer.gallery.count()[1]:
        m = recognizer.gallery.search(vecs, 1)
        for (label, path, _), other, score in zip(accepted, m.labels[:, 0], m.scores[:, 0]):
            if other != label and score > threshold:
                out.append(f"{path}: resembles enrolled person {other!r} (cosine {score:.2f})")
    return out


def enroll_face_negatives(recognizer, item: str, paths: Iterable[str | Path]) -> int:
    """Enrol photos of someone who is NOT `item` (a look-alike): their faces veto its matches.
    Every photo must show one usable face (FaceEnrollError otherwise, nothing written)."""
    gallery, embedder = recognizer.gallery, recognizer.embedder
    gallery.check_model(embedder.sha256, embedder.card.name)
    accepted, refused, _ = _faces(recognizer, [(item, Path(p)) for p in paths], lambda it: it)
    if refused:
        raise FaceEnrollError(refused)
    if not accepted:
        raise GalleryError("nothing to enroll: no negative photos")
    gallery.add_negatives(item, np.stack([v for _, _, v in accepted]), [p for _, p, _ in accepted])
    return len(accepted)
