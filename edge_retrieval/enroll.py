"""Turning paths on disk into (label, image) pairs and enrolling them in one transaction."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .embedder import Embedder
from .errors import BadImageError, GalleryError
from .gallery import Gallery

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


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


def enroll(
    gallery: Gallery,
    embedder: Embedder,
    pairs: list[tuple[str, Path]],
    *,
    metadata: dict | None = None,
    skip_bad: bool = False,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> EnrollReport:
    """Embed every image first, then add them all in one transaction.

    A bad image raises BadImageError before anything is written, unless `skip_bad`.
    """
    gallery.check_model(embedder.sha256, embedder.card.name)
    report = EnrollReport()
    by_label: dict[str, tuple[list[np.ndarray], list[str]]] = {}
    for label, path in progress(pairs):
        try:
            vector = embedder.embed_files([path])[0]
        except BadImageError as e:
            if not skip_bad:
                raise
            report.skipped.append(e)
            continue
        vectors, sources = by_label.setdefault(label, ([], []))
        vectors.append(vector)
        sources.append(str(path))
    if not by_label:
        raise GalleryError("nothing to enroll: no readable images")
    with gallery.transaction():
        for label, (vectors, sources) in by_label.items():
            gallery.add(label, np.stack(vectors), model_sha256=embedder.sha256, model_name=embedder.card.name,
                        metadata=metadata, sources=sources)
            report.images += len(vectors)
    report.items = len(by_label)
    return report
