"""Explain an identification: draw where the item was found, so a person can see why.

The verified outline (the enrolled photo's corners through the homography) and the inlier
points when verification found the item; else the best-matching region; and the verdict.
"""

from __future__ import annotations

import cv2
import numpy as np

from .recognize import Ranking

GREEN, AMBER, RED = (60, 200, 60), (0, 170, 255), (50, 50, 230)


def draw(frame: np.ndarray, result: Ranking) -> np.ndarray:
    """A copy of the BGR frame with the best candidate's evidence and the verdict drawn on it."""
    out = frame.copy() if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    h, w = out.shape[:2]
    best = result.best
    colour = GREEN if result.match else RED
    if best is not None:
        if best.region is not None:
            x0, y0, x1, y1 = (np.asarray(best.region) * [w, h, w, h]).astype(int)
            cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), AMBER, 1)  # the region that matched best
        if best.outline is not None:
            cv2.polylines(out, [best.outline.astype(np.int32).reshape(-1, 1, 2)], True, colour, 2)
        if best.points is not None:
            for x, y in best.points.astype(int):
                cv2.circle(out, (int(x), int(y)), 2, colour, -1)
    if result.match:
        text = f"{result.label}  score {result.score:.2f}"
    elif best is not None:
        text = f"unknown  (best {best.label} {result.score:.2f})"
    else:
        text = "unknown  (empty gallery)"
    if best is not None and best.inliers:
        text += f"  {best.inliers} inliers"
    elif best is not None and best.aligned:
        text += f"  aligned {best.aligned:.3f}"
    cv2.rectangle(out, (0, 0), (w, 22), (0, 0, 0), -1)
    cv2.putText(out, text, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
    return out
