"""Issue 18, second round: geometric evidence where ORB finds none, on the cache of
benchmarks/projection.py (the ranking replayed with each variant's votes and inliers).

    python benchmarks/evidence.py --split tune --fast 20 --local-views  # extra gallery ORB views, FAST thresholds
    python benchmarks/evidence.py --split tune --fast-cost              # what the frame's FAST threshold costs

`--fast 20` replays against the recognizer of before (OpenCV's default threshold), the baseline
the variants were measured on.
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

import projection  # noqa: E402
from projection import VIEWS, capture_sim, replay  # noqa: E402

from edge_retrieval import verify  # noqa: E402
from edge_retrieval.embedder import Embedder  # noqa: E402
from edge_retrieval.enroll import enroll  # noqa: E402
from edge_retrieval.modelcard import DEFAULT_MODEL  # noqa: E402
from edge_retrieval.preprocess import read_image  # noqa: E402
from edge_retrieval.recognize import PRESETS, open_recognizer  # noqa: E402
from edge_retrieval.storage.gallery import Gallery  # noqa: E402


class _Features:
    """The enrolled photos' local features as `LocalIndex` reads them from a gallery."""

    def __init__(self, rows):
        self.rows = rows

    def all_features(self):
        return self.rows


def gallery_views(photo: np.ndarray, kinds: tuple[str, ...], n: int) -> list[verify.LocalFeatures]:
    """Extra local features of an enrolled photo, as a blurred or small frame shows it:
    `small` at 256 px, `blur` σ 1.5 at 256 px, `blur512` σ 3 at 512 px, `motion` a 7 px streak at 256 px."""
    out = []
    for kind in kinds:
        side = 512 if kind == "blur512" else 256
        img = cv2.resize(
            photo, None, fx=side / max(photo.shape[:2]), fy=side / max(photo.shape[:2]), interpolation=cv2.INTER_AREA
        )
        if kind == "blur":
            img = cv2.GaussianBlur(img, (0, 0), 1.5)
        elif kind == "blur512":
            img = cv2.GaussianBlur(img, (0, 0), 3.0)
        elif kind == "motion":
            img = cv2.blur(img, (7, 1))
        out.append(verify.extract(img, n, side))
    return out


def local_views(c) -> None:
    """Geometric evidence where ORB finds none: the gallery-wide matching replayed with extra
    local features a photo (blurred / small versions), and with the frame's ORB at a lower FAST
    threshold; each variant's votes and inliers replace the cache's, then the ranking is replayed."""
    from edge_retrieval.recognize.regional import LocalIndex
    from edge_retrieval.vocabulary import Vocabulary

    caps = capture_sim.captures(str(c["split"]))
    base = replay(c)
    truth, pos = c["truth"], c["truth"] != ""
    id_of = dict(zip(c["item_labels"].tolist(), c["item_ids"].tolist()))
    missed = [n for n in np.flatnonzero(pos) if not base["found"][n]]
    photos = [read_image(Path(p)) for p in c["item_paths"]]
    item_ids = c["item_ids"].tolist()  # same order as item_paths (one photo an item)
    vocabulary = Vocabulary.load()
    plain = [verify.extract(p, verify.GALLERY_FEATURES, verify.GALLERY_SIDE) for p in photos]
    variants = [(f"frame ORB at FAST threshold {t}", (), 0, t) for t in (20, 15, 12, 10, 7, 5)] + [
        ("+ small 256 px (500)", ("small",), 500, 20),
        ("+ blur σ1.5 at 256 px (500)", ("blur",), 500, 20),
        ("+ motion 7 px at 256 px (500)", ("motion",), 500, 20),
        ("+ blur σ3 at 512 px (500)", ("blur512",), 500, 20),
        ("+ small + blur (250 each)", ("small", "blur"), 250, 20),
        ("+ small + blur + motion (250 each)", ("small", "blur", "motion"), 250, 20),
        ("+ small + blur (500 each)", ("small", "blur"), 500, 20),
    ]
    for name, kinds, n_extra, fast in variants:
        rows, k = [], 0
        for item, photo, f in zip(item_ids, photos, plain):
            for g in [f] + (gallery_views(photo, kinds, n_extra) if kinds else []):
                rows.append((k, item, (verify.KIND, g.size, g.keypoints, g.descriptors)))
                k += 1
        index = LocalIndex(_Features(rows), vocabulary)
        votes, fits, ms = [], [], []
        orb = cv2.ORB_create(verify.QUERY_FEATURES, fastThreshold=fast)
        for n, cap in enumerate(caps):
            gray = cv2.cvtColor(cap.frame, cv2.COLOR_BGR2GRAY)
            start = time.perf_counter()
            kp, desc = orb.detectAndCompute(gray, None)
            desc = desc if desc is not None else np.empty((0, 32), np.uint8)
            query = verify.LocalFeatures(np.array([p.pt for p in kp], np.float32).reshape(-1, 2), desc, (640, 480))
            points, positions = index.matches(query)
            image = index.image[positions]
            item = index.item_of_image[image]
            for it, count in zip(*np.unique(item, return_counts=True)):
                votes.append((n, it, count))
                if count < verify.MIN_MATCHES:
                    continue
                best = 0
                for img in np.unique(image[item == it]).tolist():
                    mine = image == img
                    best = max(
                        best, verify.fit(query, index.images[img], points[mine], index.point[positions[mine]]).inliers
                    )
                if best:
                    fits.append((n, it, best))
            ms.append(1000 * (time.perf_counter() - start))
        fits = np.array(fits, np.int64).reshape(-1, 3)
        for least in (5, 6, 8) if not kinds else ():  # fewer inliers count as none
            r = replay(dict(c, votes=np.array(votes, np.int64).reshape(-1, 3), fits=fits[fits[:, 2] >= least]))
            print(
                f"| {name}, at least {least} inliers | | {sum(r['fits'][n].get(id_of[truth[n]], 0) > 0 for n in missed)} "
                f"| {sum(r['found'][n] for n in missed)} | | {r['tpir']:.3f} | {r['r1']:.3f} | {r['threshold']:.3f} | |"
            )
        v = dict(c, votes=np.array(votes, np.int64).reshape(-1, 3), fits=fits)
        r = replay(v)
        recovered = sum(r["fits"][n].get(id_of[truth[n]], 0) > 0 for n in missed)
        neg = np.flatnonzero(~pos)
        neg_inl = np.mean([max(r["fits"][n].values(), default=0) > 0 for n in neg])
        rescued = sum(r["found"][n] for n in missed)
        print(
            f"| {name} | {len(index.inverted)} | {recovered} of {len(missed)} | {rescued} | {neg_inl:.3f} "
            f"| {r['tpir']:.3f} | {r['r1']:.3f} | {r['threshold']:.3f} | {np.median(ms):.1f} |",
            flush=True,
        )


def fast_cost(c, frames: int = 200, rounds: int = 3) -> None:
    """What the frame's FAST threshold costs the `default` recognizer: `recognize` timed on the
    same frames with verify.QUERY_FAST_THRESHOLD at 20 (OpenCV's default) and at today's value,
    interleaved frame by frame so that a shared CPU's load falls on both alike."""
    caps = capture_sim.captures(str(c["split"]))[:frames]
    enrolled, _ = capture_sim.split_records()
    chosen = verify.QUERY_FAST_THRESHOLD
    ms = {20: [], chosen: []}
    with Embedder(DEFAULT_MODEL) as emb, Gallery(":memory:") as g:
        enroll(g, emb, [(capture_sim.record_label(p), p) for p in enrolled], augment=VIEWS)
        rec = open_recognizer(emb, g, PRESETS["default"])
        rec.recognize(caps[0].frame)
        for _ in range(rounds):
            for cap in caps:
                for t in ms:
                    verify.QUERY_FAST_THRESHOLD = t
                    start = time.perf_counter()
                    rec.recognize(cap.frame)
                    ms[t].append(1000 * (time.perf_counter() - start))
        rec.close()
    verify.QUERY_FAST_THRESHOLD = chosen
    for t, v in ms.items():
        print(
            f"FAST threshold {t}: recognize median {np.median(v):.1f} ms, p90 {np.percentile(v, 90):.1f} ms ({len(v)} frames)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=("tune", "test"), default="tune")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/edge-retrieval-projection"))
    ap.add_argument("--fast", type=int, help="the frame's FAST threshold (default verify.QUERY_FAST_THRESHOLD)")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--local-views", action="store_true", help="extra gallery ORB views, other FAST thresholds")
    what.add_argument("--fast-cost", action="store_true", help="time the frame's FAST threshold, 20 vs today's")
    args = ap.parse_args()
    chosen = verify.QUERY_FAST_THRESHOLD
    if args.fast is not None:
        verify.QUERY_FAST_THRESHOLD = args.fast
    c = projection.load(args.split, args.cache)
    if args.fast_cost:
        verify.QUERY_FAST_THRESHOLD = chosen
        fast_cost(c)
    else:
        print(
            "| variant | gallery descriptors | misses with inliers for the right item | misses named "
            "| negatives with inliers | TPIR | recall@1 | threshold | ORB+match+fit ms |"
        )
        local_views(c)


if __name__ == "__main__":
    main()
