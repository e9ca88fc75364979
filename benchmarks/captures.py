"""Simulated camera captures: museum records photographed inside real scenes.

A capture is a 640×480 frame: a crop of a real Oxford *distractor* photo (no query, good,
ok or junk image of any Oxford query) as the scene, the record pasted into it at 35–75 % of
the frame's size with a perspective tilt and a small rotation, then the camera: a colour
cast and exposure change, glare (a bright blob, half of the frames), blur (defocus or
motion), sensor noise and JPEG at quality 35–75.

Everything is split deterministically so that nothing is tuned on what it is reported on:

- records: the 287 museum records, shuffled with RECORD_SEED → 200 *enrolled*, 87 *unknown*;
  the unknown records are split again into a "tune" and a "test" half;
- scenes: the Oxford distractors split by a hash of their name into "tune" and "test";
- captures: every enrolled record once, every unknown record of the split NEG_PER_UNKNOWN
  times, plus EMPTY_SCENES frames with no record at all, drawn with the split's own seed.

    python benchmarks/captures.py --split tune --out /tmp/captures-tune   # look at them
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# ../shared/data beside the checkout; EDGE_RETRIEVAL_DATA for a checkout elsewhere (a git worktree)
DATA = Path(os.environ.get("EDGE_RETRIEVAL_DATA") or Path(__file__).resolve().parent.parent.parent / "shared" / "data")
FRAME_W, FRAME_H = 640, 480
RECORD_SEED = 4
ENROLLED = 200
NEG_PER_UNKNOWN = 5
EMPTY_SCENES = 80
SPLIT_SEEDS = {"tune": 1001, "test": 2002}


@dataclass(frozen=True)
class Capture:
    frame: np.ndarray  # BGR uint8 640×480
    label: str | None  # the record's label if enrolled, else None
    record: str | None  # the record shown (enrolled or not), None for an empty scene
    quad: np.ndarray  # (4, 2) float32 corners of the record in the frame (zeros if none)


def record_label(path: Path) -> str:
    return path.stem


def split_records(museum: Path = DATA / "museum") -> tuple[list[Path], list[Path]]:
    """(enrolled, unknown) record paths, deterministic."""
    records = sorted((museum / "BBDD").glob("*.jpg"))
    order = np.random.default_rng(RECORD_SEED).permutation(len(records))
    shuffled = [records[i] for i in order]
    return sorted(shuffled[:ENROLLED]), sorted(shuffled[ENROLLED:])


def unknown_split(unknown: list[Path], split: str) -> list[Path]:
    half = 0 if split == "tune" else 1
    return [p for i, p in enumerate(unknown) if i % 2 == half]


def oxford_distractors(oxford: Path = DATA / "oxford") -> list[Path]:
    """Oxford images that are no query's query, good, ok or junk image."""
    gt = json.loads((oxford / "ground_truth.json").read_text())
    used = set()
    for q in gt.values():
        used.add(q["query_image"])
        for key in ("good", "ok", "junk"):
            used.update(q[key])
    return sorted(p for p in (oxford / "images").glob("*.jpg") if p.stem not in used)


def scene_split(scenes: list[Path], split: str) -> list[Path]:
    want = 0 if split == "tune" else 1
    return [p for p in scenes if hashlib.sha256(p.name.encode()).digest()[0] % 2 == want]


# -- the camera ---------------------------------------------------------------------------
def scene_crop(scene: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = scene.shape[:2]
    ratio = FRAME_W / FRAME_H
    cw = int(min(w, h * ratio) * rng.uniform(0.7, 1.0))
    ch = int(cw / ratio)
    x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    return cv2.resize(scene[y : y + ch, x : x + cw], (FRAME_W, FRAME_H), interpolation=cv2.INTER_LINEAR)


def paste(frame: np.ndarray, item: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Warp `item` into `frame` (in place): 35–75 % of the frame, tilted. Returns its corners."""
    quad = pose(item.shape, rng)
    warp(frame, item, quad)
    return quad


def pose(shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """Where an item of `shape` lands in the frame: its (4, 2) corners."""
    ih, iw = shape[:2]
    frac = rng.uniform(0.35, 0.75)
    s = frac * min(FRAME_W / iw, FRAME_H / ih)
    w, h = iw * s, ih * s
    cx = rng.uniform(w / 2, FRAME_W - w / 2)
    cy = rng.uniform(h / 2, FRAME_H - h / 2)
    corners = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    # perspective tilt: shrink one side (a view from the left/right/top/bottom) and jitter corners
    tilt = rng.uniform(0.0, 0.25)
    side = rng.integers(4)
    if side == 0:
        corners[[0, 3], 1] *= 1 - tilt
    elif side == 1:
        corners[[1, 2], 1] *= 1 - tilt
    elif side == 2:
        corners[[0, 1], 0] *= 1 - tilt
    else:
        corners[[2, 3], 0] *= 1 - tilt
    corners += rng.uniform(-0.05, 0.05, (4, 2)) * [w, h]
    angle = np.deg2rad(rng.uniform(-12, 12))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return (corners @ rot.T + [cx, cy]).astype(np.float32)


def warp(frame: np.ndarray, item: np.ndarray, quad: np.ndarray) -> None:
    """Blend `item` into `frame` (in place) with its corners at `quad`."""
    ih, iw = item.shape[:2]
    src = np.array([[0, 0], [iw, 0], [iw, ih], [0, ih]], np.float32)
    H = cv2.getPerspectiveTransform(src, quad)
    warped = cv2.warpPerspective(item, H, (FRAME_W, FRAME_H), flags=cv2.INTER_AREA)
    mask = cv2.warpPerspective(np.full((ih, iw), 255, np.uint8), H, (FRAME_W, FRAME_H))
    mask = cv2.GaussianBlur(mask, (3, 3), 0).astype(np.float32)[..., None] / 255
    frame[:] = (warped * mask + frame * (1 - mask)).astype(np.uint8)


def camera(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Light, glare, blur, noise and JPEG."""
    img = frame.astype(np.float32) / 255
    img = img * rng.uniform(0.75, 1.25, 3)  # colour cast (per-channel gain, BGR)
    img = np.clip(img, 0, 1) ** rng.uniform(0.65, 1.5)  # exposure
    if rng.random() < 0.5:  # glare: a bright soft blob
        yy, xx = np.mgrid[0:FRAME_H, 0:FRAME_W]
        gx, gy = rng.uniform(0, FRAME_W), rng.uniform(0, FRAME_H)
        r = rng.uniform(30, 120)
        blob = np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * r * r))[..., None]
        img = img + rng.uniform(0.3, 0.8) * blob
    img = np.clip(img * 255, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        sigma = rng.uniform(0.5, 2.0)
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    else:
        n = int(rng.integers(3, 10))
        kernel = np.zeros((n, n), np.float32)
        kernel[n // 2] = 1.0 / n
        M = cv2.getRotationMatrix2D(((n - 1) / 2, (n - 1) / 2), rng.uniform(0, 180), 1.0)
        kernel = cv2.warpAffine(kernel, M, (n, n))
        img = cv2.filter2D(img, -1, kernel / max(kernel.sum(), 1e-6))
    noise = rng.normal(0, rng.uniform(2, 8), img.shape)
    img = np.clip(img + noise, 0, 255).astype(np.uint8)
    ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(35, 76))])
    return cv2.imdecode(jpg, cv2.IMREAD_COLOR)


def capture(item: np.ndarray | None, scene: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    frame = scene_crop(scene, rng)
    quad = paste(frame, item, rng) if item is not None else np.zeros((4, 2), np.float32)
    return camera(frame, rng), quad


def captures(split: str, data: Path = DATA) -> list[Capture]:
    """The capture set of one split ("tune" or "test"): positives first, then negatives."""
    enrolled, unknown = split_records(data / "museum")
    scenes = scene_split(oxford_distractors(data / "oxford"), split)
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    cache: dict[Path, np.ndarray] = {}

    def scene() -> np.ndarray:
        p = scenes[rng.integers(len(scenes))]
        if p not in cache:
            cache[p] = cv2.imread(str(p))
        return cache[p]

    out = []
    for rec in enrolled:
        frame, quad = capture(cv2.imread(str(rec)), scene(), rng)
        out.append(Capture(frame, record_label(rec), record_label(rec), quad))
    for rec in unknown_split(unknown, split):
        item = cv2.imread(str(rec))
        for _ in range(NEG_PER_UNKNOWN):
            frame, quad = capture(item, scene(), rng)
            out.append(Capture(frame, None, record_label(rec), quad))
    for _ in range(EMPTY_SCENES):
        frame, quad = capture(None, scene(), rng)
        out.append(Capture(frame, None, None, quad))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=sorted(SPLIT_SEEDS), default="tune")
    ap.add_argument("--out", type=Path, required=True, help="folder to write the frames to (outside the repo)")
    ap.add_argument("--limit", type=int, default=40)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    caps = captures(args.split)
    pick = caps[: args.limit // 2] + caps[-args.limit // 2 :]
    for i, c in enumerate(pick):
        cv2.imwrite(str(args.out / f"{i:03d}_{c.record or 'empty'}_{'known' if c.label else 'unknown'}.jpg"), c.frame)
    print(f"{len(caps)} captures in the {args.split} split; wrote {len(pick)} to {args.out}")


if __name__ == "__main__":
    main()
