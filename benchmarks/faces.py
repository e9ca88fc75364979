"""People: identification at FPIR = 1 % and the cost of a 640×480 frame, beside dlib's route.

Data: ../shared/data/faces (13 identities, identity_groups.json) and simulated camera views:
faces 40–140 px wide pasted into real scenes (Oxford distractor photos), 1–5 a frame, with
light, blur, noise and JPEG.

Nothing is tuned on what it is reported on. Identities go into two folds (alternately, in the
order of identity_groups.json); in each fold the identities with ≥ 5 photos are *enrolled*
(their first ENROL photos) and the others are *never enrolled*:
    tune: enrolled id00 id02 id04 id06 (25 photos), never enrolled id08 id10 id12 (8 photos)
    test: enrolled id01 id03 id05 (19 photos), never enrolled id07 id09 id11 (9 photos)
Probes are the photos not enrolled, as they are ("photos") and pasted into the fold's own
scenes ("camera"). The threshold for FPIR = 1 % is set on the tune fold's camera views and
applied to the test fold, which reports DIR (identified correctly and above the threshold,
a missed face counts as a miss) and its own measured FPIR. Non-mated searches: every face
against the persons who are not its own (a never-enrolled face against all; an enrolled
person's face as if that person had not been enrolled: 7 and 6 identities a fold instead of
3) and detections that are no pasted face at all.

Timing: detection + alignment + embedding of each test frame (median, 90th percentile).

dlib's route (HOG detector upsampled once, 5-point shape, 128-d ResNet; cosine of its
descriptors as the score) runs on the same frames when `dlib` and `face_recognition_models`
are installed (benchmark only: pip install dlib-bin==20.0.1.post1 face-recognition-models==0.3.0).

    python benchmarks/faces.py               # ≈ 3 min on 2 shared cores
    python benchmarks/faces.py --frames 40   # quicker
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from captures import oxford_distractors, scene_crop, scene_split  # noqa: E402

from edge_retrieval.calibrate import threshold_at  # noqa: E402
from edge_retrieval.faces.detect import Detector  # noqa: E402
from edge_retrieval.faces.embed import FaceEmbedder  # noqa: E402
from edge_retrieval.recognize.faces import open_face_recognizer  # noqa: E402
from edge_retrieval.storage.gallery import Gallery  # noqa: E402

DATA = Path(os.environ.get("EDGE_RETRIEVAL_DATA") or Path(__file__).resolve().parent.parent.parent / "shared" / "data")
FACES = DATA / "faces"
FPIR = 0.01
ENROL = 2  # photos enrolled a person
MIN_PHOTOS = 5  # identities with fewer photos are the never-enrolled ones
FRAME_W, FRAME_H = 640, 480
SEEDS = {"tune": 11, "test": 22}


@dataclass
class Fold:
    enrolled: dict[str, list[Path]]  # person → enrolment photos
    probes: list[tuple[str | None, Path]]  # (person or None if never enrolled, photo)


def folds() -> dict[str, Fold]:
    groups = json.loads((FACES / "identity_groups.json").read_text())
    out = {"tune": Fold({}, []), "test": Fold({}, [])}
    for i, (person, files) in enumerate(groups.items()):
        fold = out["tune" if i % 2 == 0 else "test"]
        paths = [FACES / f for f in files]
        if len(paths) >= MIN_PHOTOS:
            fold.enrolled[person] = paths[:ENROL]
            fold.probes += [(person, p) for p in paths[ENROL:]]
        else:
            fold.probes += [(None, p) for p in paths]
    return out


# -- the camera ---------------------------------------------------------------------------
@dataclass
class View:
    frame: np.ndarray
    truth: list[tuple[str | None, np.ndarray]] = field(default_factory=list)  # (person, box x0 y0 x1 y1)


def head(photo: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The head and some surroundings cut from a photo, with the face box in the cut's coordinates."""
    x0, y0, x1, y1 = box
    cx, cy, s = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * 0.9
    h, w = photo.shape[:2]
    a, b = int(max(cx - s, 0)), int(max(cy - s, 0))
    c, d = int(min(cx + s, w)), int(min(cy + s, h))
    return photo[b:d, a:c], np.array([x0 - a, y0 - b, x1 - a, y1 - b], np.float32)


def simulate(fold: Fold, scenes: list[Path], n: int, seed: int, detector: Detector) -> list[View]:
    rng = np.random.default_rng(seed)
    cuts = []
    for person, path in fold.probes:
        photo = cv2.imread(str(path))
        found = detector.detect(photo, 20)
        if len(found):
            cuts.append((person, *head(photo, found.boxes[int(np.argmax(found.widths))])))
    views = []
    for _ in range(n):
        frame = scene_crop(cv2.imread(str(scenes[rng.integers(len(scenes))])), rng)
        view = View(frame)
        taken: list[np.ndarray] = []
        for _ in range(rng.integers(1, 6)):
            person, cut, box = cuts[rng.integers(len(cuts))]
            width = rng.uniform(40, 140)
            s = width / (box[2] - box[0])
            cut = cv2.resize(cut, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
            ch, cw = cut.shape[:2]
            if ch >= FRAME_H or cw >= FRAME_W:
                continue
            for _try in range(20):  # a place that overlaps no other face
                x, y = int(rng.integers(0, FRAME_W - cw)), int(rng.integers(0, FRAME_H - ch))
                placed = np.array([x, y, x + cw, y + ch], np.float32)
                if all(_iou(placed, t) == 0 for t in taken):
                    break
            else:
                continue
            taken.append(placed)
            mask = np.zeros((ch, cw), np.float32)
            cv2.ellipse(mask, (cw // 2, ch // 2), (cw // 2 - 1, ch // 2 - 1), 0, 0, 360, 1, -1)
            mask = cv2.GaussianBlur(mask, (0, 0), max(cw / 20, 1))[..., None]
            roi = frame[y : y + ch, x : x + cw]
            roi[:] = (cut * mask + roi * (1 - mask)).astype(np.uint8)
            view.truth.append((person, box * s + [x, y, x, y]))
        view.frame = _camera(frame, rng)
        views.append(view)
    return views


def _camera(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Light (gain, gamma), blur (half the frames), sensor noise and JPEG at quality 40–90."""
    img = frame.astype(np.float32) / 255
    img = np.clip(img * rng.uniform(0.6, 1.3), 0, 1) ** rng.uniform(0.7, 1.4)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.3))
    img = img + rng.normal(0, rng.uniform(0.005, 0.03), img.shape)
    img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 91))])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# -- the two routes: a frame → [(box, best person, score)] --------------------------------
class Ours:
    name = "MTCNN + MobileFaceNet"

    def __init__(self, fold: Fold, tmp: Path):
        tmp.mkdir(parents=True)
        self.gallery = Gallery(tmp / "people.db")
        self.rec = open_face_recognizer(self.gallery)
        from edge_retrieval.faces.enroll import enroll_faces

        enroll_faces(self.rec, [(p, f) for p, files in fold.enrolled.items() for f in files], skip_bad=True)

    def faces(self, frame: np.ndarray):
        ranking = self.rec.recognize(frame)
        return [(f.box, {c.label: c.score for c in f.candidates}) for f in ranking.faces]

    def timed(self, frame: np.ndarray) -> tuple[float, float]:
        """(detection + alignment + embedding, detection alone) in ms (the gallery scan is µs)."""
        t = time.perf_counter()
        self.rec.faces(frame)
        t1 = time.perf_counter()
        self.rec.detector.detect(frame)
        return (t1 - t) * 1000, (time.perf_counter() - t1) * 1000

    def largest(self, photo: np.ndarray):
        found = self.faces(photo)
        return max(found, key=lambda f: f[0][2] - f[0][0]) if found else None


class Dlib:
    name = "dlib HOG + ResNet"

    def __init__(self, fold: Fold, tmp: Path):
        import dlib

        models = Path(importlib.util.find_spec("face_recognition_models").submodule_search_locations[0]) / "models"
        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self.net = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
        labels, vecs = [], []
        for person, files in fold.enrolled.items():
            for f in files:
                found = self._describe(cv2.imread(str(f)))
                if found:
                    box, vec = max(found, key=lambda x: x[0][2] - x[0][0])
                    labels.append(person)
                    vecs.append(vec)
        self.labels, self.vecs = labels, np.stack(vecs)

    def _describe(self, frame: np.ndarray):
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        out = []
        for r in self.detector(rgb, 1):  # upsampled once: HOG's 80 px window finds 40 px faces
            v = np.array(self.net.compute_face_descriptor(rgb, self.shape(rgb, r)), np.float32)
            out.append((np.array([r.left(), r.top(), r.right(), r.bottom()], np.float32), v / np.linalg.norm(v)))
        return out

    def faces(self, frame: np.ndarray):
        out = []
        for box, v in self._describe(frame):
            best: dict[str, float] = {}
            for label, s in zip(self.labels, (self.vecs @ v).tolist()):
                best[label] = max(best.get(label, -1.0), s)
            out.append((box, best))
        return out

    def timed(self, frame: np.ndarray) -> tuple[float, float]:
        t = time.perf_counter()
        self._describe(frame)
        t1 = time.perf_counter()
        self.detector(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), 1)
        return (t1 - t) * 1000, (time.perf_counter() - t1) * 1000

    def largest(self, photo: np.ndarray):
        found = self.faces(photo)
        return max(found, key=lambda f: f[0][2] - f[0][0]) if found else None


# -- scoring ------------------------------------------------------------------------------
def _search(scores: dict[str, float], person: str | None, mated: list, non_mated: list) -> None:
    """One face's scores by person → a mated search (its person enrolled) and a non-mated one:
    the best score over the *other* persons, as if its own had never been enrolled."""
    others = [s for label, s in scores.items() if label != person]
    non_mated.append(max(others, default=-np.inf))
    if person is not None:
        best = max(scores, key=scores.get) if scores else None
        mated.append((best == person, scores.get(best, -np.inf) if best else -np.inf))


def searches(route, views: list[View]) -> tuple[list, list, float]:
    """(mated: [(correct, score)], non-mated scores, share of pasted faces detected)."""
    mated, non_mated, detected, pasted = [], [], 0, 0
    for view in views:
        found = route.faces(view.frame)
        used = set()
        for person, box in view.truth:
            pasted += 1
            ious = [(_iou(box, f[0]), i) for i, f in enumerate(found) if i not in used]
            iou, i = max(ious, default=(0.0, -1))
            if iou >= 0.3:
                used.add(i)
                detected += 1
            _search(found[i][1] if iou >= 0.3 else {}, person, mated, non_mated)
        for i, f in enumerate(found):  # detections that are no pasted face
            if i not in used:
                _search(f[1], None, mated, non_mated)
    return mated, non_mated, detected / max(pasted, 1)


def photo_searches(route, fold: Fold) -> tuple[list, list]:
    mated, non_mated = [], []
    for person, path in fold.probes:
        best = route.largest(cv2.imread(str(path)))
        _search(best[1] if best else {}, person, mated, non_mated)
    return mated, non_mated


def dir_at(mated: list, threshold: float) -> float:
    return float(np.mean([ok and s > threshold for ok, s in mated])) if mated else float("nan")


def fpir_at(non_mated: list, threshold: float) -> float:
    return float(np.mean(np.array(non_mated) > threshold)) if non_mated else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100, help="camera views a fold")
    parser.add_argument("--no-dlib", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not (FACES / "identity_groups.json").is_file():
        sys.exit(f"{FACES} absent: the faces data set lives in ../shared/data (EDGE_RETRIEVAL_DATA)")
    routes = [Ours]
    if args.no_dlib:
        print("dlib column: skipped (--no-dlib)")
    elif importlib.util.find_spec("dlib") and importlib.util.find_spec("face_recognition_models"):
        routes.append(Dlib)
    else:
        print("dlib column: skipped (pip install dlib-bin==20.0.1.post1 face-recognition-models==0.3.0)")
    fs = folds()
    scenes = oxford_distractors()
    detector = Detector()
    views = {s: simulate(fs[s], scene_split(scenes, s), args.frames, SEEDS[s], detector) for s in ("tune", "test")}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for route_cls in routes:
            r = {}
            for split in ("tune", "test"):
                route = route_cls(fs[split], Path(tmp) / f"{route_cls.__name__}-{split}")  # a gallery a fold
                r[split] = {"photos": photo_searches(route, fs[split]), "camera": searches(route, views[split])}
                if split == "test":
                    r["ms"] = np.array([route.timed(v.frame) for v in views["test"]])
            t = threshold_at(r["tune"]["camera"][1], FPIR)
            tp = threshold_at(r["tune"]["photos"][1] + r["tune"]["camera"][1], FPIR)
            own = threshold_at(r["test"]["camera"][1], FPIR)  # set on the test fold itself: separability only
            results[route_cls.name] = {
                "threshold (tune camera, FPIR 1 %)": t,
                "tune camera: DIR": dir_at(r["tune"]["camera"][0], t),
                "test camera: DIR": dir_at(r["test"]["camera"][0], t),
                "test camera: FPIR": fpir_at(r["test"]["camera"][1], t),
                "threshold (test camera, FPIR 1 %)": own,
                "test camera: DIR at that threshold": dir_at(r["test"]["camera"][0], own),
                "test camera: rank-1": float(np.mean([ok for ok, _ in r["test"]["camera"][0]])),
                "test camera: faces detected": r["test"]["camera"][2],
                "test photos: DIR": dir_at(r["test"]["photos"][0], tp),
                "test photos: FPIR": fpir_at(r["test"]["photos"][1], tp),
                "test photos: rank-1": float(np.mean([ok for ok, _ in r["test"]["photos"][0]])),
                "ms a frame (median)": float(np.median(r["ms"][:, 0])),
                "ms a frame (p90)": float(np.percentile(r["ms"][:, 0], 90)),
                "ms detection alone (median)": float(np.median(r["ms"][:, 1])),
            }
    with FaceEmbedder() as emb:  # the model the figures belong to (the preset's tuned_for)
        counts = {"face embedder": f"{emb.card.name} ({emb.model_path}, sha256 {emb.sha256[:12]}…)"}
    counts |= {
        s: f"{len(fs[s].enrolled)} enrolled, {sum(p is None for p, _ in fs[s].probes)} never-enrolled photos, "
        f"{sum(len(v.truth) for v in views[s])} faces in {len(views[s])} views"
        for s in ("tune", "test")
    }
    if args.json:
        print(json.dumps({"folds": counts, "results": results}, indent=2))
        return
    for s, c in counts.items():
        print(f"{s}: {c}")
    names = list(results)
    print(f"{'':38}" + "".join(f"{n:>24}" for n in names))
    for key in results[names[0]]:
        print(f"{key:38}" + "".join(f"{results[n][key]:>24.3f}" for n in names))


if __name__ == "__main__":
    main()
