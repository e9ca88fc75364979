"""Per-frame latency of the service pipeline by stage, and its overhead over the bare model.

Runs the real service loop (`Daemon` with a video `FileSource` opened as `edge-retrieval run`
opens it: a Motion-JPEG file decoded at the model's input size, `--full-decode` for full
frames; every frame embedded: the motion gate off) over a video file, and in the same run,
interleaved round by round so both see the same machine load, the bare `Embedder.invoke` on
that clip's frames already prepared (the model's input size, 240×320 for the default model).
Reports, per round and as the median over rounds:

  stage ms        capture (the wait for the frame the source's thread decodes; with
                  --no-prefetch the decoding itself), motion, preprocess, invoke, pool, scan, decide
  frame ms        sum of the stages of one frame (its latency from reading to decision)
  loop ms         wall time of the whole run ÷ frames (everything the loop does)
  bare invoke ms  Embedder.invoke alone
  ratio           frame ms ÷ bare invoke ms (target ≤ 1.3), and loop ms ÷ bare invoke ms
  inline          frame ms ÷ the invoke stage of the same frames (immune to load drifting
                  between the two measurements on a shared machine)
  per embedded frame  median and p90 of the frame ms over every frame of every round

    python benchmarks/pipeline.py [VIDEO] [--rounds 7] [--frames 100] [--threads 2] [--resize 224x224]
                                  [--full-decode] [--no-prefetch] [--preset P] [--gallery DB] [--json]

Without VIDEO it uses the built-in demo clip (640×480 MJPEG, rendered and cached on first use),
without --gallery the demo's items. `--preset default` (also fast, quick) times a search preset
(decision.preset: `identify` replaces preprocess … scan; frames decoded at full size, as the
service opens them then); target ≤ 30 ms median per embedded frame at 640×480, e.g. on the clip
and gallery of benchmarks/service_quality.py:

    python benchmarks/pipeline.py --preset default --frames 400 --rounds 5 \
        --gallery ~/.cache/edge-retrieval/service-quality/clip-e40-u20-s0-f10-t3.db \
        ~/.cache/edge-retrieval/service-quality/clip-e40-u20-s0-f10-t3.avi
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# as edge_retrieval sets it, before numpy is imported (spinning BLAS threads beside the model's)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from edge_retrieval import democlip  # noqa: E402
from edge_retrieval.camera import FileSource, SourceEnded  # noqa: E402
from edge_retrieval.config import Config, DecisionConfig, MotionConfig, ServiceConfig  # noqa: E402
from edge_retrieval.demo import photo  # noqa: E402
from edge_retrieval.embedder import Embedder  # noqa: E402
from edge_retrieval.enroll import enroll  # noqa: E402
from edge_retrieval.service.daemon import Daemon  # noqa: E402
from edge_retrieval.service.metrics import Metrics  # noqa: E402
from edge_retrieval.service.systemd import Notifier  # noqa: E402
from edge_retrieval.storage.gallery import Gallery  # noqa: E402

WHOLE = "whole"  # the whole-frame preset (decision.preset)
PIPELINE_STAGES = ("capture", "motion", "preprocess", "invoke", "pool", "scan", "identify", "decide")


class Recorded(Metrics):
    """Metrics that also keep every embedded frame's work (ms), for percentiles over a round."""

    def __init__(self, window: int):
        super().__init__(window=window)
        self.embedded_ms: list[float] = []

    def frame_done(self, embedded: bool, latency: float | None = None) -> None:
        if embedded:
            self.embedded_ms.append(1000 * sum(v for k, v in self._current.items() if k != "wait"))
        super().frame_done(embedded, latency)


class Limited:
    """At most n frames of a source."""

    def __init__(self, source, n: int):
        self.source, self.n, self.name, self.live = source, n, source.name, False

    def read(self, timeout: float = 0.5):
        if self.n <= 0:
            raise SourceEnded(self.name)
        self.n -= 1
        return self.source.read(timeout)

    def close(self) -> None:
        self.source.close()


def prepared_tensors(emb: Embedder, video: str, n: int) -> list:
    source = FileSource(video)
    tensors = []
    try:
        while len(tensors) < n:
            tensors.append(emb.prepare(source.read().image))
    except SourceEnded:
        pass
    finally:
        source.close()
    return tensors


def bare_invoke_ms(emb: Embedder, tensors: list) -> float:
    emb.invoke(tensors[0])  # warm
    start = time.perf_counter()
    for tensor in tensors:
        emb.invoke(tensor)
    return (time.perf_counter() - start) / len(tensors) * 1000


def pipeline_round(
    emb: Embedder,
    gallery: Gallery,
    video: str,
    n: int,
    prefetch: bool = True,
    reduced: bool = True,
    preset: str = WHOLE,
) -> dict:
    config = Config(
        motion=MotionConfig(enabled=False),
        service=ServiceConfig(log_interval=0),
        decision=DecisionConfig(preset=preset),
    )
    metrics = Recorded(window=n)
    # as `edge-retrieval run` opens a video file (Daemon.open): reduced for the whole-frame preset only
    reduce = reduced and preset == WHOLE
    source = FileSource(video, prefetch=prefetch, decode_size=emb.input_size if reduce else None, yield_to=emb.idle)
    daemon = Daemon(
        config,
        embedder=emb,
        gallery=gallery,
        source=Limited(source, n),
        sinks=[],
        notifier=Notifier(None),
        stop=threading.Event(),
        metrics=metrics,
    )
    start = time.perf_counter()
    summary = daemon.run()
    wall = time.perf_counter() - start
    stages = metrics.stages()
    return {
        "frames": summary.frames,
        "stages_ms": {k: stages[k].mean_ms for k in PIPELINE_STAGES if k in stages},
        "frame_ms": metrics.frame_ms().mean_ms,
        "frame_p95_ms": metrics.frame_ms().p95_ms,
        "loop_ms": wall / summary.frames * 1000,
        "alerts": len(summary.decisions),
        "embedded_ms": metrics.embedded_ms,
    }


def resized_copy(video: str, size: str, folder: str) -> str:
    """The video re-encoded (MJPEG) at WxH, e.g. the model's own input size."""
    import cv2

    w, h = (int(v) for v in size.lower().split("x"))
    src = cv2.VideoCapture(video)
    fps = src.get(cv2.CAP_PROP_FPS) or 10.0
    out = str(Path(folder) / f"resized-{w}x{h}.avi")
    writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    while True:
        ok, frame = src.read()
        if not ok:
            break
        writer.write(cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA))
    writer.release()
    src.release()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", nargs="?", help="a video file (default: the built-in demo clip)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--frames", type=int, default=100, help="frames per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=None)
    parser.add_argument(
        "--no-prefetch",
        dest="prefetch",
        action="store_false",
        help="decode each frame in the loop instead of in the source's thread",
    )
    parser.add_argument(
        "--full-decode",
        dest="reduced",
        action="store_false",
        help="decode Motion-JPEG frames at full size (the service decodes them at the "
        "smallest scale that keeps the model's input size)",
    )
    parser.add_argument(
        "--resize",
        metavar="WxH",
        help="first re-encode the video at this size (e.g. 224x224, the model's input: no resize left in the pipeline)",
    )
    parser.add_argument(
        "--preset",
        choices=(WHOLE, "fast", "quick", "default"),
        default=WHOLE,
        help="decision.preset to time (default: whole)",
    )
    parser.add_argument("--gallery", type=Path, help="an existing gallery (default: the demo items, in a new one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    video = args.video or str(democlip.clip_path(0))
    rounds = []
    if args.gallery and not args.gallery.is_file():
        parser.error(f"{args.gallery}: no such gallery")
    with (
        Embedder(args.model, args.threads) as emb,
        tempfile.TemporaryDirectory() as tmp,
        Gallery(args.gallery or Path(tmp) / "g.db") as gallery,
    ):
        if not args.gallery:
            enroll(gallery, emb, [(name, photo(name)) for name in democlip.enrolled()])
        if args.resize:
            video = resized_copy(video, args.resize, tmp)
        tensors = prepared_tensors(emb, video, args.frames)
        for _ in range(args.rounds):
            invoke = bare_invoke_ms(emb, tensors)
            result = pipeline_round(emb, gallery, video, args.frames, args.prefetch, args.reduced, args.preset)
            result["bare_invoke_ms"] = invoke
            result["ratio"] = result["frame_ms"] / invoke
            result["loop_ratio"] = result["loop_ms"] / invoke
            # a search preset has no invoke stage of its own (identify runs the model and the rest)
            result["inline_ratio"] = result["frame_ms"] / result["stages_ms"].get("invoke", result["frame_ms"])
            rounds.append(result)
    med = {
        key: statistics.median(r[key] for r in rounds)
        for key in ("bare_invoke_ms", "frame_ms", "loop_ms", "ratio", "loop_ratio", "inline_ratio")
    }
    med["stages_ms"] = {k: statistics.median(r["stages_ms"][k] for r in rounds) for k in rounds[0]["stages_ms"]}
    per_frame = np.array([ms for r in rounds for ms in r.pop("embedded_ms")])
    embedded = {
        "frames": int(per_frame.size),
        "median_ms": float(np.median(per_frame)),
        "p90_ms": float(np.percentile(per_frame, 90)),
    }
    embedded["median_ratio"] = embedded["median_ms"] / med["bare_invoke_ms"]
    report = {
        "video": video,
        "resize": args.resize,
        "reduced_decode": args.reduced and args.preset == WHOLE,
        "preset": args.preset,
        "gallery": str(args.gallery or "demo items"),
        "model": emb.card.name,
        "input": [emb.card.input_height, emb.card.input_width],
        "threads": args.threads,
        "frames_per_round": args.frames,
        "rounds": rounds,
        "median": med,
        "per_embedded_frame": embedded,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{video}{' resized to ' + args.resize if args.resize else ''}: {args.rounds} rounds × {args.frames} frames, model {emb.card.name} "
        f"{emb.card.input_height}×{emb.card.input_width}, {args.threads} thread(s), motion gate off, "
        f"decode {'prefetched' if args.prefetch else 'in the loop'}"
        f"{'' if args.reduced and args.preset == WHOLE else ', at full size'}, preset {args.preset}, "
        f"gallery {args.gallery or 'demo items'}"
    )
    print(
        "round  "
        + "  ".join(f"{s:>10}" for s in rounds[0]["stages_ms"])
        + f"  {'frame':>7}  {'loop':>7}  {'bare inv':>8}  {'ratio':>6}  {'loop/inv':>8}  {'inline':>6}"
    )
    for i, r in enumerate(rounds + [dict(med, frames=0)]):
        name = f"{i + 1:>5}" if i < len(rounds) else "  med"
        print(
            f"{name}  "
            + "  ".join(f"{r['stages_ms'][s]:>10.2f}" for s in rounds[0]["stages_ms"])
            + f"  {r['frame_ms']:>7.2f}  {r['loop_ms']:>7.2f}  {r['bare_invoke_ms']:>8.2f}  {r['ratio']:>6.2f}"
            f"  {r['loop_ratio']:>8.2f}  {r['inline_ratio']:>6.2f}"
        )
    if args.preset == WHOLE:
        print(
            f"end-to-end per frame {med['frame_ms']:.2f} ms = {med['ratio']:.2f} × the bare invoke "
            f"({med['bare_invoke_ms']:.2f} ms at {emb.card.input_height}×{emb.card.input_width}); "
            f"target ≤ 1.3 {'met' if med['ratio'] <= 1.3 else 'NOT met'}; "
            f"{med['inline_ratio']:.2f} × the invoke stage of the same frames"
        )
    print(
        f"per embedded frame ({embedded['frames']} frames): median {embedded['median_ms']:.2f} ms "
        f"(= {embedded['median_ratio']:.2f} × the bare invoke), p90 {embedded['p90_ms']:.2f} ms"
        + (
            f"; target ≤ 30 ms median {'met' if embedded['median_ms'] <= 30 else 'NOT met'}"
            if args.preset != WHOLE
            else ""
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
