"""The watchlist service end to end: museum records held up in front of real scenes, alerts by webhook.

Builds a clip (Motion-JPEG AVI, 640×480, --fps) from the TEST split of benchmarks/captures.py:
--enrolled records of the 200 enrolled ones and --unknown of the test split's never-enrolled
records, in a shuffled order, each held up for --seconds-per-item in front of its own test-split
scene (the record's pose drifts, turns and scales a little from frame to frame, as in a hand; the
camera's light, glare and blur stay those of the hold), with GAP_SECONDS of the empty scene
before each item and at the end. Then, with the real CLI:

    edge-retrieval enroll <the shown enrolled records' BBDD photos> -g gallery.db --augment 8
    edge-retrieval run --source clip.avi -g gallery.db --set sinks.webhook.url=http://127.0.0.1:PORT/
                       [--set decision.preset=P]

(every other setting its default; a file is read as fast as it is processed, and the service
delivers what is pending when it ends), a receiver in this process collecting the POSTed events.
An alert counts for the item in view when its `details.source_time` falls in that item's interval
(+ GRACE seconds after it: the vote window still holds the last frames). Targets: ≥ 0.75 of the
shown enrolled items alert with their label; ≤ 1 alert naming an item not in view.

    python benchmarks/service_quality.py --preset default          # ≈ 2–4 min; the clip is cached
    python benchmarks/service_quality.py --preset whole --json

The clip, its timeline and the gallery are kept in --work (default ~/.cache/edge-retrieval/
service-quality/; the gallery beside its clip, as clip-….db), so `benchmarks/pipeline.py --preset
default --gallery …/clip-….db …/clip-….avi` can time the same frames.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import captures as sim  # noqa: E402

SPLIT = "test"
GAP_SECONDS = 1.0  # empty scene before each item (and after the last)
GRACE = 0.5  # seconds after an item left during which its alert still counts for it
TARGET_RECALL = 0.75
TARGET_WRONG = 1
MAX_EVENTS = 10_000  # the receiver keeps no more (a runaway service must not fill memory)
RUN_TIMEOUT = 1800.0  # seconds before the service is killed


# -- the clip ------------------------------------------------------------------------------
def hand(quad: np.ndarray, rng: np.random.Generator, frames: int) -> list[np.ndarray]:
    """`frames` poses of a record held in a hand: a random walk of its position (4 px a frame,
    within ±30 px), angle (0.7°, ±5°) and size (1 %, ±6 %) around `quad`."""
    centre = quad.mean(axis=0)
    shift, angle, scale = np.zeros(2), 0.0, 1.0
    out = []
    for _ in range(frames):
        shift = np.clip(shift + rng.normal(0, 4.0, 2), -30, 30)
        angle = float(np.clip(angle + rng.normal(0, 0.7), -5, 5))
        scale = float(np.clip(scale + rng.normal(0, 0.01), 0.94, 1.06))
        a = np.deg2rad(angle)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) * scale
        out.append(((quad - centre) @ rot.T + centre + shift).astype(np.float32))
    return out


def build_clip(path: Path, n_enrolled: int, n_unknown: int, seed: int, fps: float, seconds: float) -> dict:
    """Write the clip; return its timeline: the items in order with their intervals (seconds)."""
    enrolled, unknown = sim.split_records()
    unknown = sim.unknown_split(unknown, SPLIT)
    if n_enrolled > len(enrolled) or n_unknown > len(unknown):
        raise SystemExit(
            f"--enrolled at most {len(enrolled)}, --unknown at most {len(unknown)} "
            f"(the {SPLIT} split's never-enrolled records)"
        )
    scenes = sim.scene_split(sim.oxford_distractors(), SPLIT)
    rng = np.random.default_rng(seed)
    shown = [(enrolled[i], True) for i in sorted(rng.choice(len(enrolled), n_enrolled, replace=False))]
    shown += [(unknown[i], False) for i in sorted(rng.choice(len(unknown), n_unknown, replace=False))]
    order = rng.permutation(len(shown))
    gap, hold = round(GAP_SECONDS * fps), round(seconds * fps)
    tmp = path.with_suffix(".tmp.avi")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), fps, (sim.FRAME_W, sim.FRAME_H))
    if not writer.isOpened():
        raise SystemExit(f"{tmp}: cannot write a Motion-JPEG AVI")
    items, index = [], 0
    for k in order:
        record, is_enrolled = shown[k]
        item = cv2.imread(str(record))
        scene = sim.scene_crop(cv2.imread(str(scenes[rng.integers(len(scenes))])), rng)
        light = int(rng.integers(2**32))  # the camera's draws (light, glare, blur) for the whole hold
        poses = hand(sim.pose(item.shape, rng), rng, hold)
        for _ in range(gap):
            writer.write(sim.camera(scene.copy(), np.random.default_rng(light)))
        for quad in poses:
            frame = scene.copy()
            sim.warp(frame, item, quad)
            writer.write(sim.camera(frame, np.random.default_rng(light)))
        start = index + gap
        index = start + hold
        items.append(
            {
                "record": record.name,
                "label": sim.record_label(record) if is_enrolled else None,
                "start": start / fps,
                "end": index / fps,
            }
        )
    for _ in range(gap):
        writer.write(sim.camera(scene.copy(), np.random.default_rng(light)))
    writer.release()
    tmp.replace(path)
    return {
        "split": SPLIT,
        "seed": seed,
        "fps": fps,
        "frames": index + gap,
        "seconds": (index + gap) / fps,
        "items": items,
        "enrolled_photos": [str(p) for p, e in shown if e],
    }


def clip(work: Path, args) -> tuple[Path, dict]:
    """The clip for these options, built once and cached in `work`."""
    stem = f"clip-e{args.enrolled}-u{args.unknown}-s{args.seed}-f{args.fps:g}-t{args.seconds_per_item:g}"
    video, timeline_path = work / f"{stem}.avi", work / f"{stem}.json"
    if video.exists() and timeline_path.exists():
        return video, json.loads(timeline_path.read_text())
    timeline = build_clip(video, args.enrolled, args.unknown, args.seed, args.fps, args.seconds_per_item)
    timeline_path.write_text(json.dumps(timeline, indent=1) + "\n")
    return video, timeline


# -- the webhook receiver ------------------------------------------------------------------
class Receiver(ThreadingHTTPServer):
    """Collects the JSON events POSTed to it (one per Idempotency-Key)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.events: dict[str, dict] = {}
        self.posts = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class Handler(BaseHTTPRequestHandler):
    timeout = 10

    def do_POST(self):  # noqa: N802 (http.server's name)
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= 1_000_000:
            self.send_error(413)
            return
        try:
            event = json.loads(self.rfile.read(length))
        except ValueError:
            self.send_error(400)
            return
        server: Receiver = self.server
        with server.lock:
            server.posts += 1
            if len(server.events) < MAX_EVENTS:
                server.events[self.headers.get("Idempotency-Key") or str(event.get("event_id"))] = event
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):  # quiet
        pass


# -- running the CLI -----------------------------------------------------------------------
def cli(*args: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "edge_retrieval.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def enrol(gallery: Path, photos: list[str], augment: int, work: Path) -> float:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{gallery}{suffix}").unlink(missing_ok=True)
    start = time.perf_counter()
    done = cli("enroll", *photos, "-g", str(gallery), "--augment", str(augment), cwd=work, timeout=RUN_TIMEOUT)
    if done.returncode:
        raise SystemExit(f"edge-retrieval enroll failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return time.perf_counter() - start


def run_service(video: Path, gallery: Path, preset: str | None, work: Path) -> dict:
    with Receiver() as receiver:
        thread = threading.Thread(target=receiver.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        thread.start()
        args = ["run", "--source", str(video), "-g", str(gallery), "--set", f"sinks.webhook.url={receiver.url}"]
        if preset:
            args += ["--set", f"decision.preset={preset}"]
        start = time.perf_counter()
        done = cli(*args, cwd=work, timeout=RUN_TIMEOUT)
        wall = time.perf_counter() - start
        (work / "service.log").write_text(done.stderr)
        if done.returncode:
            raise SystemExit(f"edge-retrieval run failed ({done.returncode}); log: {work / 'service.log'}")
        with sqlite3.connect(gallery) as db:  # what the service recorded, to check the webhook got it all
            recorded = db.execute("SELECT count(*) FROM events").fetchone()[0]
        receiver.shutdown()
        thread.join(5)
        with receiver.lock:
            events = list(receiver.events.values())
            posts = receiver.posts
    return {
        "events": sorted(events, key=lambda e: e.get("event_id", 0)),
        "recorded": recorded,
        "posts": posts,
        "wall_s": wall,
    }


# -- scoring -------------------------------------------------------------------------------
def in_view(items: list[dict], t: float) -> list[dict]:
    return [it for it in items if it["start"] <= t < it["end"] + GRACE]


def score(timeline: dict, events: list[dict]) -> dict:
    items = timeline["items"]
    shown = [it for it in items if it["label"]]
    found: dict[str, list[float]] = {}  # label → source times of its right alerts
    wrong = {"enrolled": 0, "unknown": 0, "empty": 0}
    wrong_alerts = []
    unknown_events = 0  # "unknown object" events (decision.unknown; off by default) name no item
    for e in events:
        if e.get("kind") != "match":
            unknown_events += 1
            continue
        t = float((e.get("details") or {}).get("source_time", -1))
        view = in_view(items, t)
        right = [it for it in view if it["label"] == e.get("label")]
        if right:
            found.setdefault(right[0]["label"], []).append(t - right[0]["start"])
            continue
        view = [it for it in view if t < it["end"]]  # what is in view then (the grace only credits)
        where = "empty" if not view else "enrolled" if view[-1]["label"] else "unknown"
        wrong[where] += 1
        wrong_alerts.append(
            {"t": t, "label": e.get("label"), "score": e.get("score"), "in_view": [it["record"] for it in view]}
        )
    delays = [min(ts) for ts in found.values()]
    recall = len(found) / len(shown) if shown else 0.0
    n_wrong = sum(wrong.values())
    return {
        "shown_enrolled": len(shown),
        "shown_unknown": len(items) - len(shown),
        "alerted_right": len(found),
        "recall": recall,
        "repeat_alerts": sum(len(ts) - 1 for ts in found.values()),
        "first_alert_delay_s_median": statistics.median(delays) if delays else None,
        "wrong_alerts": n_wrong,
        "wrong_during": wrong,
        "unknown_events": unknown_events,
        "wrong_alert_list": wrong_alerts,
        "targets": {"recall >= 0.75": recall >= TARGET_RECALL, "wrong alerts <= 1": n_wrong <= TARGET_WRONG},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--enrolled", type=int, default=40, help="enrolled records shown (and enrolled)")
    ap.add_argument("--unknown", type=int, default=20, help="never-enrolled records shown (test split)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--preset",
        choices=("whole", "fast", "quick", "default"),
        help="--set decision.preset=P (default: the service's own default)",
    )
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--seconds-per-item", type=float, default=3.0)
    ap.add_argument("--augment", type=int, default=8, help="enroll --augment (views per photo; as quality.py)")
    ap.add_argument(
        "--work",
        type=Path,
        default=Path.home() / ".cache" / "edge-retrieval" / "service-quality",
        help="folder for the clip (cached), the gallery and the service's log",
    )
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    video, timeline = clip(args.work, args)
    gallery = video.with_suffix(".db")
    enrol_s = enrol(gallery, timeline["enrolled_photos"], args.augment, args.work)
    run = run_service(video, gallery, args.preset, args.work)
    report = {
        "preset": args.preset or "(service default)",
        "split": SPLIT,
        "seed": args.seed,
        "clip": str(video),
        "gallery": str(gallery),
        "clip_seconds": timeline["seconds"],
        "frames": timeline["frames"],
        "fps": args.fps,
        "augment": args.augment,
        "enrol_s": enrol_s,
        "run_wall_s": run["wall_s"],
        "total_wall_s": time.perf_counter() - start,
        "events_recorded": run["recorded"],
        "events_delivered": len(run["events"]),
        "posts": run["posts"],
        **score(timeline, run["events"]),
    }
    report["targets"]["webhook got every event"] = report["events_delivered"] == report["events_recorded"]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if all(report["targets"].values()) else 1


def print_report(r: dict) -> None:
    delay = r["first_alert_delay_s_median"]
    rows = [
        ("preset", r["preset"]),
        (
            "clip",
            f"{r['frames']} frames, {r['clip_seconds']:.0f} s at {r['fps']:g} fps, 640×480 MJPEG "
            f"({r['split']} split, seed {r['seed']})",
        ),
        ("shown", f"{r['shown_enrolled']} enrolled, {r['shown_unknown']} never enrolled"),
        (
            "enrolled items alerted right",
            f"{r['alerted_right']} / {r['shown_enrolled']} = {r['recall']:.3f}  (target ≥ {TARGET_RECALL})",
        ),
        ("first right alert after", f"{delay:.2f} s (median)" if delay is not None else "-"),
        ("repeat alerts of the item in view", r["repeat_alerts"]),
        ("alerts naming an item not in view", f"{r['wrong_alerts']}  (target ≤ {TARGET_WRONG})"),
        ("  … during an enrolled item", r["wrong_during"]["enrolled"]),
        ("  … during a never-enrolled item", r["wrong_during"]["unknown"]),
        ("  … during the empty scene", r["wrong_during"]["empty"]),
        ("\"unknown object\" events", r["unknown_events"]),
        ("events recorded / delivered", f"{r['events_recorded']} / {r['events_delivered']} ({r['posts']} POSTs)"),
        ("wall time", f"run {r['run_wall_s']:.1f} s, enrol {r['enrol_s']:.1f} s, all {r['total_wall_s']:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    for a in r["wrong_alert_list"]:
        print(
            f"  wrong: t={a['t']:.1f} s {a['label']} score {a['score']:.3f}, in view: "
            f"{', '.join(a['in_view']) or 'nothing'}"
        )
    for name, ok in r["targets"].items():
        print(f"{name}: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
