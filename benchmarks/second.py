"""Issue 18: what the second verifier (SIFT on the candidates ORB left without inliers) or the
dense verifier (the best candidate still unverified, aligned by ECC) adds to the `default`
preset, and what it costs, on the capture simulation (benchmarks/captures.py).

    python benchmarks/second.py --split tune                    # with and without SIFT, and the time
    python benchmarks/second.py --split tune --without dense    # with and without the dense verifier
    python benchmarks/second.py --split test --misses           # also today's misses, by kind

One gallery (the 200 enrolled records, 8 augmented views, ORB and SIFT features, grey images);
the `default` preset and the same preset without one verifier recognize every capture of the split, frame by
frame in turn (each first on every other frame), so that a shared CPU's load falls on both alike. Quality: recall@1 and TPIR at
FPIR 1 % (the threshold that lets 1 % of the split's never-enrolled captures through); time:
the median `recognize` per 640×480 frame of each, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import captures as capture_sim  # noqa: E402
from projection import kinds_of  # noqa: E402
from quality import threshold_at  # noqa: E402

from edge_retrieval.embedder import Embedder  # noqa: E402
from edge_retrieval.enroll import enroll  # noqa: E402
from edge_retrieval.preprocess import read_image  # noqa: E402
from edge_retrieval.recognize import PRESETS, open_recognizer  # noqa: E402
from edge_retrieval.storage.gallery import Gallery  # noqa: E402


def run(split: str, misses: bool, query_features: int | None = None, without: str = "sift") -> dict:
    enrolled, _ = capture_sim.split_records()
    caps = capture_sim.captures(split)
    truth = [c.label for c in caps]
    pos = np.array([t is not None for t in truth])
    with Embedder() as emb, Gallery(":memory:") as g:
        start = time.perf_counter()
        enroll(g, emb, [(capture_sim.record_label(p), p) for p in enrolled], augment=8)
        enrol_s = time.perf_counter() - start
        preset = PRESETS["default"]
        if query_features:
            preset = replace(preset, query_features=query_features)
        recognizers = {
            "with": open_recognizer(emb, g, preset),
            "without": open_recognizer(emb, g, replace(preset, **{without: False})),
        }
        for r in recognizers.values():
            r.recognize(caps[0].frame)  # the local index built before the clock runs
        results = {name: {"labels": [], "scores": [], "ms": []} for name in recognizers}
        for n, cap in enumerate(caps):  # in turn, each first on every other frame (the second finds caches warm)
            for name, r in list(recognizers.items())[:: 1 if n % 2 else -1]:
                start = time.perf_counter()
                ranking = r.recognize(cap.frame)
                results[name]["ms"].append(1000 * (time.perf_counter() - start))
                results[name]["labels"].append(ranking.best.label if ranking.best else None)
                results[name]["scores"].append(ranking.score)
        for r in recognizers.values():
            r.close()
    out = {
        "split": split,
        "lacks": without,
        "enrol_s": round(enrol_s, 1),
        "frames": len(caps),
        "query_features": preset.query_features,
    }
    for name, res in results.items():
        scores = np.array(res["scores"])
        correct = np.array([label == t for label, t in zip(res["labels"], truth)])
        threshold = threshold_at(scores[~pos])
        found = correct & (scores > threshold)
        out[name] = {
            "recall_at_1": float(correct[pos].mean()),
            "tpir_at_fpir_1pc": float(found[pos].mean()),
            "threshold": round(threshold, 4),
            "ms_median": round(float(np.median(res["ms"])), 2),
            "ms_p90": round(float(np.percentile(res["ms"], 90)), 2),
        }
        if misses and name == "with":
            counts: dict[str, int] = {}
            photo_of = {capture_sim.record_label(p): p for p in enrolled}
            for n in np.flatnonzero(pos & ~found):
                for k in kinds_of(caps[n], read_image(photo_of[truth[n]])) or ["none of these"]:
                    counts[k] = counts.get(k, 0) + 1
            out[name]["misses"] = int((pos & ~found).sum())
            out[name]["misses_by_kind"] = counts
    out["time_ratio"] = round(out["with"]["ms_median"] / out["without"]["ms_median"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=("tune", "test"), default="tune")
    ap.add_argument("--misses", action="store_true", help="count the misses that remain, by kind")
    ap.add_argument("--query-features", type=int, help="the frame's ORB features (default: the preset's)")
    ap.add_argument("--without", choices=("sift", "dense"), default="sift", help="the verifier the other preset lacks")
    args = ap.parse_args()
    print(json.dumps(run(args.split, args.misses, args.query_features, args.without), indent=1))


if __name__ == "__main__":
    main()
