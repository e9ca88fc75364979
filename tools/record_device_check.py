"""Record in a model card the descriptors of its check images (`validation.images`) as computed
here, for `edge-retrieval doctor` to compare on the device (`validation.device_check`).

    python -m tools.record_device_check --model edge_retrieval/data/models/mobilenet_v2_240x320_int8.tflite

Run it after tools.convert and tools.learn_whitening (the descriptors are whitened), with the
default kernels (EDGE_RETRIEVAL_OP_RESOLVER unset).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_retrieval.doctor import DEVICE_CHECK, reference  # noqa: E402
from edge_retrieval.embedder import Embedder  # noqa: E402
from edge_retrieval.modelcard import DEFAULT_MODEL, ModelCard  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    args = parser.parse_args()
    if os.environ.get("EDGE_RETRIEVAL_OP_RESOLVER"):
        sys.exit("unset EDGE_RETRIEVAL_OP_RESOLVER: the reference is made with the default kernels")
    card_path = ModelCard.path_for(args.model)
    with Embedder(args.model) as emb:
        check = reference(emb)
    card = ModelCard.load(card_path)
    replace(card, validation={**card.validation, DEVICE_CHECK: check}).save(card_path)
    print(f"{card_path}: {DEVICE_CHECK} of {len(check['images'])} image(s) recorded")


if __name__ == "__main__":
    main()
