"""Learn the PCA-whitening of a feature-map model's regional GeM descriptors from a folder of
distractor photos, save it beside the model and record it in the model card.

    python -m tools.learn_whitening --model edge_retrieval/data/models/mobilenet_v2_240x320_int8.tflite \\
        --oxford ../shared/data/oxford --dim 256

With --oxford, the photos are the *tune* half of the Oxford pure distractors (no query, good,
ok or junk image of any query; the same split benchmarks/captures.py uses for its tune
scenes), so the test captures' scenes and every Oxford query and positive stay unseen.
Only the learned mean and projection are shipped, never the photos.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_retrieval import regions  # noqa: E402
from edge_retrieval.embedder import Embedder  # noqa: E402
from edge_retrieval.modelcard import ModelCard, sha256_file  # noqa: E402
from edge_retrieval.preprocess import read_image  # noqa: E402
from tools import distractors  # noqa: E402

SHRINKAGE = 1.0
LEVELS = 3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    distractors.add_arguments(ap)
    ap.add_argument("--dim", type=int, default=256)
    args = ap.parse_args(argv)
    photos, source, option = distractors.photos(args)
    card_path = ModelCard.path_for(args.model)
    card = ModelCard.load(card_path)
    if card.whitening:  # learn from the raw pooled channels, not from an earlier whitening
        card = replace(card, whitening={})
        card.save(card_path)
    with Embedder(args.model) as emb:
        vectors = np.concatenate([emb.regions(read_image(p), LEVELS).vectors for p in photos])
    whitening = regions.Whitening.learn(vectors, args.dim, SHRINKAGE)
    out = args.model.with_suffix(".whitening.npz")
    whitening.save(out)
    spec = {
        "file": out.name,
        "dim": args.dim,
        "sha256": sha256_file(out),
        "shrinkage": SHRINKAGE,
        "source": source,
        "vectors": int(len(vectors)),
        "regions": f"whole image + R-MAC grid, {LEVELS} levels, GeM p={card.gem_p}",
        "reproduce": f"python -m tools.learn_whitening --model {args.model} {option} --dim {args.dim}",
    }
    replace(card, whitening=spec).save(card_path)
    print(f"learned {args.dim}-d whitening from {len(vectors)} regional descriptors of {len(photos)} photos → {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
