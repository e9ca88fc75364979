"""Turning paths on disk into (label, image) pairs and enrolling them in one transaction."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from . import augment as augment_mod
from . import verify
from .embedder import Embedder
from .errors import BadImageError, GalleryError
from .preprocess import IMAGE_SUFFIXES, read_image
from .storage.gallery import Gallery

# what every enrolled photo keeps beside its ORB features (verify.KIND), by kind: the second
# verifier's SIFT features and the dense verifier's grey image. A gallery enrolled before one of
# them lacks it until `refresh_features` reads the photos again.
LATER_KINDS: dict[str, Callable[[np.ndarray], verify.LocalFeatures]] = {
    verify.SIFT_KIND: lambda image: verify.extract_sift(image, max_side=verify.SIFT_GALLERY_SIDE),
    verify.DENSE_KIND: verify.extract_gray,
}


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def plan(paths: Iterable[str | Path], label: str | None = None) -> list[tuple[str, Path]]:
    """(label, file) pairs: a file is labelled by `label` or its stem; a folder's sub-folders
    name the labels of the images inside them; images directly in a folder use `label` or their stem."""
    pairs: list[tuple[str, Path]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for image in list_images(path):
                rel = image.relative_to(path)
                name = label or (rel.parts[0] if len(rel.parts) > 1 else image.stem)
                pairs.append((name, image))
        else:
            pairs.append((label or path.stem, path))  # a missing file fails when it is read, by name
    return pairs


@dataclass
class EnrollReport:
    images: int = 0
    items: int = 0
    skipped: list[BadImageError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # "path: blurry (…)", "path: nearly identical to …"


def add_item(gallery: Gallery, embedder, label: str, vectors: list, sources: list[str], metadata=None) -> int:
    """One item's descriptors into the gallery, bound to the embedder's model (items' and people's)."""
    return gallery.add(
        label,
        np.stack(vectors),
        model_sha256=embedder.sha256,
        model_name=embedder.card.name,
        metadata=metadata,
        sources=sources,
    )


def enroll(
    gallery: Gallery,
    embedder: Embedder,
    pairs: list[tuple[str, Path]],
    *,
    metadata: dict | None = None,
    skip_bad: bool = False,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
    augment: int = 0,
    features: bool = True,
) -> EnrollReport:
    """Embed every image first, then add them all in one transaction.

    A bad image raises BadImageError before anything is written, unless `skip_bad`.
    `augment` adds that many camera-like views (tilt, crop, light, blur) of every photo;
    `features` stores the photo's local features for geometric verification. Photos that are
    tiny, blurry or dark, or nearly identical to another item's, are reported in `warnings`.
    """
    gallery.check_model(embedder.sha256, embedder.card.name)
    report = EnrollReport()
    by_label: dict[str, tuple[list[np.ndarray], list[str], list]] = {}
    firsts: list[tuple[str, str, np.ndarray]] = []  # (label, path, descriptor of the photo itself)
    for label, path in progress(pairs):
        try:
            image = read_image(path)
        except BadImageError as e:
            if not skip_bad:
                raise
            report.skipped.append(e)
            continue
        report.warnings.extend(f"{path}: {w}" for w in augment_mod.check(image).warnings)
        views = [image] + (augment_mod.views(image, augment, seed=len(firsts)) if augment else [])
        vecs = embedder.embed(views)
        vectors, sources, feats = by_label.setdefault(label, ([], [], []))
        vectors.extend(vecs)
        sources.extend([str(path)] + [f"{path}#view{i + 1}" for i in range(len(views) - 1)])
        if features:
            by_kind = {verify.KIND: verify.extract(image, verify.GALLERY_FEATURES, verify.GALLERY_SIDE)}
            by_kind.update((kind, extract(image)) for kind, extract in LATER_KINDS.items())
            feats.append((str(path), by_kind))
        firsts.append((label, str(path), vecs[0]))
    if not by_label:
        skipped = f" (skipped {len(report.skipped)}, first {report.skipped[0]})" if report.skipped else ""
        raise GalleryError(f"nothing to enroll: no readable images{skipped}")
    report.warnings.extend(near_duplicates(gallery, firsts))
    with gallery.transaction():
        for label, (vectors, sources, feats) in by_label.items():
            item_id = add_item(gallery, embedder, label, vectors, sources, metadata)
            for source, by_kind in feats:
                for kind, f in by_kind.items():
                    gallery.add_features(item_id, kind, f.size, f.keypoints, f.descriptors, source)
            report.images += len(feats) if features else sum(1 for s in sources if "#view" not in s)
    report.items = len(by_label)
    return report


@dataclass
class FeatureRefresh:
    added: int = 0  # photos given the features they lacked
    missing: list[str] = field(default_factory=list)  # "source: why" of the photos that could not be read


def refresh_command(gallery_path: str | Path) -> str:
    """The command that adds what a gallery's older photos lack (`refresh_features`), as `info`,
    `doctor` and the service's log name it."""
    return f"edge-retrieval refresh-features -g {shlex.quote(str(gallery_path))}"


def lacking_photos(gallery: Gallery) -> dict[tuple[int, str], tuple[tuple[int, int], list[str]]]:
    """The enrolled photos (item id, source) with ORB features that lack some of LATER_KINDS:
    their ORB image's size and the kinds they lack, in enrolment order."""
    out: dict[tuple[int, str], tuple[tuple[int, int], list[str]]] = {}
    for kind in LATER_KINDS:
        for item_id, source, size in gallery.lacking_features(kind, verify.KIND):
            out.setdefault((item_id, source), (size, []))[1].append(kind)
    return out


def refresh_features(gallery: Gallery, progress: Callable[[Iterable], Iterable] = lambda it: it) -> FeatureRefresh:
    """Add what every enrolled photo with ORB features lacks of LATER_KINDS (the SIFT features
    and the grey image of the second and the dense verifier) — a gallery enrolled before them —
    read again from the photo's file. Photos whose file is gone, unreadable or no longer the photo
    enrolled (another size) are reported in `missing`; the rest are added in one transaction. Run
    again, it adds nothing."""
    report = FeatureRefresh()
    found = []
    for (item_id, source), (size, kinds) in progress(list(lacking_photos(gallery).items())):
        if not source:
            report.missing.append(f"a photo of item {item_id}: enrolled without its file name")
            continue
        try:
            image = read_image(source)
        except BadImageError as e:
            report.missing.append(str(e))
            continue
        height, width = image.shape[:2]
        scale = min(1.0, verify.GALLERY_SIDE / max(width, height))  # the ORB features' image
        if abs(round(width * scale) - size[0]) > 1 or abs(round(height * scale) - size[1]) > 1:
            report.missing.append(f"{source}: {width}×{height}, not the photo enrolled (changed since; enrol it again)")
            continue
        found.append((item_id, source, {kind: LATER_KINDS[kind](image) for kind in kinds}))
    if not found:
        return report
    with gallery.transaction():
        # a photo removed or refreshed by another process meanwhile is left as it is now
        still = lacking_photos(gallery)
        for item_id, source, by_kind in found:
            lacks = [kind for kind in still.get((item_id, source), (None, []))[1] if kind in by_kind]
            for kind in lacks:
                f = by_kind[kind]
                gallery.add_features(item_id, kind, f.size, f.keypoints, f.descriptors, source)
            report.added += bool(lacks)
    return report


NEAR_DUPLICATE_BLOCK = 1024  # photos compared at once: memory stays O(block × n)


def near_duplicates(gallery: Gallery, firsts: list[tuple[str, str, np.ndarray]]) -> list[str]:
    """Warnings for photos nearly identical (cosine ≥ MAX_COSINE_OTHER) to another item's photo,
    in this batch or already in the gallery."""
    if not firsts:
        return []
    warnings = []
    vecs = np.stack([f[2] for f in firsts])
    labels = np.array([f[0] for f in firsts], dtype=object)
    for start in range(0, len(vecs), NEAR_DUPLICATE_BLOCK):  # rows against earlier rows, in blocks
        stop = start + NEAR_DUPLICATE_BLOCK
        sims = vecs[start:stop] @ vecs[:stop].T
        rows, cols = np.nonzero(sims >= augment_mod.MAX_COSINE_OTHER)
        for r, j in zip(rows, cols):
            i = start + r
            if j < i and labels[j] != labels[i]:
                warnings.append(
                    f"{firsts[i][1]}: nearly identical to {firsts[j][1]} of item {labels[j]!r} "
                    f"(cosine {sims[r, j]:.3f})"
                )
    if gallery.count()[1] and gallery.dim == vecs.shape[1]:
        m = gallery.search(vecs, 1)
        for (label, path, _), other, score in zip(firsts, m.labels[:, 0], m.scores[:, 0]):
            if other != label and score >= augment_mod.MAX_COSINE_OTHER:
                warnings.append(f"{path}: nearly identical to enrolled item {other!r} (cosine {score:.3f})")
    return warnings


def enroll_negatives(gallery: Gallery, embedder: Embedder, item: str, paths: Iterable[str | Path]) -> int:
    """Enrol photos that are NOT `item` (a look-alike, the empty shelf): they veto its matches
    and raise its calibrated threshold. Returns how many."""
    gallery.check_model(embedder.sha256, embedder.card.name)
    paths = list(paths)
    if not paths:
        raise GalleryError("nothing to enroll: no negative images")
    gallery.add_negatives(item, embedder.embed_files(paths), [str(p) for p in paths])
    return len(paths)
