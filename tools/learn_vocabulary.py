"""Learn the ORB vocabulary (edge_retrieval/vocabulary.py) from a folder of distractor photos
and save it as the package's edge_retrieval/data/orb_vocabulary.npz.

    python -m tools.learn_vocabulary --oxford ../shared/data/oxford

With --oxford, the photos are the *tune* half of the Oxford pure distractors (the same split
benchmarks/captures.py uses for its tune scenes and tools/learn_whitening.py learns from), so
the test captures' scenes and every Oxford query and positive stay unseen. ORB features are
extracted as enrolment does (at most 500 per photo, the photo shrunk to ≤ 640 px). Only the
centroids are shipped, never the photos. It takes ≈ 6 s here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_retrieval import verify, vocabulary  # noqa: E402
from edge_retrieval.preprocess import read_image  # noqa: E402
from tools import distractors  # noqa: E402

FEATURES_PER_PHOTO = 500
SIDE = 640
NODES = 64
BRANCHING = 64
ITERATIONS = 8
SEED = 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    distractors.add_arguments(ap)
    ap.add_argument("--out", type=Path, default=vocabulary.VOCABULARY)
    args = ap.parse_args(argv)
    photos, source, option = distractors.photos(args)
    descriptors = np.concatenate([verify.extract(read_image(p), FEATURES_PER_PHOTO, SIDE).descriptors for p in photos])
    vocab = vocabulary.Vocabulary.learn(descriptors, NODES, BRANCHING, ITERATIONS, SEED)
    vocab.save(
        args.out,
        source=source,
        descriptors=str(len(descriptors)),
        method=f"two-level k-majority, {NODES} × {BRANCHING}, {ITERATIONS} iterations, seed {SEED}; "
        f"ORB ≤ {FEATURES_PER_PHOTO} per photo at ≤ {SIDE} px",
        reproduce=f"python -m tools.learn_vocabulary {option}",
    )
    print(
        f"learned a {NODES} × {BRANCHING} vocabulary from {len(descriptors)} ORB descriptors of {len(photos)} photos → {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
