"""Geometric verification of a shortlist: ORB features of the frame matched against the
features stored for each candidate (Hamming, Lowe's ratio test), then a homography fitted with
USAC-MAGSAC (`fit`); the inliers are the evidence that the item is really there and where.
`recognize.regional` finds the matches of all candidates at once (vocabulary.InvertedFile); `Verifier`
matches one frame against one candidate by brute force.

ORB because it is fast (≈ 6 ms for 2000 features on a 640×480 frame here) and binary (32 bytes
a feature in the gallery). Where ORB finds nothing — a blurred or small item, whose corners a
640 px frame no longer has — SIFT on the frame shrunk to 240 px still finds the blobs: the
second verifier (`extract_sift`, `match_sift`), run only on the candidates ORB left without
inliers (full-size SIFT was ≈ 200 ms a frame here; at 240 px ≈ 1.4× ORB's extraction).
Where neither finds enough — a textureless, dark or blurred item — the dense verifier (`align`)
fits the photo's grey image itself onto the frame (ECC) and measures how well it correlates.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

KIND = "orb"
GALLERY_FEATURES = 500  # per enrolled image, detected at ≤ GALLERY_SIDE px
GALLERY_SIDE = 512
QUERY_FEATURES = 2000  # per frame, at its own size (640×480)
QUERY_SIDE = 640
# FAST corner threshold (OpenCV's default 20 for the gallery's sharp photos). A blurred frame has
# few corners that strong, so the frame's are detected at 12: on the tune captures 5 of the 45
# misses gain inliers for the right item and none of the negatives (benchmarks/evidence.py --local-views)
FAST_THRESHOLD = 20
QUERY_FAST_THRESHOLD = 12
RATIO = 0.8  # Lowe's ratio test
# a gallery-wide match must also be this near (bits of 256): in a small gallery the ratio test
# alone passes a third of a frame's features by chance (a 2-item gallery: 683 of 2000, at a
# median distance of 84), and their votes would look like evidence
MAX_DISTANCE = 64
REPROJECTION_PX = 5.0  # in the frame
MIN_MATCHES = 8  # fewer ratio-test matches: no homography is tried
# fewer inliers are no evidence: 4 points fix a homography exactly, and in a repetitive texture
# (a brick wall) a fifth can fall on it by chance; on the tune captures no right item has < 8
MIN_INLIERS = 6

# the second verifier: SIFT (uint8 descriptors, 128 bytes a feature) on the frame at 240 px
# against each unverified candidate's SIFT features stored at enrolment (384 px). On the tune
# captures (benchmarks/second.py) it names 16 of the 41 items ORB missed; with fewer than 8
# inliers a quarter of them come by chance in the never-enrolled frames, with 8 none did
SIFT_KIND = "sift"
SIFT_FEATURES = 500
SIFT_GALLERY_SIDE = 384
SIFT_QUERY_SIDE = 240
SIFT_MIN_INLIERS = 8
SIFT_OCTAVE_LAYERS = 2  # Lowe's 3 found as many on tune, at ≈ 1.1× the time

# the dense verifier: the photo's grey image (stored at enrolment, ≤ 64 px) aligned onto the frame
# shrunk to 160 px by a homography (ECC, Evangelidis & Psarakis 2008), started where template
# matching at half that size finds the photo best. On the tune captures the right items it aligns
# correlate 0.98–0.995, wrong items in the never-enrolled frames at most 0.969 (one-off replays, not
# kept); what it adds and costs: benchmarks/second.py --without dense
DENSE_KIND = "gray"
DENSE_PHOTO_SIDE = 64
DENSE_FRAME_SIDE = 160
DENSE_TEMPLATE = 32  # px: the photo as ECC aligns it
DENSE_HEIGHTS = (0.35, 0.45, 0.55, 0.65, 0.75)  # the item's height in the frame that template matching tries
DENSE_ITERATIONS = 15  # 30 aligned no more on tune
DENSE_MIN_CC = 0.975


@dataclass(frozen=True)
class LocalFeatures:
    keypoints: np.ndarray  # (n, 2) float32 x, y in an image of `size`
    descriptors: np.ndarray  # (n, bytes) uint8; a grey image (extract_gray): (height, width), no keypoints
    size: tuple[int, int]  # (width, height) of the image the points live in

    def __len__(self) -> int:
        return len(self.keypoints)


def gray_at_most(image: np.ndarray, max_side: int) -> np.ndarray:
    """A BGR or grey image as grey, shrunk to at most `max_side` px on its long side."""
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    scale = max_side / max(gray.shape[:2])
    if scale < 1:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return gray


def extract(
    image: np.ndarray,
    max_features: int = QUERY_FEATURES,
    max_side: int = QUERY_SIDE,
    fast_threshold: int = FAST_THRESHOLD,
) -> LocalFeatures:
    """ORB keypoints and descriptors of a BGR or grey image, shrunk to at most `max_side` px
    (points are in the shrunk image; `size` says which)."""
    gray = gray_at_most(image, max_side)
    keypoints, descriptors = cv2.ORB_create(max_features, fastThreshold=fast_threshold).detectAndCompute(gray, None)
    if descriptors is None:
        descriptors = np.empty((0, 32), np.uint8)
    points = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)
    return LocalFeatures(points, descriptors, (gray.shape[1], gray.shape[0]))


def extract_sift(
    image: np.ndarray, max_features: int = SIFT_FEATURES, max_side: int = SIFT_QUERY_SIDE
) -> LocalFeatures:
    """SIFT keypoints and uint8 descriptors (n, 128) of a BGR or grey image shrunk to at most
    `max_side` px (points in the shrunk image)."""
    gray = gray_at_most(image, max_side)
    keypoints, descriptors = cv2.SIFT_create(max_features, SIFT_OCTAVE_LAYERS).detectAndCompute(gray, None)
    # OpenCV's SIFT descriptors are whole numbers 0..255 held as float32: stored as bytes
    descriptors = np.empty((0, 128), np.uint8) if descriptors is None else np.clip(descriptors, 0, 255).astype(np.uint8)
    points = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)
    return LocalFeatures(points, descriptors, (gray.shape[1], gray.shape[0]))


def match_sift(frame: LocalFeatures, candidate: LocalFeatures, ratio: float = RATIO) -> tuple[np.ndarray, np.ndarray]:
    """(frame indices, candidate indices) of the frame's SIFT descriptors whose nearest candidate
    descriptor (L2) passes the ratio test: one BLAS product (OpenCV's brute-force L2 matcher is
    ≈ 10× slower here), then the two nearest by two passes."""
    if len(frame) < 1 or len(candidate) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    a = frame.descriptors.astype(np.float32)
    b = candidate.descriptors.astype(np.float32)
    # |a − b|² less the frame's own |a|², which does not change a row's order: added back below
    d = a @ b.T
    d *= -2
    d += (b * b).sum(1)
    rows = np.arange(len(a))
    nearest = d.argmin(1)
    first = d[rows, nearest]
    d[rows, nearest] = np.inf
    second = d.min(1)
    norms = (a * a).sum(1)
    first, second = np.sqrt(np.maximum(first + norms, 0)), np.sqrt(np.maximum(second + norms, 0))
    good = np.flatnonzero(first < ratio * second)
    return good, nearest[good]


def extract_gray(image: np.ndarray, max_side: int = DENSE_PHOTO_SIDE) -> LocalFeatures:
    """The dense verifier's photo: its grey image at ≤ `max_side` px, held as `descriptors`
    (height, width) with no keypoints (the gallery stores it as such)."""
    gray = gray_at_most(image, max_side)
    return LocalFeatures(np.empty((0, 2), np.float32), gray, (gray.shape[1], gray.shape[0]))


@dataclass(frozen=True)
class Alignment:
    correlation: float  # ECC's: the photo against the frame inside `quad` (-1: no alignment)
    quad: np.ndarray | None  # (4, 2) the photo's outline in the frame given to `align`


def align(frame_gray: np.ndarray, photo_gray: np.ndarray) -> Alignment:
    """The dense verifier: where is `photo_gray` in `frame_gray` (the frame's grey image at
    DENSE_FRAME_SIDE) and how well does it correlate there. Template matching on the frame at half
    size tries the photo at each of DENSE_HEIGHTS; from the best place, ECC fits a homography.
    An outline that is folded, tiny or larger than the frame is no alignment."""
    if min(frame_gray.shape) < 24:  # nothing to align in a frame this small
        return Alignment(-1.0, None)
    half = cv2.resize(frame_gray, (frame_gray.shape[1] // 2, frame_gray.shape[0] // 2), interpolation=cv2.INTER_AREA)
    half = half.astype(np.float32)
    ph, pw = photo_gray.shape
    best = (-np.inf, None)
    for share in DENSE_HEIGHTS:
        h = int(round(share * half.shape[0]))
        w = int(round(h * pw / ph))
        if not 6 <= w < half.shape[1] or h >= half.shape[0]:
            continue
        small = cv2.resize(photo_gray, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
        _, peak, _, (x, y) = cv2.minMaxLoc(cv2.matchTemplate(half, small, cv2.TM_CCOEFF_NORMED))
        if peak > best[0]:
            best = (peak, np.float32([[x, y], [x + w, y], [x + w, y + h], [x, y + h]]) * 2)
    if best[1] is None:
        return Alignment(-1.0, None)
    side = DENSE_TEMPLATE
    corners = np.float32([[0, 0], [side, 0], [side, side], [0, side]])
    template = cv2.resize(photo_gray, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
    warp = cv2.getPerspectiveTransform(corners, best[1])
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, DENSE_ITERATIONS, 1e-4)
    try:
        cc, warp = cv2.findTransformECC(
            template, frame_gray.astype(np.float32), warp.astype(np.float32), cv2.MOTION_HOMOGRAPHY, criteria, None, 5
        )
    except cv2.error:  # did not converge
        return Alignment(-1.0, None)
    quad = cv2.perspectiveTransform(corners.reshape(-1, 1, 2), warp).reshape(4, 2)
    h, w = frame_gray.shape
    area = cv2.contourArea(quad)
    if not cv2.isContourConvex(quad.reshape(-1, 1, 2)) or not 0.02 * w * h <= area <= 1.5 * w * h:
        return Alignment(-1.0, None)
    return Alignment(float(cc), quad)


@dataclass(frozen=True)
class Verification:
    inliers: int  # 0 when there is no plausible homography
    matches: int  # ratio-test matches
    homography: np.ndarray | None  # 3×3, candidate image → frame
    quad: np.ndarray | None  # (4, 2) the candidate image's outline in the frame
    points: np.ndarray  # (inliers, 2) inlier points in the frame


NOTHING = Verification(0, 0, None, None, np.empty((0, 2), np.float32))


def plausible(quad: np.ndarray, frame_size: tuple[int, int]) -> bool:
    """A convex outline of a sensible size: rejects the folded or degenerate homographies a
    random set of matches can produce."""
    if not cv2.isContourConvex(quad.astype(np.float32).reshape(-1, 1, 2)):
        return False
    area = cv2.contourArea(quad.astype(np.float32))
    w, h = frame_size
    return 0.01 * w * h <= area <= 4 * w * h


class Verifier:
    """Matches a frame's features against a candidate's.

    >>> v = Verifier()
    >>> frame = extract(image)
    >>> v.verify(frame, candidate_features).inliers
    """

    def __init__(self, ratio: float = RATIO, reprojection: float = REPROJECTION_PX, min_matches: int = MIN_MATCHES):
        self.ratio, self.reprojection, self.min_matches = ratio, reprojection, min_matches
        self._matcher = cv2.BFMatcher(cv2.NORM_HAMMING)

    def verify(self, frame: LocalFeatures, candidate: LocalFeatures) -> Verification:
        if len(frame) < self.min_matches or len(candidate) < 2:
            return NOTHING
        pairs = self._matcher.knnMatch(frame.descriptors, candidate.descriptors, k=2)
        good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < self.ratio * m[1].distance]
        return fit(
            frame,
            candidate,
            np.array([m.queryIdx for m in good], np.int64),
            np.array([m.trainIdx for m in good], np.int64),
            self.reprojection,
            self.min_matches,
        )


def fit(
    frame: LocalFeatures,
    candidate: LocalFeatures,
    frame_idx: np.ndarray,
    candidate_idx: np.ndarray,
    reprojection: float = REPROJECTION_PX,
    min_matches: int = MIN_MATCHES,
    min_inliers: int = MIN_INLIERS,
) -> Verification:
    """The homography (USAC-MAGSAC) of matched points: frame point `frame_idx[i]` is the
    candidate's point `candidate_idx[i]`; NOTHING (with the match count) unless there are
    `min_matches`, `min_inliers` fit it and the candidate's outline lands plausibly in the frame."""
    if len(frame_idx) < min_matches:
        return Verification(0, len(frame_idx), None, None, NOTHING.points)
    src, dst = candidate.keypoints[candidate_idx], frame.keypoints[frame_idx]
    H, mask = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, reprojection)
    if H is None or mask is None:
        return Verification(0, len(frame_idx), None, None, NOTHING.points)
    w, h = candidate.size
    corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]]).reshape(-1, 1, 2)
    quad = cv2.perspectiveTransform(corners, H).reshape(4, 2)
    inside = mask.ravel().astype(bool)
    if inside.sum() < min_inliers or not plausible(quad, frame.size):
        return Verification(0, len(frame_idx), None, None, NOTHING.points)
    return Verification(int(inside.sum()), len(frame_idx), H, quad, dst[inside])
