"""Issue 4 reference: find the item by global ORB votes alone, with faiss as the nearest-neighbour index.

One timed loop per capture of benchmarks/captures.py: ORB (2000 features) on the 640×480 frame
→ 2 nearest neighbours of each frame descriptor among *all* gallery ORB descriptors (500 per
record, extracted as `enroll` does) through faiss `IndexBinaryIVF` (256 lists, nprobe 8; the
`bench` extra, not a runtime dependency) → ratio test → votes per item → MAGSAC homography
(`verify.fit`: its threshold and plausibility check) on the top item's matches → score = inliers
+ 0.001 · votes. Reports recall@1, DIR at FPIR = 1 % and ms/frame, like quality.py.

    pip install -e .[bench]
    python benchmarks/orb_votes.py --split tune
    python benchmarks/orb_votes.py --split test --calib 0.007   # the tune split's 1 % threshold

The library does the same votes with its own NumPy index (edge_retrieval/vocabulary.py) beside
the CNN shortlist (recognize/regional.py); this script is the faiss reference it is compared with in
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import captures as capture_sim  # noqa: E402
import quality  # noqa: E402

from edge_retrieval import verify  # noqa: E402
from edge_retrieval.preprocess import read_image  # noqa: E402


def main(argv=None) -> int:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="test", choices=("tune", "test"))
    parser.add_argument("--query-features", type=int, default=2000)
    parser.add_argument("--lists", type=int, default=256)
    parser.add_argument("--nprobe", type=int, default=8)
    parser.add_argument("--calib", type=float, help="also report FPIR and DIR at this threshold")
    args = parser.parse_args(argv)
    cv2.setNumThreads(2)
    faiss.omp_set_num_threads(2)

    enrolled, _ = capture_sim.split_records()
    labels = [capture_sim.record_label(p) for p in enrolled]
    feats = [verify.extract(read_image(p), verify.GALLERY_FEATURES, verify.GALLERY_SIDE) for p in enrolled]
    desc = np.concatenate([f.descriptors for f in feats])
    owner = np.concatenate([np.full(len(f), k) for k, f in enumerate(feats)])
    local = np.concatenate([np.arange(len(f)) for f in feats])
    start = time.perf_counter()
    index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(256), 256, args.lists)
    index.train(desc)
    index.add(desc)
    index.nprobe = args.nprobe
    print(
        f"{len(feats)} items, {len(desc)} gallery descriptors; index trained and filled in "
        f"{1000 * (time.perf_counter() - start):.0f} ms",
        flush=True,
    )

    caps = capture_sim.captures(args.split)
    found, scores, ms = [], [], []
    for c in caps:
        start = time.perf_counter()
        query = verify.extract(c.frame, args.query_features)
        dist, nn = index.search(query.descriptors, 2)
        good = (dist[:, 0] < verify.RATIO * dist[:, 1]) & (nn[:, 0] >= 0)
        votes = np.bincount(owner[nn[good, 0]], minlength=len(feats))
        k = int(np.argmax(votes))
        sel = good & (owner[nn[:, 0]] == k)
        score = verify.fit(query, feats[k], np.flatnonzero(sel), local[nn[sel, 0]]).inliers + 1e-3 * votes[k]
        ms.append(1000 * (time.perf_counter() - start))
        found.append(labels[k])
        scores.append(score)
    pos = np.array([c.label is not None for c in caps])
    correct = np.array([f == c.label for f, c in zip(found, caps)])
    scores = np.array(scores)
    threshold = quality.threshold_at(scores[~pos])
    ms = np.array(ms)
    print(
        f"{args.split}: {pos.sum()} enrolled, {(~pos).sum()} not enrolled captures; recall@1 {correct[pos].mean():.3f}, "
        f"DIR@FPIR1% {np.mean(correct[pos] & (scores[pos] > threshold)):.3f} (threshold {threshold:.3f}); "
        f"ms/frame median {np.median(ms):.1f}, p90 {np.percentile(ms, 90):.1f}"
    )
    if args.calib is not None:
        print(
            f"at threshold {args.calib}: FPIR {np.mean(scores[~pos] > args.calib):.3f}, "
            f"DIR {np.mean(correct[pos] & (scores[pos] > args.calib)):.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
