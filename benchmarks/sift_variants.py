"""Issue 18: the second verifier's parameters, chosen on the tune split by replay.

    python benchmarks/projection.py --split tune        # builds the cache (once)
    python benchmarks/sift_variants.py s240_n500_G384_g500_L2 s200_n500_G384_g500_L2_r85

For each variant, SIFT is run on every tune capture, and each shortlisted candidate that ORB left
without inliers is checked against its enrolled photo. The shortlist is the 5 best by cosine
plus the 3 most voted, as the recognizer builds it. The ranking in the cache is then replayed with
weight·ln(1 + SIFT inliers) added to the score, for every inlier floor and weight in the grid.

A variant is a name made of `_`-joined fields:

| field | meaning | default |
|---|---|---|
| `s` | frame side (px) | 240 |
| `n` | frame features | 500 |
| `G` | photo side (px) | 384 |
| `g` | photo features | 500 |
| `L` | octave layers | 3 |
| `c` | contrast threshold, in thousandths | 40 |
| `r` | ratio test, in hundredths | 80 |

Matching here uses OpenCV's brute-force matcher. Its time per candidate is not the product's
(`verify.match_sift`).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from projection import capture_sim, l2, load, replay  # noqa: E402

from edge_retrieval import verify  # noqa: E402
from edge_retrieval.preprocess import read_image  # noqa: E402

DEFAULTS = {"s": 240, "n": 500, "G": 384, "g": 500, "L": 3, "c": 40, "r": 80}


def parse(variant: str) -> dict[str, int]:
    out = dict(DEFAULTS)
    for part in variant.split("_"):
        if part[:1] not in DEFAULTS or not part[1:].isdigit():
            raise SystemExit(f"{variant}: {part!r} is not one of {', '.join(f'{k}<int>' for k in DEFAULTS)}")
        out[part[0]] = int(part[1:])
    return out


def sift(det, image: np.ndarray, side: int) -> verify.LocalFeatures:
    gray = verify.gray_at_most(image, side)
    kp, desc = det.detectAndCompute(gray, None)
    desc = desc if desc is not None else np.empty((0, 128), np.float32)
    return verify.LocalFeatures(
        np.array([k.pt for k in kp], np.float32).reshape(-1, 2), desc, (gray.shape[1], gray.shape[0])
    )


def run(c, variant: str) -> None:
    p = parse(variant)
    caps = capture_sim.captures(str(c["split"]))
    base = replay(c)
    truth, pos = c["truth"], c["truth"] != ""
    id_of = dict(zip(c["item_labels"].tolist(), c["item_ids"].tolist()))
    missed = [n for n in np.flatnonzero(pos) if not base["found"][n]]
    photos = {i: read_image(Path(f)) for i, f in zip(c["item_ids"].tolist(), c["item_paths"].tolist())}
    order = np.argsort(c["gallery_keys"], kind="stable")
    items, starts = np.unique(c["gallery_keys"][order], return_index=True)
    gallery = l2(c["gallery"][order])
    votes = [dict() for _ in caps]
    for n, it, v in c["votes"]:
        votes[n][int(it)] = int(v)
    det = cv2.SIFT_create(p["n"], p["L"], p["c"] / 1000)
    photo_det = cv2.SIFT_create(p["g"], p["L"], p["c"] / 1000)
    enrolled = {i: sift(photo_det, img, p["G"]) for i, img in photos.items()}
    matcher, ratio = cv2.BFMatcher(cv2.NORM_L2), p["r"] / 100
    evidence, frame_ms = [], []
    for n, cap in enumerate(caps):
        regions = l2(c["vectors"][c["offsets"][n] : c["offsets"][n + 1]])
        cosine = np.maximum.reduceat(regions @ gallery.T, starts, axis=1).max(0)
        listed = [int(items[j]) for j in np.argsort(-cosine)[:5]]
        listed += [i for i in sorted(votes[n], key=lambda i: (-votes[n][i], i))[:3] if i not in listed]
        start = time.perf_counter()
        query = sift(det, cap.frame, p["s"])
        frame_ms.append(1000 * (time.perf_counter() - start))
        found = {}
        for it in (i for i in listed if not base["fits"][n].get(i, 0)):
            cand, inliers = enrolled[it], 0
            if len(query) >= verify.MIN_MATCHES and len(cand) >= 2:
                pairs = matcher.knnMatch(query.descriptors, cand.descriptors, k=2)
                good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < ratio * m[1].distance]
                q, t = (
                    (np.array(x, np.int64) for x in zip(*[(m.queryIdx, m.trainIdx) for m in good]))
                    if good
                    else (
                        np.empty(0, np.int64),
                        np.empty(0, np.int64),
                    )
                )
                inliers = verify.fit(query, cand, q, t).inliers
            found[it] = (inliers,)
        evidence.append(found)
    print(
        f"{variant}: frame SIFT {np.median(frame_ms):.1f} ms median; base TPIR {base['tpir']:.3f}, {len(missed)} misses"
    )
    for least in (6, 8, 10, 12, 15):
        gated = [{i: (v[0] if v[0] >= least else 0,) for i, v in e.items()} for e in evidence]
        right = sum(gated[n].get(id_of[truth[n]], (0,))[0] > 0 for n in missed)
        neg = np.mean([max((v[0] for v in gated[n].values()), default=0) > 0 for n in np.flatnonzero(~pos)])
        row = f"  ≥ {least} inliers: the right item in {right} misses, negatives with one {neg:.3f} |"
        for weight in (0.1, 0.15, 0.2, 0.25):
            r = replay(c, second=gated, weight=weight)
            row += f" {weight}: TPIR {r['tpir']:.3f} r@1 {r['r1']:.3f} |"
        print(row, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", help="e.g. s240_n500_G384_g500_L2")
    ap.add_argument("--split", choices=("tune", "test"), default="tune")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/edge-retrieval-projection"))
    ap.add_argument(
        "--fast", type=int, help="the cache of this frame FAST threshold (default verify.QUERY_FAST_THRESHOLD)"
    )
    args = ap.parse_args()
    if args.fast is not None:
        verify.QUERY_FAST_THRESHOLD = args.fast
    c = load(args.split, args.cache)
    for v in args.variants:
        run(c, v)


if __name__ == "__main__":
    main()
