"""Measure the demo clip's score distributions to choose the default decision thresholds.

Every frame of the built-in demo clip is embedded whole (GeM descriptor of the full frame,
as the daemon does without an ROI) and searched in the demo gallery (the enrolled demo
photos). Frames are grouped by what they show:

  item     an enrolled item, at least 60 % inside the frame   -> top score should pass
  held-out an item that is *not* enrolled ("tissue")          -> should not pass
  empty    background only                                    -> should not pass

and the script prints each group's top-score and margin quantiles and the threshold that
separates them (the midpoint of the widest gap between "item" p05 and the others' max).

    python benchmarks/thresholds.py [--seed 0] [--model models/mobilenet_v2_int8.tflite]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_retrieval import democlip  # noqa: E402
from edge_retrieval.camera import FileSource, SourceEnded  # noqa: E402
from edge_retrieval.demo import photo  # noqa: E402
from edge_retrieval.embedder import Embedder  # noqa: E402
from edge_retrieval.enroll import enroll  # noqa: E402
from edge_retrieval.recognize import PRESETS  # noqa: E402
from edge_retrieval.storage.gallery import Gallery  # noqa: E402


def measure(embedder: Embedder, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    clip = democlip.DemoClip(seed)
    path = democlip.clip_path(seed)
    groups: dict[str, dict[str, list]] = {
        g: {"score": [], "margin": [], "correct": []} for g in ("item", "held-out", "empty", "partial")
    }
    with tempfile.TemporaryDirectory() as tmp, Gallery(Path(tmp) / "g.db") as gallery:
        enroll(gallery, embedder, [(name, photo(name)) for name in democlip.enrolled()])
        source = FileSource(str(path), decode_size=embedder.input_size)  # as the service decodes it
        try:
            while True:
                frame = source.read()
                truth = clip.truth(frame.index)
                label, visible = clip.visible(frame.index)
                m = gallery.search(embedder.embed(frame.image), k=2)
                score, runner = float(m.scores[0, 0]), float(m.scores[0, 1])
                if truth is None and label is not None and visible > 0:
                    group = "partial"
                elif truth is None:
                    group = "empty"
                elif truth in democlip.HELD_OUT:
                    group = "held-out"
                else:
                    group = "item"
                g = groups[group]
                g["score"].append(score)
                g["margin"].append(score - runner)
                g["correct"].append(truth is not None and m.labels[0, 0] == truth)
        except SourceEnded:
            pass
        finally:
            source.close()
    return {name: {k: np.asarray(v) for k, v in g.items()} for name, g in groups.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None)
    parser.add_argument("--threshold", type=float, default=PRESETS["whole"].threshold)
    parser.add_argument("--margin", type=float, default=PRESETS["whole"].margin)
    args = parser.parse_args(argv)
    with Embedder(args.model) as emb:
        groups = measure(emb, args.seed)
    q = (0, 5, 50, 95, 100)
    print(f"demo clip seed {args.seed}, model {emb.card.name}, whole-frame {emb.card.pooling} descriptor")
    print(f"{'group':<9} {'frames':>6}  top score  min / p05 / p50 / p95 / max      margin  min / p05 / p50")
    for name, g in groups.items():
        if not len(g["score"]):
            continue
        s = np.percentile(g["score"], q)
        mg = np.percentile(g["margin"], q[:3])
        print(
            f"{name:<9} {len(g['score']):>6}  "
            + " / ".join(f"{v:.3f}" for v in s)
            + "   "
            + " / ".join(f"{v:.3f}" for v in mg)
        )
    item = groups["item"]
    print(f"item frames whose top label is right: {item['correct'].mean():.1%}")
    negatives = np.concatenate([groups["empty"]["score"], groups["held-out"]["score"]])
    low, high = negatives.max(), np.percentile(item["score"][item["correct"]], 5)
    print(
        f"highest non-item score {low:.3f}; item p05 (right label) {high:.3f}; "
        f"midpoint threshold {(low + high) / 2:.3f}"
    )
    neg_margins = np.concatenate([groups["empty"]["margin"], groups["held-out"]["margin"]])
    print(
        f"highest non-item margin {neg_margins.max():.3f}; item margin p05 "
        f"{np.percentile(item['margin'][item['correct']], 5):.3f}"
    )
    threshold, margin = args.threshold, args.margin
    print(f"frames passing threshold {threshold} and margin {margin}:")
    for name, g in groups.items():
        passed = (g["score"] >= threshold) & (g["margin"] >= margin)
        print(f"  {name:<9} {passed.mean():6.1%} ({passed.sum()}/{len(passed)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
