"""Two backbones timed interleaved in one process (issue 18, item 3): the bare invoke and the
whole `default` preset per 640×480 capture.

    python benchmarks/backbone.py models/efficientnet_lite0_240x320_int8.tflite   # B against the default model

Both models enrol the 200 capture records (8 augmented views each, as benchmarks/quality.py);
then, capture by capture of the tune split (A first on even captures, B first on odd ones),
each recognizer ranks the frame and each model is invoked bare on it, 2 interpreter threads,
so load on this shared machine falls on both alike. Separate runs of quality.py, one model
after the other, differed by up to 1.5× in ms/frame between identical runs here; this does not.
Prints medians and p90s in ms and the ratios of medians B / A. Accuracy: benchmarks/quality.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: see edge_retrieval/__init__.py

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import captures as capture_sim  # noqa: E402

from edge_retrieval.embedder import Embedder  # noqa: E402
from edge_retrieval.enroll import enroll  # noqa: E402
from edge_retrieval.modelcard import DEFAULT_MODEL  # noqa: E402
from edge_retrieval.recognize import PRESETS, open_recognizer  # noqa: E402
from edge_retrieval.storage.gallery import Gallery  # noqa: E402

AUGMENT = 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="model B")
    ap.add_argument("--baseline", type=Path, default=DEFAULT_MODEL, help="model A (default: the default model)")
    ap.add_argument("--preset", default="default", choices=("default", "quick", "fast"))
    ap.add_argument("--frames", type=int, default=200, help="tune captures to time (default 200)")
    args = ap.parse_args()
    frames = [c.frame for c in capture_sim.captures("tune")][: args.frames]
    enrolled, _ = capture_sim.split_records()
    models, recognizers, galleries = {}, {}, []
    for key, path in (("A", args.baseline), ("B", args.model)):
        models[key] = Embedder(path)
        gallery = Gallery(":memory:")
        galleries.append(gallery)
        enroll(gallery, models[key], [(capture_sim.record_label(p), p) for p in enrolled], augment=AUGMENT)
        recognizers[key] = open_recognizer(models[key], gallery, PRESETS[args.preset])
        recognizers[key].recognize(frames[0])  # builds the local index: not a frame's cost
    times: dict[str, dict[str, list[float]]] = {k: {"frame": [], "invoke": []} for k in models}
    for i, frame in enumerate(frames):
        for k in ("A", "B") if i % 2 == 0 else ("B", "A"):
            start = time.perf_counter()
            recognizers[k].recognize(frame)
            times[k]["frame"].append(1000 * (time.perf_counter() - start))
            x = models[k].prepare(frame)
            start = time.perf_counter()
            models[k].invoke(x)
            times[k]["invoke"].append(1000 * (time.perf_counter() - start))
    out: dict = {"preset": args.preset, "frames": len(frames)}
    for k, m in models.items():
        out[k] = {"model": m.model_path.name, "input": [m.card.input_height, m.card.input_width]}
        for what, ms in times[k].items():
            out[k][f"{what}_ms_median"] = round(float(np.median(ms)), 2)
            out[k][f"{what}_ms_p90"] = round(float(np.percentile(ms, 90)), 2)
    for what in ("frame", "invoke"):
        out[f"{what}_ratio_B_over_A"] = round(out["B"][f"{what}_ms_median"] / out["A"][f"{what}_ms_median"], 3)
    for r in recognizers.values():
        r.close()
    for m in models.values():
        m.close()
    for g in galleries:
        g.close()
    print(json.dumps(out))


if __name__ == "__main__":
    cv2.setNumThreads(2)
    main()
