"""Retrieval protocols from a ground-truth JSON file: {query path: expected record path}."""

from __future__ import annotations

import json
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .embedder import Embedder
from .enroll import enroll, list_images
from .errors import GalleryError
from .preprocess import read_image
from .recognize import DEFAULT_PRESET, open_recognizer
from .storage.gallery import Gallery


@dataclass(frozen=True)
class EvalResult:
    queries: int
    records: int
    recall_at_1: float
    recall_at_5: float
    mrr: float
    ms_per_query: float  # recognize, per query (reading the image included)
    ranks: tuple[int, ...]  # 1-based rank of the right record per query (0 = not in the top k)


def load_ground_truth(path: Path, subset: str | None) -> dict[str, str]:
    try:
        gt = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GalleryError(f"{path}: cannot read ground truth ({e})") from None
    if not isinstance(gt, dict) or not all(isinstance(v, str) for v in gt.values()):
        raise GalleryError(f"{path}: ground truth must be an object of query path → record path")
    if subset:
        gt = {q: r for q, r in gt.items() if Path(q).parts[0] == subset}
        if not gt:
            raise GalleryError(f"{path}: no query under {subset!r}")
    return gt


def evaluate(
    ground_truth: Path, embedder: Embedder, subset: str | None = None, preset: str = DEFAULT_PRESET
) -> EvalResult:
    """Enroll every image in the folders holding the expected records (labels = record paths),
    then look up each query with the preset's recognizer (its final ranking); paths are relative
    to the ground-truth file's folder."""
    root = Path(ground_truth).parent
    gt = load_ground_truth(ground_truth, subset)
    folders = sorted({(root / r).parent for r in gt.values()})
    records = [p for folder in folders for p in list_images(folder)]
    with Gallery(":memory:") as gallery:
        enroll(gallery, embedder, [(path.relative_to(root).as_posix(), path) for path in records])
        queries = sorted(gt)
        ranks = []
        with closing(open_recognizer(embedder, gallery, preset)) as recognizer:
            start = time.perf_counter()
            for query in queries:
                found = [c.label for c in recognizer.recognize(read_image(root / query)).candidates]
                ranks.append(found.index(gt[query]) + 1 if gt[query] in found else 0)
            elapsed = time.perf_counter() - start
    r = np.array(ranks)
    return EvalResult(
        queries=len(queries),
        records=len(records),
        recall_at_1=float(np.mean(r == 1)),
        recall_at_5=float(np.mean((r >= 1) & (r <= 5))),
        mrr=float(np.mean(np.where(r > 0, 1.0 / np.maximum(r, 1), 0.0))),
        ms_per_query=1000 * elapsed / len(queries),
        ranks=tuple(ranks),
    )
