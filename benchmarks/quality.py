"""Retrieval quality and speed of the query path, per configuration.

    python benchmarks/quality.py                      # every configuration, test captures
    python benchmarks/quality.py --config default --split tune --skip museum oxford

Protocols (data in ../shared/data, read-only):
- museum: enrol the 287 BBDD records, look up qsd1_w1 and qsd2_w1 → recall@1, recall@5;
- oxford: mAP over the 1008 images (good+ok positive, junk ignored); the query is its box
  crop when the query image is in the set, else each positive in turn; descriptors only
  (best-region cosine), no verification;
- captures (benchmarks/captures.py): 200 enrolled records photographed in real scenes, plus
  non-enrolled records and empty scenes → recall@1 of the enrolled, DIR at FPIR = 1 %
  (the threshold that lets 1 % of the split's non-enrolled captures through), and the
  same with the threshold *calibrated on the other split* (tune → test): measured FPIR, DIR;
- ms/frame: median wall time of `Recognizer.recognize` on the 640×480 captures.
Tune on `--split tune`; report `--split test` (the default).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: see edge_retrieval/__init__.py

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import captures as capture_sim  # noqa: E402

from edge_retrieval.embedder import Embedder  # noqa: E402
from edge_retrieval.enroll import enroll  # noqa: E402
from edge_retrieval.modelcard import DEFAULT_MODEL  # noqa: E402
from edge_retrieval.preprocess import read_image  # noqa: E402
from edge_retrieval.recognize import PRESETS, Preset, Recognizer, open_recognizer  # noqa: E402
from edge_retrieval.storage.gallery import Gallery  # noqa: E402

DATA = capture_sim.DATA
MODELS = REPO / "models"
TARGET_FPIR = 0.01


@dataclass(frozen=True)
class Config:
    name: str
    model: Path
    preset: Preset
    augment: int  # views per enrolment photo
    whiten: bool = True  # False: ignore the card's whitening (to measure what it does)


CONFIGS = {
    "whole-224": Config(
        "whole-224", MODELS / "mobilenet_v2_int8.tflite", replace(PRESETS["whole"], levels=0, threshold=0.0), 0
    ),
    "fast-unwhitened": Config("fast-unwhitened", DEFAULT_MODEL, PRESETS["fast"], 8, whiten=False),
    "fast": Config("fast", DEFAULT_MODEL, PRESETS["fast"], 8),
    "quick": Config("quick", DEFAULT_MODEL, PRESETS["quick"], 8),
    "default": Config("default", DEFAULT_MODEL, PRESETS["default"], 8),
    # issue 18: EfficientNet-Lite0 (same 240×320 input, whitened 256-d), not committed: built as
    # benchmarks/README.md's backbone section says; run only when named with --config
    "default-lite0": Config("default-lite0", MODELS / "efficientnet_lite0_240x320_int8.tflite", PRESETS["default"], 8),
    "fast-lite0": Config("fast-lite0", MODELS / "efficientnet_lite0_240x320_int8.tflite", PRESETS["fast"], 8),
}


def threshold_at(negative_scores: np.ndarray, fpir: float = TARGET_FPIR) -> float:
    """The lowest threshold (scores must be *above* it) that lets at most `fpir` of the negatives through."""
    neg = np.sort(np.asarray(negative_scores))[::-1]
    allowed = int(np.floor(fpir * len(neg)))
    return float(neg[allowed]) if allowed < len(neg) else float("-inf")


def capture_scores(ident: Recognizer, caps: list) -> dict:
    labels, scores, ms = [], [], []
    for c in caps:
        start = time.perf_counter()
        result = ident.recognize(c.frame)
        ms.append(1000 * (time.perf_counter() - start))
        labels.append(result.best.label if result.best else None)
        scores.append(result.score)
    truth = [c.label for c in caps]
    pos = np.array([t is not None for t in truth])
    correct = np.array([label == t for label, t in zip(labels, truth)])
    return {"pos": pos, "correct": correct, "scores": np.array(scores), "ms": np.array(ms)}


def capture_metrics(s: dict, threshold: float | None = None) -> dict:
    pos, correct, scores = s["pos"], s["correct"], s["scores"]
    t_own = threshold_at(scores[~pos])
    out = {
        "captures_positive": int(pos.sum()),
        "captures_negative": int((~pos).sum()),
        "recall_at_1": float(correct[pos].mean()),
        "dir_at_fpir_1pc": float(np.mean(correct[pos] & (scores[pos] > t_own))),
        "threshold_fpir_1pc": t_own,
        "ms_per_frame_median": float(np.median(s["ms"])),
        "ms_per_frame_p90": float(np.percentile(s["ms"], 90)),
    }
    if threshold is not None:
        out["calibrated_threshold"] = threshold
        out["calibrated_fpir"] = float(np.mean(scores[~pos] > threshold))
        out["calibrated_dir"] = float(np.mean(correct[pos] & (scores[pos] > threshold)))
    return out


def museum(emb: Embedder, config: Config) -> dict:
    root = DATA / "museum"
    gt = json.loads((root / "ground_truth.json").read_text())
    out = {}
    with Gallery(":memory:") as g:
        records = sorted((root / "BBDD").glob("*.jpg"))
        enroll(g, emb, [(f"BBDD/{p.name}", p) for p in records], augment=config.augment)
        ident = open_recognizer(emb, g, config.preset)
        for subset in ("qsd1_w1", "qsd2_w1"):
            ranks = []
            for q in sorted(k for k in gt if k.startswith(subset + "/")):
                found = [c.label for c in ident.recognize(read_image(root / q)).candidates]
                ranks.append(found.index(gt[q]) + 1 if gt[q] in found else 0)
            r = np.array(ranks)
            out[subset] = {
                "queries": len(r),
                "recall_at_1": float(np.mean(r == 1)),
                "recall_at_5": float(np.mean((r >= 1) & (r <= 5))),
            }
    return out


def average_precision(ranked: list[str], good: set[str], junk: set[str]) -> float:
    hits, precisions, seen = 0, [], 0
    for name in ranked:
        if name in junk:
            continue
        seen += 1
        if name in good:
            hits += 1
            precisions.append(hits / seen)
    return float(np.sum(precisions) / len(good)) if good else 0.0


def oxford(emb: Embedder, config: Config) -> dict:
    root = DATA / "oxford"
    gt = json.loads((root / "ground_truth.json").read_text())
    images = sorted((root / "images").glob("*.jpg"))
    names = [p.stem for p in images]
    levels = config.preset.levels
    with Gallery(":memory:") as g:
        whole = {}
        with g.transaction():
            for name, p in zip(names, images):
                regions = emb.regions(read_image(p), levels)
                whole[name] = regions.vectors[0]
                g.add(name, regions.vectors, model_sha256=emb.sha256)
        aps = []
        for q in gt.values():
            good = set(q["good"]) | set(q["ok"])
            junk = set(q["junk"])
            if not good:
                continue
            if q["query_in_subset"]:
                img = read_image(root / "images" / f"{q['query_image']}.jpg")
                h, w = img.shape[:2]
                x0, y0, x1, y1 = q["bbox_fraction_x1y1x2y2"]
                crop = img[int(y0 * h) : int(np.ceil(y1 * h)), int(x0 * w) : int(np.ceil(x1 * w))]
                queries = [(emb.embed(crop)[0], {q["query_image"]})]
            else:
                queries = [(whole[p], {p}) for p in sorted(good)]
            ap = []
            for vec, own in queries:
                ranked = [str(x) for x in g.search(vec, len(names)).labels[0] if x not in own]
                ap.append(average_precision(ranked, good - own, junk))
            aps.append(float(np.mean(ap)))
    return {"queries": len(aps), "mAP": float(np.mean(aps))}


def extra_items(split: str) -> list[Path]:
    """Photos to enrol beside the 200 records (a larger gallery), never in a capture of `split`:
    the Oxford images that are not pure distractors, and the other split's distractor scenes."""
    distractors = capture_sim.oxford_distractors()
    other = "tune" if split == "test" else "test"
    landmarks = sorted(set((DATA / "oxford" / "images").glob("*.jpg")) - set(distractors))
    return landmarks + capture_sim.scene_split(distractors, other)


def run(config: Config, split: str, skip: set[str], extra: int = 0) -> dict:
    out: dict = {
        "config": config.name,
        "model": config.model.name,
        "preset": config.preset.__dict__,
        "augment": config.augment,
        "whiten": config.whiten,
        "split": split,
    }
    with Embedder(config.model) as emb:
        if not config.whiten:
            emb.whitening = None
        if "captures" not in skip:
            enrolled, _ = capture_sim.split_records()
            other = "tune" if split == "test" else "test"
            with Gallery(":memory:") as g:
                enroll(g, emb, [(capture_sim.record_label(p), p) for p in enrolled], augment=config.augment)
                if extra:
                    enroll(g, emb, [(f"extra/{p.stem}", p) for p in extra_items(split)[:extra]], augment=config.augment)
                    out["extra_items"] = len(g.items()) - len(enrolled)
                ident = open_recognizer(emb, g, config.preset)
                calib = None
                if split == "test":  # the threshold calibrated on the tune split, applied to test
                    tune = capture_scores(ident, capture_sim.captures(other))
                    calib = threshold_at(tune["scores"][~tune["pos"]])
                scores = capture_scores(ident, capture_sim.captures(split))
                out["captures"] = capture_metrics(scores, calib)
        if "museum" not in skip:
            out["museum"] = museum(emb, config)
        if "oxford" not in skip:
            out["oxford"] = oxford(emb, config)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", nargs="+", choices=sorted(CONFIGS), default=[n for n in CONFIGS if "lite0" not in n])
    ap.add_argument("--split", choices=("tune", "test"), default="test")
    ap.add_argument("--skip", nargs="*", default=[], choices=("captures", "museum", "oxford"))
    ap.add_argument("--shortlist", type=int, help="override the preset's shortlist (tuning)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--extra-items",
        type=int,
        default=0,
        metavar="N",
        help="also enrol up to N photos that appear in no capture (a larger gallery)",
    )
    args = ap.parse_args()
    results = []
    for name in args.config:
        config = CONFIGS[name]
        if args.shortlist:
            config = replace(config, preset=replace(config.preset, shortlist=args.shortlist))
        result = run(config, args.split, set(args.skip), args.extra_items)
        results.append(result)
        print(json.dumps(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    cv2.setNumThreads(2)
    main()
