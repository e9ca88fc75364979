"""A minimal float MTCNN and the ArcFace 5-point alignment, for the face converter only.

The converter needs aligned 112×112 faces to calibrate and validate the embedder; this is
the smallest detector that finds them with the npm package's own pnet/rnet/onet. It follows
the package's Kotlin (MTCNN.kt, MyUtil.kt): pixels (x − 127.5) / 128, images *transposed*
(W, H) as the Caffe-trained nets expect, box regression (dx1, dy1, dx2, dy2) in box widths,
landmarks x0..x4 then y0..y4 relative to the box. The runtime has its own detector
(edge_retrieval/faces/); this one is never imported there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# The standard ArcFace/InsightFace template for a 112×112 crop: left eye, right eye, nose tip,
# left and right mouth corners (x, y) in pixels.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
FACE_SIZE = 112
THRESHOLDS = (0.6, 0.7, 0.7)  # pnet, rnet, onet: the package's values
SCALE_FACTOR = 0.709


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # (4,) x1, y1, x2, y2 in pixels
    score: float
    landmarks: np.ndarray  # (5, 2) x, y in pixels, ArcFace order


def _normalize(rgb: np.ndarray) -> np.ndarray:
    return (rgb.astype(np.float32) - 127.5) / 128.0


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first."""
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if method == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom < threshold]
    return np.array(keep, dtype=np.int64)


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    size = np.stack([boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1] * 2, axis=1)
    return boxes + reg * size


def _square(boxes: np.ndarray) -> np.ndarray:
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    side = np.maximum(w, h)
    cx, cy = boxes[:, 0] + w / 2, boxes[:, 1] + h / 2
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2 - 1, cy + side / 2 - 1], axis=1)


def _crops(rgb: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Each box resampled to size×size (outside the image is black), normalized and transposed."""
    out = np.empty((len(boxes), size, size, 3), np.float32)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        sx, sy = size / (x2 - x1 + 1), size / (y2 - y1 + 1)
        m = np.array([[sx, 0, -x1 * sx], [0, sy, -y1 * sy]], np.float32)
        crop = cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
        out[k] = _normalize(crop).transpose(1, 0, 2)
    return out


class MTCNN:
    """pnet → rnet → onet with LiteRT float interpreters; `detect(rgb)` → faces, best first."""

    def __init__(self, folder: str | Path, prefix: str = "", num_threads: int = 2):
        """`folder`/`prefix`pnet.tflite etc.: the package's assets (no prefix) or the shipped copies ("mtcnn_")."""
        from edge_retrieval.embedder import load_interpreter

        folder = Path(folder)
        self.nets = {
            n: load_interpreter(str(folder / f"{prefix}{n}.tflite"), num_threads) for n in ("pnet", "rnet", "onet")
        }

    def _run(self, name: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        interp = self.nets[name]
        inp = interp.get_input_details()[0]
        if list(inp["shape"]) != list(batch.shape):
            interp.resize_tensor_input(inp["index"], list(batch.shape))
            interp.allocate_tensors()
        interp.set_tensor(inp["index"], batch)
        interp.invoke()
        return {d["name"].split("/", 1)[1]: interp.get_tensor(d["index"]) for d in interp.get_output_details()}

    def detect(self, rgb: np.ndarray, min_face: int = 40) -> list[Face]:
        h, w = rgb.shape[:2]
        found = []
        size = float(min_face)
        while size <= min(h, w):
            s = 12.0 / size
            hs, ws = int(np.ceil(h * s)), int(np.ceil(w * s))
            if min(hs, ws) < 12:
                break
            img = _normalize(cv2.resize(rgb, (ws, hs), interpolation=cv2.INTER_AREA)).transpose(1, 0, 2)[None]
            out = self._run("pnet", np.ascontiguousarray(img))
            prob = out["prob1"][0, :, :, 1].T  # back to (H', W')
            reg = out["conv4-2/BiasAdd"][0].transpose(1, 0, 2)
            ys, xs = np.nonzero(prob > THRESHOLDS[0])
            if ys.size:
                boxes = np.stack([xs * 2 / s, ys * 2 / s, (xs * 2 + 11) / s, (ys * 2 + 11) / s], axis=1)
                scores = prob[ys, xs]
                keep = _nms(boxes, scores, 0.5)
                found.append(np.hstack([boxes[keep], scores[keep, None], reg[ys, xs][keep]]))
            size /= SCALE_FACTOR
        if not found:
            return []
        cand = np.vstack(found)
        cand = cand[_nms(cand[:, :4], cand[:, 4], 0.7)]
        boxes = _square(_regress(cand[:, :4], cand[:, 5:9]))

        out = self._run("rnet", _crops(rgb, boxes, 24))
        scores = out["prob1"][:, 1]
        ok = scores > THRESHOLDS[1]
        boxes, scores, reg = boxes[ok], scores[ok], out["conv5-2/conv5-2"][ok]
        if not len(boxes):
            return []
        keep = _nms(boxes, scores, 0.7)
        boxes = _square(_regress(boxes[keep], reg[keep]))

        out = self._run("onet", _crops(rgb, boxes, 48))
        scores = out["prob1"][:, 1]
        ok = scores > THRESHOLDS[2]
        boxes, scores, reg, pts = boxes[ok], scores[ok], out["conv6-2/conv6-2"][ok], out["conv6-3/conv6-3"][ok]
        if not len(boxes):
            return []
        bw, bh = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
        marks = np.stack([boxes[:, :1] + pts[:, :5] * bw[:, None], boxes[:, 1:2] + pts[:, 5:] * bh[:, None]], axis=2)
        boxes = _regress(boxes, reg)
        keep = _nms(boxes, scores, 0.7, "min")
        return [Face(boxes[i], float(scores[i]), marks[i]) for i in keep]


def align(rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The 112×112 RGB crop whose five landmarks best fit ARCFACE_TEMPLATE (a similarity transform)."""
    m, _ = cv2.estimateAffinePartial2D(np.asarray(landmarks, np.float32), ARCFACE_TEMPLATE, method=cv2.LMEDS)
    return cv2.warpAffine(rgb, m, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
