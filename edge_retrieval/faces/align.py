"""A face's 5 landmarks → a 112×112 crop in the ArcFace template's pose (what the embedder expects).

The similarity transform (rotation, uniform scale, translation) that maps the landmarks onto the
template best in the least-squares sense (Umeyama's closed form, as insightface's
`norm_crop` computes it; no outlier rejection: five points, all trusted), applied with one
`cv2.warpAffine` (a large face is halved first so the warp does not alias).
"""

from __future__ import annotations

import cv2
import numpy as np

SIZE = 112
# insightface's ArcFace template for 112×112: left eye, right eye, nose, left and right mouth corner
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    np.float32,
)


def similarity(landmarks: np.ndarray) -> np.ndarray:
    """The 2×3 similarity matrix taking (5, 2) landmarks onto TEMPLATE."""
    src = np.asarray(landmarks, np.float64).reshape(5, 2)
    dst = TEMPLATE.astype(np.float64)
    # Umeyama (1991): least squares over rotation, scale and translation, closed form
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ sign @ vt
    var = (s**2).sum() / len(src)
    scale = (sigma * np.diag(sign)).sum() / var if var > 0 else 1.0
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def align(frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The face with these landmarks as a SIZE×SIZE crop of `frame` (same colour order)."""
    landmarks = np.asarray(landmarks, np.float32).reshape(5, 2)
    m = similarity(landmarks)
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale < 0.5:  # a large face: halve the region around it first (a linear warp would alias)
        h, w = frame.shape[:2]
        reach = 2.5 * SIZE / scale  # the template's 112 px at this scale, with room to spare
        x0, y0 = np.maximum(landmarks.mean(0) - reach / 2, 0).astype(int)
        x1, y1 = int(min(x0 + reach, w)), int(min(y0 + reach, h))
        region, offset = frame[y0:y1, x0:x1], np.array([x0, y0], np.float32)
        factor = 1
        while scale * factor < 0.5 and min(region.shape[:2]) >= 4:
            region, factor = cv2.pyrDown(region), factor * 2
        landmarks = (landmarks - offset) / factor
        frame, m = region, similarity(landmarks)
    return cv2.warpAffine(frame, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
