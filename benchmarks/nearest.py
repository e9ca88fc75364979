"""Issue 18: the ORB search of the `default` preset (vocabulary.py: `Vocabulary.assign`,
`InvertedFile.nearest2`) of this checkout against an earlier revision's, on the tune captures.

    python benchmarks/nearest.py                      # against 41301a3, the search before it was made faster
    python benchmarks/nearest.py --before HEAD~1 --every 2
    python benchmarks/nearest.py --tradeoffs 2,8,2000 2,6,2000 2,8,1500   # what fewer would cost


The earlier revision's edge_retrieval/vocabulary.py is loaded beside this one (`git show`). First
both must give the same distances and positions for every ORB descriptor of every frame (2000
per 640×480 frame, as the preset extracts them, against the 200 enrolled records' ~92k); then,
interleaved frame by frame so that a shared CPU's load falls on both alike: `nearest2` of the
frame's descriptors on one thread, and the whole `recognize` with each revision's
recognize/regional.py (how the threads share the search) and vocabulary.py.

`--tradeoffs`: instead, variants that change the results — top-level nodes and leaves probed,
ORB features of the frame — each with its TPIR at FPIR 1 %, recall@1 and `recognize` ms on
the whole split (enrolled as quality.py enrols: 8 views a photo), every frame run by each
variant in turn.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import captures as capture_sim  # noqa: E402
import quality  # noqa: E402

from edge_retrieval import verify, vocabulary  # noqa: E402
from edge_retrieval.embedder import Embedder  # noqa: E402
from edge_retrieval.enroll import enroll  # noqa: E402
from edge_retrieval.recognize import PRESETS, open_recognizer  # noqa: E402
from edge_retrieval.storage.gallery import Gallery  # noqa: E402

BEFORE = "41301a3"


def load_before(revision: str, path: str, name: str):
    """The module at `path` as it was at `revision`, loaded as `name` beside today's."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{revision}:{path}"], check=True, capture_output=True, text=True
    ).stdout
    file = Path(tempfile.mkdtemp()) / Path(path).name
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)  # in the package: its relative imports resolve
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def interleaved(frames, before, after, rounds: int) -> tuple[np.ndarray, np.ndarray]:
    """ms of before(frame) and after(frame), alternating which goes first."""
    ms = np.zeros((2, rounds, len(frames)))
    for r in range(rounds):
        for i, frame in enumerate(frames):
            for k in (0, 1) if (r + i) % 2 == 0 else (1, 0):
                start = time.perf_counter()
                (before, after)[k](frame)
                ms[k, r, i] = 1000 * (time.perf_counter() - start)
    return ms[0].ravel(), ms[1].ravel()


def report(what: str, before: np.ndarray, after: np.ndarray) -> None:
    print(
        f"{what:<28} before {np.median(before):6.2f} ms, after {np.median(after):6.2f} ms "
        f"(median of per-frame ratios {np.median(after / before):.3f}; p90 {np.percentile(before, 90):.1f} → "
        f"{np.percentile(after, 90):.1f} ms)",
        flush=True,
    )


def tradeoffs(split: str, variants: list[str]) -> None:
    """TPIR, recall@1 and ms of each variant (nodes,leaves,features) on the split."""
    parsed = [tuple(int(x) for x in v.split(",")) for v in variants]
    caps = capture_sim.captures(split)
    enrolled, _ = capture_sim.split_records()
    config = quality.CONFIGS["default"]
    runs = {v: {"correct": [], "scores": [], "ms": []} for v in parsed}
    with Embedder(config.model) as emb, Gallery(":memory:") as g:
        enroll(g, emb, [(capture_sim.record_label(p), p) for p in enrolled], augment=config.augment)
        rec = open_recognizer(emb, g, config.preset)
        rec.recognize(caps[0].frame)
        for i, c in enumerate(caps):
            for k in range(len(parsed)):
                v = parsed[(i + k) % len(parsed)]  # each variant first in turn
                nodes, leaves, features = v
                vocabulary.InvertedFile.nearest2.__defaults__ = (nodes, leaves)
                rec.preset = replace(config.preset, query_features=features)
                start = time.perf_counter()
                result = rec.recognize(c.frame)
                runs[v]["ms"].append(1000 * (time.perf_counter() - start))
                runs[v]["correct"].append(result.best is not None and result.best.label == c.label)
                runs[v]["scores"].append(result.score)
        rec.close()
    pos = np.array([c.label is not None for c in caps])
    for (nodes, leaves, features), r in runs.items():
        m = quality.capture_metrics({k: np.array(x) for k, x in r.items()} | {"pos": pos})
        print(
            f"nodes {nodes}, leaves {leaves}, features {features}: TPIR@FPIR1% {m['dir_at_fpir_1pc']:.3f}, "
            f"recall@1 {m['recall_at_1']:.3f}, recognize median {m['ms_per_frame_median']:.1f} ms "
            f"(p90 {m['ms_per_frame_p90']:.1f})",
            flush=True,
        )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=BEFORE, help=f"the git revision to compare with (default {BEFORE})")
    ap.add_argument("--split", choices=("tune", "test"), default="tune")
    ap.add_argument("--every", type=int, default=4, help="every n-th capture of the split")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tradeoffs", nargs="+", metavar="NODES,LEAVES,FEATURES", help="variants to compare instead")
    args = ap.parse_args(argv)
    if args.tradeoffs:
        print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
        tradeoffs(args.split, args.tradeoffs)
        print(f"load average {os.getloadavg()[0]:.2f}")
        return 0
    old = load_before(args.before, "edge_retrieval/vocabulary.py", "edge_retrieval._vocabulary_before")
    old_regional = load_before(args.before, "edge_retrieval/recognize/regional.py", "edge_retrieval.recognize._before")
    old_regional.InvertedFile = old.InvertedFile  # the recognizer of before searches with the search of before
    caps = capture_sim.captures(args.split)[:: args.every]
    enrolled, _ = capture_sim.split_records()
    print(f"load average {os.getloadavg()[0]:.2f}; {len(caps)} {args.split} captures", flush=True)
    with Embedder() as emb, Gallery(":memory:") as g:
        enroll(g, emb, [(capture_sim.record_label(p), p) for p in enrolled])
        rec = open_recognizer(emb, g, PRESETS["default"])
        rec.recognize(caps[0].frame)
        index = rec.local_index()
        gallery = np.concatenate([f.descriptors for f in index.images])
        after = index.inverted
        before = old.InvertedFile(old.Vocabulary.load(vocabulary.VOCABULARY), gallery)
        queries = [
            verify.extract(c.frame, PRESETS["default"].query_features, fast_threshold=verify.QUERY_FAST_THRESHOLD)
            for c in caps
        ]
        for q in queries:
            for got, want in zip(after.nearest2(q.descriptors), before.nearest2(q.descriptors)):
                if not np.array_equal(got, want):
                    raise SystemExit(f"{args.before} and this checkout differ on a frame")
        print(
            f"identical: distances and positions of all {sum(map(len, queries))} frame descriptors "
            f"({len(gallery)} gallery descriptors, {vocabulary.NODES_PROBED} nodes, {vocabulary.LEAVES_PROBED} leaves)",
            flush=True,
        )
        report(
            "nearest2, one thread",
            *interleaved([q.descriptors for q in queries], before.nearest2, after.nearest2, args.rounds),
        )

        then = old_regional.RegionalRecognizer(
            emb, g, PRESETS["default"], rec.thresholds, vocabulary=old.Vocabulary.load(vocabulary.VOCABULARY)
        )
        for c in caps[:20]:  # the same rankings
            a, b = then.recognize(c.frame), rec.recognize(c.frame)
            if [(x.label, x.score, x.votes) for x in a.candidates] != [
                (x.label, x.score, x.votes) for x in b.candidates
            ]:
                raise SystemExit(f"{args.before} and this checkout rank a frame differently")
        report("recognize (default)", *interleaved([c.frame for c in caps], then.recognize, rec.recognize, args.rounds))
        then.close()
        rec.close()
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
