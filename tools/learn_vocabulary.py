"""Learn the ORB vocabulary (edge_retrieval/vocabulary.py) from a folder of distractor photos
and save it as the package's edge_retrieval/data/orb_vocabulary.npz.

    python -m tools.learn_vocabulary --oxford ../shared/data/oxford

With --oxford, the photos are the *tune* half of the Oxford pure distractors (the same split
benchmarks/captures.py uses for its tune scenes and tools/learn_whitening.py learns from), so
the test captures' scenes and every Oxford query and positive stay unseen. ORB features are
extracted as enrolment does (at most 500 per photo, the photo shrunk to ≤ 640 px). Only the
centroids are shipped, never the photos. It takes ≈ 10 s here.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from edge_retrieval import verify, vocabulary  # noqa: E402
from edge_retrieval.enroll import list_images  # noqa: E402
from edge_retrieval.preprocess import read_image  # noqa: E402

FEATURES_PER_PHOTO = 500
SIDE = 640
NODES = 64
BRANCHING = 64
SEED = 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--oxford", type=Path, help="the Oxford folder: use the tune half of its pure distractors")
    src.add_argument("--photos", type=Path, help="any folder of distractor photos")
    ap.add_argument("--out", type=Path, default=vocabulary.VOCABULARY)
    args = ap.parse_args(argv)
    if args.oxford:
        import captures

        photos = captures.scene_split(captures.oxford_distractors(args.oxford), "tune")
        source = f"Oxford pure distractors, tune half ({len(photos)} photos; benchmarks/captures.py scene_split)"
    else:
        photos = list_images(args.photos)
        source = f"{args.photos} ({len(photos)} photos)"
    descriptors = np.concatenate([verify.extract(read_image(p), FEATURES_PER_PHOTO, SIDE).descriptors for p in photos])
    vocab = vocabulary.Vocabulary.learn(descriptors, NODES, BRANCHING, seed=SEED)
    vocab.save(args.out, source=source, descriptors=str(len(descriptors)),
               method=f"two-level k-majority, {NODES} × {BRANCHING}, 8 iterations, seed {SEED}; "
                      f"ORB ≤ {FEATURES_PER_PHOTO} per photo at ≤ {SIDE} px",
               reproduce="python -m tools.learn_vocabulary " + (f"--oxford {args.oxford}" if args.oxford else f"--photos {args.photos}"))
    print(f"learned a {NODES} × {BRANCHING} vocabulary from {len(descriptors)} ORB descriptors of {len(photos)} photos → {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
