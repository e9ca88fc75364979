"""The regional recognizer: items anywhere in a cluttered frame (the `default` preset).

    embed once → global + regional descriptors → scan (an item scores by its best region)
    ORB features of the frame → their nearest gallery features (vocabulary.InvertedFile)
      → ratio test → votes per item
    → shortlist: the scan's best items and the most voted → verify each (MAGSAC on its matches)
      → those without inliers again by SIFT (the second verifier)
    → score = cosine + W·ln(1 + inliers); candidates ranked by score + V·ln(1 + votes)
    → the best one, if still unverified, aligned by ECC (the dense verifier): if it correlates,
      it scores as MIN_INLIERS inliers would
    → match if the best one's score passes the item's calibrated threshold and no negative vetoes it.

The votes find an item the CNN ranks low: a small part of a cluttered frame, tilted, under
other light (issue 4: recall@1 on the capture simulation 0.59 with the CNN shortlist alone).

Presets (recognize.PRESETS): `default`; `quick` with half the frame's ORB features (≈ 25 %
faster); `fast` without ORB at all (the CNN regions alone, ≈ 3× faster).
"""

from __future__ import annotations

import math
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Sequence

import numpy as np

from .. import verify as verify_mod
from ..quantize import dequantize
from ..regions import Regions
from ..vocabulary import InvertedFile, Vocabulary
from . import Candidate, Preset, Ranking, Stage, no_stage
from .thresholds import Negatives, Thresholds

# score = cosine + INLIER_WEIGHT · ln(1 + inliers), rank = score + VOTE_WEIGHT · ln(1 + votes);
# chosen on the *tune* capture split (benchmarks/quality.py), where they beat inliers alone,
# inliers + votes/1000, and cosine + inliers/25 or /50
INLIER_WEIGHT = 0.25
VOTE_WEIGHT = 0.1
SPLIT_MIN = 256  # frame descriptors per thread below which one thread searches them all


def final_score(cosine: float, inliers: int) -> float:
    """The evidence that decides match or unknown: what the CNN saw and what the geometry
    confirmed. Votes stay out: in a small gallery many come by chance."""
    return cosine + INLIER_WEIGHT * math.log1p(inliers)


def rank_key(c: Candidate) -> float:
    """The order of the candidates: the score, and the votes among unverified ones."""
    return c.score + VOTE_WEIGHT * math.log1p(c.votes)


class LocalIndex:
    """The gallery's local features at one generation: each enrolled image's features and item,
    and an inverted file over all their descriptors. Built again from a `previous` index, only
    the images enrolled since are assigned to the vocabulary's leaves (287 items: 0.24 s from
    scratch, ≈ 30 ms after a change)."""

    def __init__(self, gallery, vocabulary: Vocabulary, previous: LocalIndex | None = None):
        every = gallery.all_features()
        rows = [(row, item, f) for row, item, f in every if f[0] == verify_mod.KIND]
        self.sift: dict[int, list[verify_mod.LocalFeatures]] = {}  # item → its photos' SIFT features
        self.gray: dict[int, list[np.ndarray]] = {}  # item → its photos' grey images (the dense verifier's)
        for _row, item, (kind, size, kp, desc) in every:
            if kind == verify_mod.SIFT_KIND:
                self.sift.setdefault(item, []).append(verify_mod.LocalFeatures(kp, desc, size))
            elif kind == verify_mod.DENSE_KIND:
                self.gray.setdefault(item, []).append(desc)
        self.images = [verify_mod.LocalFeatures(kp, desc, size) for _row, _item, (_kind, size, kp, desc) in rows]
        self.item_of_image = np.array([item for _row, item, _f in rows], np.int64)
        counts = np.array([len(f) for f in self.images], np.int64)
        self.image = np.repeat(np.arange(len(counts)), counts)  # per gallery descriptor
        self.point = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        known = previous.leaves if previous is not None and previous.inverted.vocabulary is vocabulary else {}
        self.leaves: dict[int, np.ndarray] = {  # per feature row: its descriptors' leaves
            row: known[row] if row in known else vocabulary.assign(f.descriptors)[:, 0]
            for (row, _item, _f), f in zip(rows, self.images)
        }
        descriptors = (
            np.concatenate([f.descriptors for f in self.images]) if self.images else np.empty((0, 32), np.uint8)
        )
        leaves = np.concatenate([self.leaves[row] for row, _item, _f in rows]) if rows else np.empty(0, np.int64)
        self.inverted = InvertedFile(vocabulary, descriptors, leaves)

    def matches(
        self,
        query: verify_mod.LocalFeatures,
        ratio: float = verify_mod.RATIO,
        max_distance: int = verify_mod.MAX_DISTANCE,
        helper: Executor | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The frame's matches: (frame point index, gallery descriptor position) of the frame
        descriptors whose nearest gallery descriptor is near and passes the ratio test. With a
        `helper`, the descriptors are searched in SPLIT_MIN parts shared with it (NumPy lets go of
        the GIL in the big array operations: ≈ 1.6× faster on 2 cores), even when the helper is
        still busy (with the frame's SIFT): it takes parts from the end once free, this thread
        from the start."""
        descriptors = query.descriptors
        if helper is None or len(descriptors) < 2 * SPLIT_MIN:
            distance, position = self.inverted.nearest2(descriptors)
        else:
            parts = [descriptors[lo : lo + SPLIT_MIN] for lo in range(0, len(descriptors), SPLIT_MIN)]
            theirs = [helper.submit(self.inverted.nearest2, part) for part in parts[:0:-1]][::-1]
            found = [self.inverted.nearest2(parts[0])]
            for part, future in zip(parts[1:], theirs):  # a part the helper has not begun is searched here
                found.append(self.inverted.nearest2(part) if future.cancel() else future.result())
            distance, position = np.concatenate([d for d, _ in found]), np.concatenate([p for _, p in found])
        good = np.flatnonzero(
            (position[:, 0] >= 0) & (distance[:, 0] <= max_distance) & (distance[:, 0] < ratio * distance[:, 1])
        )
        return good, position[good, 0]


class RegionalRecognizer:
    """Embedder + gallery (+ the gallery's local features) → a `Ranking` per frame."""

    def __init__(
        self,
        embedder,
        gallery,
        preset: Preset,
        thresholds: Thresholds,
        *,
        stage: Stage = no_stage,
        vocabulary: Vocabulary | None = None,
    ):
        self.embedder, self.gallery, self.preset, self.thresholds = embedder, gallery, preset, thresholds
        self.stage = stage
        self.vocabulary = vocabulary
        self.negatives = Negatives(gallery)
        self._index: LocalIndex | None = None
        self._generation = -1
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="local-features")

    # -- pieces ------------------------------------------------------------------
    def local_index(self) -> LocalIndex:
        """The gallery's local features, brought up to date when the gallery changed."""
        generation = self.gallery.generation()
        if self._index is None or generation != self._generation:
            if self.vocabulary is None:
                self.vocabulary = Vocabulary.load()
            self._index, self._generation = LocalIndex(self.gallery, self.vocabulary, self._index), generation
        return self._index

    def shortlist(self, regions: Regions, k: int) -> list[Candidate]:
        """Items ranked by their best region's cosine."""
        matches = self.gallery.search(regions.vectors, k)
        best: dict[int, tuple[float, int, str]] = {}
        for r in range(len(regions)):
            for item_id, label, score in zip(matches.item_ids[r], matches.labels[r], matches.scores[r]):
                if item_id not in best or score > best[item_id][0]:
                    best[int(item_id)] = (float(score), r, str(label))
        ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:k]
        return [Candidate(i, label, s, s, regions.boxes[r]) for i, (s, r, label) in ranked]

    def candidates(self, regions: Regions, item_ids: Sequence[int]) -> list[Candidate]:
        """These items as candidates: each with its best region's cosine."""
        matrix = self.gallery.matrix()
        labels = self.gallery.labels(np.asarray(item_ids, np.int64))
        out = []
        for item_id, label in zip(item_ids, labels):
            rows = np.flatnonzero(matrix.keys == item_id)
            if not len(rows):  # enrolled this instant: in the local index, not yet in the cached matrix
                continue
            vectors = dequantize(matrix.rows(rows), matrix.scales[rows])
            scores = regions.vectors @ vectors.T  # (regions, the item's embeddings)
            r = int(np.argmax(scores.max(1)))
            cosine = float(scores[r].max())
            out.append(Candidate(int(item_id), str(label), cosine, cosine, regions.boxes[r]))
        return out

    def verified(
        self,
        frame: np.ndarray,
        regions: Regions,
        candidates: list[Candidate],
        query: verify_mod.LocalFeatures | None = None,
        sift: Future | None = None,
    ) -> list[Candidate]:
        """The shortlist plus the most voted items, each with its votes and its best image's
        verification (the outline and inliers scaled to the frame). `query`: the frame's ORB
        features, if already extracted; `sift`: the frame's SIFT features being extracted by the
        worker thread (the ORB search shares its parts with the worker once the SIFT is extracted)."""
        preset = self.preset
        index = self.local_index()
        if query is None:
            query = verify_mod.extract(frame, preset.query_features, fast_threshold=verify_mod.QUERY_FAST_THRESHOLD)
        points, positions = index.matches(query, helper=self._worker)
        image = index.image[positions]
        item = index.item_of_image[image]
        ids, counts = np.unique(item, return_counts=True)
        votes = dict(zip(ids.tolist(), counts.tolist()))
        listed = {c.item_id for c in candidates}
        voted = [i for i in ids[np.argsort(-counts, kind="stable")][: preset.voted].tolist() if i not in listed]
        sx, sy = frame.shape[1] / query.size[0], frame.shape[0] / query.size[1]
        out = []
        for c in candidates + self.candidates(regions, voted):
            best = verify_mod.NOTHING
            for img in np.unique(image[item == c.item_id]).tolist():
                mine = image == img
                v = verify_mod.fit(query, index.images[img], points[mine], index.point[positions[mine]])
                if v.inliers > best.inliers:
                    best = v
            outline = best.quad * [sx, sy] if best.quad is not None else None
            out.append(
                replace(
                    c,
                    score=final_score(c.cosine, best.inliers),
                    inliers=best.inliers,
                    outline=outline,
                    points=best.points * [sx, sy],
                    votes=votes.get(c.item_id, 0),
                )
            )
        if preset.sift:
            out = self.sift_verified(frame, out, index, sift.result() if sift is not None else None)
        return out

    def sift_verified(
        self,
        frame: np.ndarray,
        candidates: list[Candidate],
        index: LocalIndex,
        query: verify_mod.LocalFeatures | None = None,
    ) -> list[Candidate]:
        """The second verifier: the candidates ORB left without inliers, verified by SIFT on the
        frame at 240 px against their photos' SIFT features. `query`: the frame's SIFT features,
        if already extracted."""
        todo = [n for n, c in enumerate(candidates) if not c.inliers and c.item_id in index.sift]
        if not todo:
            return candidates
        if query is None:
            query = verify_mod.extract_sift(frame)
        sx, sy = frame.shape[1] / query.size[0], frame.shape[0] / query.size[1]

        def best_fits(items: list[int]) -> list[verify_mod.Verification]:
            out = []
            for item_id in items:
                best = verify_mod.NOTHING
                for photo in index.sift[item_id]:
                    found, theirs = verify_mod.match_sift(query, photo)
                    v = verify_mod.fit(query, photo, found, theirs, min_inliers=verify_mod.SIFT_MIN_INLIERS)
                    if v.inliers > best.inliers:
                        best = v
                out.append(best)
            return out

        # half of the candidates in the worker thread (idle now: the frame's SIFT is extracted)
        items = [candidates[n].item_id for n in todo]
        other = self._worker.submit(best_fits, items[1::2])
        mine = best_fits(items[0::2])
        fits = [None] * len(todo)
        fits[0::2], fits[1::2] = mine, other.result()
        out = list(candidates)
        for n, best in zip(todo, fits):
            if best.inliers:
                c = out[n]
                out[n] = replace(
                    c,
                    score=final_score(c.cosine, best.inliers),
                    inliers=best.inliers,
                    outline=best.quad * [sx, sy],
                    points=best.points * [sx, sy],
                )
        return out

    def aligned(self, frame: np.ndarray, candidates: list[Candidate], index: LocalIndex) -> list[Candidate]:
        """The dense verifier, when the best-ranked candidate is one neither ORB nor SIFT verified:
        each of its photos aligned onto the frame (verify.align); at DENSE_MIN_CC or more it counts
        as the least geometric verification would (MIN_INLIERS), and its outline is the alignment's."""
        if not candidates:
            return candidates
        n = max(range(len(candidates)), key=lambda n: rank_key(candidates[n]))
        c = candidates[n]
        if c.inliers or c.item_id not in index.gray:
            return candidates
        gray = verify_mod.gray_at_most(frame, verify_mod.DENSE_FRAME_SIDE)
        best = max((verify_mod.align(gray, photo) for photo in index.gray[c.item_id]), key=lambda a: a.correlation)
        if best.correlation < verify_mod.DENSE_MIN_CC:
            return candidates
        scale = frame.shape[1] / gray.shape[1]
        out = list(candidates)
        out[n] = replace(
            c,
            score=final_score(c.cosine, verify_mod.MIN_INLIERS),
            aligned=best.correlation,
            outline=best.quad * scale,
        )
        return out

    # -- the frame -----------------------------------------------------------------
    def recognize(self, frame: np.ndarray, boxes: Sequence[Sequence[float]] = ()) -> Ranking:
        """One BGR frame (any size) → its ranking. `boxes` (frame fractions x0, y0, x1, y1, e.g.
        where the scene moved) are described as extra regions."""
        preset = self.preset
        with self.stage("identify"):
            if not self.gallery.matrix().size:  # nothing enrolled (no count(*) of every item per frame)
                return Ranking(preset.name)
            sift = None
            if preset.verify:  # ORB features extracted beside the CNN; then both threads search them
                extracted = self._worker.submit(
                    verify_mod.extract, frame, preset.query_features, fast_threshold=verify_mod.QUERY_FAST_THRESHOLD
                )
                # or, when the second verifier may be asked (nearly every frame has a candidate ORB
                # leaves without inliers), the worker goes on to the frame's SIFT while this thread searches
                if preset.sift and self.local_index().sift:
                    sift = self._worker.submit(verify_mod.extract_sift, frame)
            try:
                regions = self.embedder.regions(frame, preset.levels, boxes)
                candidates = self.shortlist(regions, preset.shortlist)
            finally:
                query = extracted.result() if preset.verify else None
            if preset.verify:
                candidates = self.verified(frame, regions, candidates, query, sift)
            if preset.dense:
                candidates = self.aligned(frame, candidates, self.local_index())
            vetoed = self.negatives.vetoed(regions.vectors, candidates)
            candidates = [replace(c, vetoed=True) if c.item_id in vetoed else c for c in candidates]
            candidates.sort(key=lambda c: -rank_key(c))
            match, threshold, margin = self.thresholds.verdict(candidates)
            return Ranking(preset.name, candidates, match, threshold, margin, regions)

    def close(self) -> None:
        self._worker.shutdown(wait=True)  # no OpenCV call left running into the interpreter's exit
