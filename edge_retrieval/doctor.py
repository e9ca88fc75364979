"""`edge-retrieval doctor`: is this device ready to run the service, and what can its CPU hold?

Each check gives a `Check` (ok, warn, fail or skip, with a one-line detail): the model loads and
reproduces its card's reference descriptors on this CPU, the gallery passes `PRAGMA
integrity_check` and belongs to the model, the camera opens and delivers frames, the disk has
room for the gallery and the snapshots. Then every preset runs on this CPU — the same recognizer
and motion gate the service runs, timed through the recognizer's `stage` hook — on the camera's
own frames (the demo clip's without a camera), and the slowest preset that still holds
`MIN_FPS` is recommended with a frame rate. Run it with the service stopped: they share the CPU.
"""

from __future__ import annotations

import base64
import logging
import os
import platform
import shutil
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from . import democlip
from .camera import SourceEnded, inspect_image, open_source
from .enroll import lacking_photos, refresh_command
from .errors import EdgeRetrievalError, one_line
from .modelcard import sha256_file
from .motion import MotionGate
from .service import parts
from .service.metrics import Metrics

log = logging.getLogger(__name__)

CAMERA_TIMEOUT = 10.0  # seconds the first frame may take (a live source reconnects meanwhile)
CAMERA_SECONDS = 3.0  # a live source's frames are counted this long: the rate it delivers
TIMING_FRAMES = 8  # frames each preset is timed on (after one to warm up)
QUALITY_ORDER = ("default", "quick", "fast", "whole")  # best first: the first that holds MIN_FPS is advised
MIN_FPS = 2.0  # votes of 3 of 5 frames then confirm an item within about 2 s
HEADROOM = 0.7  # of the CPU the recognizer may take: decoding, motion, events and the kiosk need the rest
GALLERY_SPARE = 100 << 20  # bytes free beside the gallery (events, WAL, enrolments)
SNAPSHOT_BYTES = 150 << 10  # a snapshot's size when no frame was seen to encode one
DEFAULT_KERNELS = "LiteRT default kernels (XNNPACK)"
DEVICE_CHECK = "device_check"  # the card's validation entry doctor compares with (tools/record_device_check.py)


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok", "warn", "fail" or "skip"
    detail: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    # preset → stage → median ms per frame (motion, preprocess, invoke, pool, scan or identify; frame)
    timings: dict[str, dict[str, float]] = field(default_factory=dict)
    invoke_ms: float | None = None  # the model alone (Embedder.invoke), median
    preset: str | None = None  # advised
    fps: float | None = None  # advised

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def add(self, name: str, status: str, detail: str) -> Check:
        check = Check(name, status, detail)
        self.checks.append(check)
        return check

    def table(self) -> str:
        width = max(len(c.name) for c in self.checks)
        lines = [f"{'check':<{width}}  result  detail"]
        lines += [f"{c.name:<{width}}  {c.status:<6}  {c.detail}" for c in self.checks]
        if self.timings:
            stages = [
                s
                for s in ("motion", "preprocess", "invoke", "pool", "scan", "identify")
                if any(s in t for t in self.timings.values())
            ]
            lines += [
                "",
                "median ms per frame on this CPU:",
                "preset    " + "".join(f"{s:>11}" for s in stages) + "      frame    max fps",
            ]
            for name, t in self.timings.items():
                cells = "".join(f"{t[s]:>11.1f}" if s in t else f"{'':>11}" for s in stages)
                lines.append(f"{name:<10}{cells}{t['frame']:>11.1f}{1000 / t['frame']:>11.1f}")
            lines.append(
                f"(the model alone, Embedder.invoke: {self.invoke_ms:.1f} ms; identify = the regional "
                "presets' model run, regions, scan and verification)"
            )
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "checks": [{"name": c.name, "status": c.status, "detail": c.detail} for c in self.checks],
            "timings_ms": {k: {s: round(v, 2) for s, v in t.items()} for k, t in self.timings.items()},
            "invoke_ms": None if self.invoke_ms is None else round(self.invoke_ms, 2),
            "preset": self.preset,
            "fps": self.fps,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s)",
        }


# -- the model and its card ----------------------------------------------------------------
def reference(embedder) -> dict:
    """The card's `validation.device_check`: the descriptors of the card's check images as this
    machine computes them (float16, base64), for `check_card` on the device."""
    folder = Path(embedder.model_path).parent.parent  # the card's image paths are relative to data/
    images = list(embedder.card.validation.get("images", []))
    vectors = embedder.embed_files([folder / name for name in images]).astype("<f2")
    return {
        "images": [{"name": name, "sha256": sha256_file(folder / name)} for name in images],
        "descriptors": [base64.b64encode(v.tobytes()).decode() for v in vectors],
        "min_cosine": embedder.card.validation.get("min_cosine_required", 0.98),
        "machine": f"{platform.machine()}, {DEFAULT_KERNELS}",
    }


def check_card(report: Report, embedder) -> None:
    """Re-embed the card's check images on this CPU and compare with the descriptors the card records."""
    name = embedder.card.name
    ref = embedder.card.validation.get(DEVICE_CHECK)
    if not ref:
        report.add("model card", "warn", f"{name}: its card records no reference descriptors to compare with")
        return
    folder = Path(embedder.model_path).parent.parent
    try:  # a card is a file people edit: a malformed entry is a failed check, not a crash
        paths = [folder / image["name"] for image in ref["images"]]
        digests = [image["sha256"] for image in ref["images"]]
        want = np.array([np.frombuffer(base64.b64decode(d), "<f2") for d in ref["descriptors"]], np.float32)
        bar = float(ref["min_cosine"])
    except (KeyError, TypeError, ValueError) as e:
        report.add("model card", "fail", f"{name}: validation.{DEVICE_CHECK} is malformed ({type(e).__name__}: {e})")
        return
    for path, digest in zip(paths, digests):
        if not path.is_file() or sha256_file(path) != digest:
            report.add("model card", "warn", f"{path}: check image missing or changed; agreement not measured")
            return
    got = embedder.embed_files(paths)
    if want.shape != got.shape:
        report.add("model card", "fail", f"{name}: descriptors of {got.shape[1]} dims, the card's {want.shape[1]}")
        return
    cosines = (got * want).sum(axis=1) / np.linalg.norm(want, axis=1)
    worst = float(cosines.min())
    status = "ok" if worst >= bar else "fail"
    report.add(
        "model card",
        status,
        f"{name}: {len(paths)} check image(s), cosine to the card's ≥ {worst:.4f} (needs ≥ {bar:g}; "
        f"recorded on {ref.get('machine', '?')})",
    )


# -- the gallery -----------------------------------------------------------------------
def check_gallery(report: Report, config, embedder):
    """The gallery opened (or None): integrity_check, the model it belongs to, what it holds."""
    from .storage.gallery import Gallery

    path = config.gallery.path
    if not Path(path).is_file():
        report.add("gallery", "fail", f"{path}: no such gallery (enrol items first: edge-retrieval enroll)")
        return None
    try:
        gallery = Gallery(path, create=False)
    except EdgeRetrievalError as e:
        report.add("gallery", "fail", one_line(e))
        return None
    try:
        problems = [r[0] for r in gallery.db.execute("PRAGMA integrity_check").fetchall()]
        if problems != ["ok"]:
            report.add("gallery", "fail", f"{path}: PRAGMA integrity_check: {problems[0]} ({len(problems)} problem(s))")
            gallery.close()
            return None
        if embedder is not None:
            gallery.check_model(embedder.sha256, embedder.card.name)
        items, embeddings = gallery.count()
        lacking = {item for item, _ in lacking_photos(gallery)}
    except EdgeRetrievalError as e:
        report.add("gallery", "fail", one_line(e))
        gallery.close()
        return None
    if not items:
        report.add("gallery", "warn", f"{path}: integrity ok, empty (enrol items: edge-retrieval enroll)")
    elif lacking:  # enrolled before the second or the dense verifier: they skip them until refreshed
        report.add(
            "gallery",
            "warn",
            f"{path}: integrity ok, {items} item(s), but {len(lacking)} item(s) have photos with ORB features "
            f"and no SIFT features or grey image (the second and dense verifiers skip them): {refresh_command(path)}",
        )
    else:
        report.add(
            "gallery",
            "ok",
            f"{path}: integrity ok, model {gallery.model_name}, {items} item(s), {embeddings} embedding(s)",
        )
    return gallery


# -- people ---------------------------------------------------------------------------
def check_people(report: Report, config, frames: list[np.ndarray], timing: bool = True) -> None:
    """The people gallery of `[people]` (integrity, the face model it belongs to) and, with
    `timing`, what detection and embedding cost a frame here (the camera's frames, else the
    demo clip's, which hold no faces: detection only)."""
    try:
        people, recognizer, _ = parts.people(config)
    except EdgeRetrievalError as e:
        report.add("people", "fail", one_line(e))
        return
    try:
        problems = [r[0] for r in people.db.execute("PRAGMA integrity_check").fetchall()]
        if problems != ["ok"]:
            report.add("people", "fail", f"{people.path}: PRAGMA integrity_check: {problems[0]}")
            return
        persons, embeddings = people.count()
        detail = f"{people.path}: integrity ok, model {people.model_name}, {persons} person(s), {embeddings} face(s)"
        if timing:
            if not frames:
                clip = democlip.DemoClip(0)
                frames = [clip.frame(i) for i in np.linspace(0, clip.frames - 1, TIMING_FRAMES).astype(int)]
            recognizer.recognize(frames[0])  # warm: the detector's interpreters for this frame size
            times = []
            for frame in frames:
                start = time.perf_counter()
                recognizer.recognize(frame)
                times.append(1000 * (time.perf_counter() - start))
            ms = float(np.median(times))
            detail += f"; faces found and described in {ms:.0f} ms a frame (≈ {HEADROOM * 1000 / ms:.0f} fps)"
        report.add("people", "ok" if persons else "warn", detail + ("" if persons else " (enrol: enroll --faces)"))
    finally:
        recognizer.close()
        people.close()


# -- the camera ------------------------------------------------------------------------
def check_camera(report: Report, config, timeout: float = CAMERA_TIMEOUT) -> list[np.ndarray]:
    """Open the source, wait for its first frame, count what it delivers: the frames seen."""
    stop = threading.Event()
    uri = config.source.uri
    try:
        source = open_source(config.source, stop)
    except EdgeRetrievalError as e:
        report.add("camera", "fail", one_line(e))
        return []
    frames, first_at, deadline = [], None, time.monotonic() + timeout
    try:
        with source:
            while True:
                now = time.monotonic()
                if first_at is None and now > deadline:
                    why = getattr(source, "last_error", "") or "nothing read"
                    report.add("camera", "fail", f"{uri}: no frame within {timeout:g} s ({why})")
                    return []
                if source.live and first_at is not None and now - first_at >= CAMERA_SECONDS:
                    break
                if not source.live and len(frames) >= 4 * TIMING_FRAMES:  # a file: a few seconds of it
                    break
                try:
                    frame = source.read(0.5)
                except SourceEnded:
                    break
                except EdgeRetrievalError as e:
                    report.add("camera", "fail", one_line(e))
                    return []
                image = inspect_image(frame.image)[0] if frame is not None else None
                if image is not None:
                    first_at = first_at or time.monotonic()
                    frames.append(image)
    finally:
        stop.set()
    if not frames:
        report.add("camera", "fail", f"{uri}: opened but delivered no frame")
        return []
    h, w = frames[0].shape[:2]
    rate = f", {(len(frames) - 1) / CAMERA_SECONDS:.1f} fps delivered" if source.live else ""
    dark = np.mean([f.mean() for f in frames]) < 8
    report.add(
        "camera",
        "warn" if dark else "ok",
        f"{uri}: {w}×{h}{rate}" + ("; frames nearly black (lens covered, no light?)" if dark else ""),
    )
    return frames[:: max(1, len(frames) // TIMING_FRAMES)][:TIMING_FRAMES]


# -- the disk --------------------------------------------------------------------------
def _existing(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def check_disk(report: Report, config, frames: list[np.ndarray]) -> None:
    """Room beside the gallery (events are written there too), and for the snapshots kept."""
    gallery_dir = _existing(Path(config.gallery.path or ".").parent)
    free = shutil.disk_usage(gallery_dir).free
    detail = f"{gallery_dir}: {free >> 20} MiB free"
    status = "ok" if free >= GALLERY_SPARE and os.access(gallery_dir, os.W_OK) else "fail"
    if status == "fail":
        detail += f" (needs ≥ {GALLERY_SPARE >> 20} MiB, writable)"
    snap = config.snapshot
    if snap.enabled:
        folder = _existing(Path(snap.folder))
        size = SNAPSHOT_BYTES
        if frames:
            ok, buf = cv2.imencode(".jpg", frames[0], [cv2.IMWRITE_JPEG_QUALITY, snap.jpeg_quality])
            size = len(buf) if ok else size
        need = size * (snap.max_count or 10_000)
        snap_free = shutil.disk_usage(folder).free
        detail += (
            f"; snapshots {folder}: {snap_free >> 20} MiB free, {snap.max_count or 'unlimited'} × {size >> 10} KiB"
        )
        if snap_free < need or not os.access(folder, os.W_OK):
            status = "fail"
            detail += f" needs {need >> 20} MiB (lower snapshot.max_count or move snapshot.folder)"
    report.add("disk", status, detail)


# -- this CPU --------------------------------------------------------------------------
def time_presets(report: Report, config, embedder, gallery, frames: list[np.ndarray]) -> None:
    """Every preset's stages on these frames; the advised preset and fps."""
    if not frames:  # no camera: the demo clip's scenes, the size a camera would hand over
        clip = democlip.DemoClip(0)
        frames = [clip.frame(i) for i in np.linspace(0, clip.frames - 1, TIMING_FRAMES).astype(int)]
    tensor = embedder.prepare(frames[0])
    embedder.invoke(tensor)  # warm
    invokes = []
    for frame in frames:
        tensor = embedder.prepare(frame)
        start = time.perf_counter()
        embedder.invoke(tensor)
        invokes.append(1000 * (time.perf_counter() - start))
    report.invoke_ms = float(np.median(invokes))
    for name in QUALITY_ORDER:
        metrics = Metrics()
        recognizer = parts.recognizer(
            replace(config, decision=replace(config.decision, preset=name)), embedder, gallery, metrics.stage
        )
        gate = MotionGate.from_config(replace(config.motion, enabled=True))
        try:
            recognizer.recognize(frames[0])  # warm: caches, the ORB index, the worker thread
            for i, frame in enumerate(frames):
                with metrics.stage("motion"):
                    gate.check(frame, float(i))
                recognizer.recognize(frame)
                metrics.frame_done(True)
        finally:
            getattr(recognizer, "close", lambda: None)()
        stages = {k: v.p50_ms for k, v in metrics.stages().items()}
        stages["frame"] = metrics.frame_ms().p50_ms
        report.timings[name] = stages
    for name in QUALITY_ORDER:
        fps = HEADROOM * 1000 / report.timings[name]["frame"]
        if fps >= MIN_FPS:
            report.preset, report.fps = name, float(np.floor(min(fps, 15.0) * 2) / 2)
            break
    whole = report.timings["whole"]["frame"]
    if report.preset is None:
        report.add("cpu", "fail", f"even the whole preset takes {whole:.0f} ms a frame: under {MIN_FPS:g} fps here")
    else:
        report.add(
            "cpu",
            "ok",
            f"{platform.machine()}, {os.cpu_count()} CPU(s), {config.model.threads} thread(s): advise "
            f"decision.preset = \"{report.preset}\", source.fps = {report.fps:g} "
            f"({report.timings[report.preset]['frame']:.0f} ms a frame, {HEADROOM:.0%} of the CPU)",
        )


def diagnose(config, demo: bool = False, camera_timeout: float = CAMERA_TIMEOUT, timing: bool = True) -> Report:
    """Every check for this config (the demo's clip and gallery when `demo`)."""
    report = Report()
    with ExitStack() as stack:
        try:
            embedder = stack.enter_context(parts.embedder(config))
        except EdgeRetrievalError as e:
            report.add("model", "fail", one_line(e))
            embedder = None
        else:
            card = embedder.card
            report.add(
                "model",
                "ok",
                f"{embedder.model_path}: {card.name}, {card.input_width}×{card.input_height}, "
                f"sha256 {embedder.sha256[:12]}… matches its card",
            )
            check_card(report, embedder)
        if demo:
            if embedder is None:
                return report
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="edge-retrieval-doctor-"))
            config = parts.demo(config, embedder, folder, 0)
        elif not (config.source.uri and (config.gallery.path or config.people.gallery)):
            missing = "source.uri" if not config.source.uri else "gallery.path"
            report.add("config", "fail", f"{missing}: not set (give --config, --source and --gallery, or --demo)")
            return report
        gallery = check_gallery(report, config, embedder) if config.gallery.path else None
        if gallery is not None:
            stack.callback(gallery.close)
        frames = check_camera(report, config, camera_timeout)
        check_disk(report, config, frames)
        if config.people.gallery:
            check_people(report, config, frames, timing)
            if not config.gallery.path:  # people only: the items' presets are not run
                return report
        if embedder is not None and timing:
            if gallery is None:  # time against the demo's photos rather than not at all
                folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="edge-retrieval-doctor-"))
                gallery = stack.enter_context(_demo_gallery(embedder, folder))
            time_presets(report, config, embedder, gallery, frames)
    return report


def _demo_gallery(embedder, folder: str):
    """A gallery of the demo's photos: what the stages are timed against when the configured one is unusable."""
    from .demo import photo
    from .enroll import enroll
    from .storage.gallery import Gallery

    gallery = Gallery(Path(folder) / "demo-gallery.db")
    enroll(gallery, embedder, [(name, photo(name)) for name in democlip.enrolled()])
    return gallery
