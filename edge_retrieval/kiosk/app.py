"""`Kiosk`: the kiosk's state and actions (the camera loop, search, enrolment, edits, settings)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from .. import demo as demo_data
from ..camera import kind_of, source_name
from ..config import Config
from ..embedder import Embedder
from ..enroll import enroll
from ..errors import EdgeRetrievalError, GalleryError
from ..motion import crop_roi
from ..preprocess import IMAGE_SUFFIXES
from ..recognize import open_recognizer, ranking_json
from ..service import parts
from ..service.daemon import Daemon, FrameResult
from ..storage.gallery import Gallery, Item
from .errors import KioskError
from .screen import ENDED, ERROR, IDLE, RECOGNISED, UNKNOWN, Screen
from .security import keep_token, token_matches
from .uploads import decode_image, encode_jpeg

log = logging.getLogger(__name__)

STREAM_WIDTH = 960  # the live view is scaled down to this width (wider camera frames cost CPU to encode)
PHOTO_SIZE = 1024  # enrolled photos are served at most this many pixels on their longer side
CAPTURE_QUALITY = 92  # JPEG quality of /api/frame.jpg and of photos saved by the staff page
MIN_THRESHOLD, MAX_THRESHOLD = -1.0, 10.0  # the staff page's threshold (the default preset's scores reach ≈ 3)
STALE = 10.0  # seconds without a processed frame before the page says the camera is not available


def kiosk_config(config: Config) -> Config:
    """The config as the kiosk runs it: a file or folder source plays in real time, over and over."""
    uri = config.source.uri.strip()
    if uri and kind_of(uri) in ("file", "folder") and not config.source.watch:
        config = replace(config, source=replace(config.source, loop=True, realtime=True))
    return config


def item_json(item: Item) -> dict[str, Any]:
    return {
        "id": item.id,
        "label": item.label,
        "metadata": item.metadata,
        "embeddings": item.embeddings,
        "created": item.created,
        "photo": f"/api/items/{item.id}/photo?v={item.embeddings}",
    }


class Kiosk:
    """The kiosk's library API: open it, start the camera loop, then ask it for state, search,
    enrol, edit. The web app is a thin layer over these methods.

    >>> with Kiosk(config) as kiosk:      # or Kiosk(Config(), demo=True)
    ...     kiosk.start()
    ...     kiosk.state()["status"]
    """

    def __init__(
        self,
        config: Config,
        *,
        demo: bool = False,
        demo_seed: int = 0,
        token: str = "",
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.demo, self.demo_seed = demo, demo_seed
        self.token = token or config.kiosk.token
        self.token_file: Path | None = None  # where a generated token is kept (None: configured, or not kept)
        self.token_generated = not self.token
        if self.token_generated:
            self.token = secrets.token_urlsafe(18)
        self.stop = stop or threading.Event()
        self.clock = clock
        self.screen = Screen(config.kiosk.hold, clock)
        self.max_upload = int(config.kiosk.max_upload_mb * 1_000_000)
        self.daemon: Daemon | None = None
        self.recognizer = None  # the web side's: the same preset and thresholds as the camera loop's
        self.embedder: Embedder | None = None
        self.gallery: Gallery | None = None
        self.photos: Path | None = None
        self.source_name = ""
        self.threshold = config.decision.threshold  # the staff page's (None: calibrated, else the preset's)
        self._lock = threading.RLock()  # the web side's interpreter and gallery connection
        self._frame_lock = threading.Lock()
        self._image: np.ndarray | None = None
        self._jpeg: tuple[int, bytes] = (0, b"")
        self._jpeg_at = -math.inf
        self._fps = 0.0
        self._last_frame_at = time.monotonic()  # (or the start)
        self._thread: threading.Thread | None = None
        self._owned: list[Any] = []
        self._photo_cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()

    # -- lifecycle --------------------------------------------------------------------
    def open(self) -> "Kiosk":
        """Load the model and the gallery (preparing the demo clip and gallery with `demo`)."""
        config = self.config
        self.embedder = parts.embedder(config)
        self._owned.append(self.embedder)
        if self.demo:
            folder = tempfile.TemporaryDirectory(prefix="edge-retrieval-kiosk-demo-")
            self._owned.append(folder)
            config = parts.demo(config, self.embedder, folder.name, self.demo_seed)
        else:
            parts.check_configured(config)
        self.config = config = kiosk_config(config)
        self.gallery = parts.gallery(config)
        self._owned.append(self.gallery)
        self.gallery.check_model(self.embedder.sha256, self.embedder.card.name)
        if self.demo:
            for item in self.gallery.items():
                if not item.metadata and item.label in demo_data.DETAILS:
                    self.gallery.update(item.id, metadata=demo_data.DETAILS[item.label])
        gallery_file = Path(config.gallery.path)
        self.photos = (
            Path(config.kiosk.photos) if config.kiosk.photos else gallery_file.with_name(gallery_file.stem + "-photos")
        )
        saved = self._settings().get("threshold")
        if isinstance(saved, (int, float)) and MIN_THRESHOLD <= saved <= MAX_THRESHOLD:
            self.threshold = float(saved)
            log.info("recognition threshold %.3f (set on the staff page, %s)", saved, self._settings_path())
        if self.token_generated:
            kept = keep_token(config.gallery.path, self.token)
            if kept is not None:
                self.token, self.token_file = kept
        self.source_name = source_name(config.source)  # shown on the page: a stream URL without its password
        config = replace(config, decision=replace(config.decision, threshold=self.threshold))
        self.recognizer = open_recognizer(
            self.embedder, self.gallery, config.decision.preset, threshold=self.threshold, margin=config.decision.margin
        )
        self._owned.append(self.recognizer)
        self.daemon = Daemon(config, stop=self.stop, on_frame=self._watch, full_frames=True)
        return self

    def start(self) -> None:
        """Run the camera loop in a thread (until `stop` is set)."""
        if self.daemon is None:
            self.open()
        self._last_frame_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="kiosk camera loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            summary = self.daemon.run()
        except EdgeRetrievalError as e:
            log.error("camera loop stopped: %s", e)
            self.screen.set_status(ERROR, str(e))
            return
        except Exception as e:  # shown on the page and in the log, never a silent dead screen
            log.exception("camera loop crashed")
            self.screen.set_status(ERROR, f"{type(e).__name__}: {e}")
            return
        if summary.reason == "ended":
            self.screen.set_status(ENDED, "the source ended")

    def close(self, timeout: float = 3.0) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the camera loop did not stop within %.0f s", timeout)
            self._thread = None
        while self._owned:
            thing = self._owned.pop()
            with contextlib.suppress(Exception):
                (getattr(thing, "close", None) or thing.cleanup)()

    def __enter__(self) -> "Kiosk":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the camera loop's side (its thread) ----------------------------------------------
    def _watch(self, result: FrameResult) -> None:
        self.screen.frame(result, self.source_name)
        with self._frame_lock:
            self._image = result.frame.image
        self._last_frame_at = time.monotonic()
        pipeline = self.daemon.pipeline if self.daemon is not None else None
        if pipeline is not None:
            self._fps = pipeline.metrics.fps()
        now = time.monotonic()
        if now - self._jpeg_at >= 1.0 / self.config.kiosk.stream_fps:
            self._jpeg_at = now
            jpeg = encode_jpeg(result.frame.image, self.config.kiosk.jpeg_quality, STREAM_WIDTH)
            with self._frame_lock:
                self._jpeg = (self._jpeg[0] + 1, jpeg)

    # -- reading ----------------------------------------------------------------------
    def live_jpeg(self) -> tuple[int, bytes]:
        """(sequence number, JPEG) of the live view's newest frame; (0, b"") before the first."""
        with self._frame_lock:
            return self._jpeg

    def frame_jpeg(self, crop: bool = False) -> bytes:
        """The newest camera frame as a full-size JPEG (cropped to the ROI the model sees with `crop`)."""
        with self._frame_lock:
            image = self._image
        if image is None:
            raise KioskError("no camera frame yet", 503)
        return encode_jpeg(crop_roi(image, self.config.roi) if crop else image, CAPTURE_QUALITY)

    def state(self) -> dict[str, Any]:
        """What the page shows, as plain data (the body of /api/state and of each pushed event)."""
        screen = self.screen
        shown, version = screen.shown, screen.version
        item = None
        if shown.status == RECOGNISED and shown.item_id is not None:
            with self._lock, contextlib.suppress(GalleryError):
                item = item_json(self.gallery.item(shown.item_id))
        status = shown.status if item is not None or shown.status != RECOGNISED else IDLE
        message = shown.message
        quiet = time.monotonic() - self._last_frame_at
        if status not in (ERROR, ENDED) and self._thread is not None and quiet > STALE:
            status, item, message = ERROR, None, f"no picture from {self.source_name} for {quiet:.0f} s; retrying"
        d = self.config.decision
        return {
            "status": status,
            "version": version,
            "item": item,
            "score": round(shown.score, 4) if item is not None and shown.score is not None else None,
            "since": shown.since,
            "message": message,
            "source": self.source_name,
            "frame": screen.frame_index,
            "frames": screen.frames,
            "fps": round(self._fps, 1),
            "threshold": self.recognizer.thresholds.default(),
            "margin": self.recognizer.thresholds.margin,
            "preset": d.preset,
            "votes": {"m": d.votes.m, "n": d.votes.n},
            "hold": self.config.kiosk.hold,
        }

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return [item_json(item) for item in self.gallery.items()]

    def item(self, item_id: int) -> dict[str, Any]:
        with self._lock:
            return item_json(self._item(item_id))

    def _item(self, item_id: int) -> Item:
        try:
            if not 0 <= int(item_id) < 2**63:  # beyond SQLite's integers: no such item (not an OverflowError)
                raise GalleryError(f"no item {item_id}")
            return self.gallery.item(int(item_id))
        except GalleryError:
            raise KioskError(f"no item {item_id}", 404) from None

    def photo(self, item_id: int) -> bytes:
        """The item's first enrolled photo that still exists, as a JPEG at most PHOTO_SIZE pixels."""
        with self._lock:
            self._item(item_id)
            sources = self.gallery.sources(int(item_id))
        for source in sources:
            path = Path(source)
            if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                continue
            key = (str(path), path.stat().st_mtime_ns)
            if key in self._photo_cache:
                self._photo_cache.move_to_end(key)
                return self._photo_cache[key]
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                continue
            jpeg = encode_jpeg(image, 88, PHOTO_SIZE)
            self._photo_cache[key] = jpeg
            while len(self._photo_cache) > 64:
                self._photo_cache.popitem(last=False)
            return jpeg
        raise KioskError(f"item {item_id} has no enrolled photo on this machine", 404)

    # -- search -----------------------------------------------------------------------
    def search(self, data: bytes, k: int = 5) -> dict[str, Any]:
        """Look an uploaded image up with the camera loop's recognizer settings: the same ranking
        as `edge-retrieval search --json` (its `matches`, with each item's record), and the verdict."""
        image = decode_image(data)
        with self._lock:
            items = {item.id: item for item in self.gallery.items()}
            ranking = self.recognizer.recognize(image)
        out = ranking_json(ranking, {i: item.metadata for i, item in items.items()}, k)
        out["matches"] = [{**item_json(items[m["item_id"]]), **m} for m in out["matches"] if m["item_id"] in items]
        best = ranking.best
        if ranking.match is not None:
            reason = "passes the threshold" + (" and the margin" if self.recognizer.thresholds.margin else "")
        elif best is None:
            reason = "the gallery is empty"
        elif best.vetoed:
            reason = f"a photo enrolled as NOT {best.label} looks more like it"
        elif ranking.threshold is None:
            reason = "no threshold for this model yet: run edge-retrieval calibrate"
        elif best.score <= ranking.threshold:
            reason = f"score {best.score:.3f} not above the threshold {ranking.threshold:.3f}"
        else:
            reason = (
                f"too close to the next item (margin {ranking.margin:.3f} < {self.recognizer.thresholds.margin:.3f})"
            )
        out["verdict"] = {
            "status": RECOGNISED if ranking.match else UNKNOWN,
            "label": out["match"],
            "item_id": ranking.match.item_id if ranking.match else None,
            "score": out["score"],
            "margin": out["margin"],
            "threshold": out["threshold"],
            "reason": reason,
        }
        return out

    # -- staff: writes ----------------------------------------------------------------
    def enrol(self, label: Any, metadata: Any, images: list[bytes]) -> dict[str, Any]:
        """Add photos to the item `label` (created if new; metadata merged); saves the photos."""
        if not isinstance(label, str) or not label.strip():
            raise KioskError("label: a non-empty string is required")
        label = label.strip()
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, dict):
            raise KioskError("metadata: must be an object of fields, e.g. {\"artist\": \"...\"}")
        if not images:
            raise KioskError("images: at least one image is required (a captured frame or an uploaded photo)")
        decoded = [
            decode_image(data, f"image {i + 1}" if len(images) > 1 else "the image") for i, data in enumerate(images)
        ]
        self.photos.mkdir(parents=True, exist_ok=True)
        paths = []
        try:
            for image in decoded:
                path = self.photos / f"{_slug(label)}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}.jpg"
                path.write_bytes(encode_jpeg(image, CAPTURE_QUALITY))
                paths.append(path)
            with self._lock:  # the same enrolment as `edge-retrieval enroll`: local features stored too
                enroll(self.gallery, self.embedder, [(label, p) for p in paths], metadata=metadata)
                item = self.gallery.item(label)
        except BaseException:
            for path in paths:
                path.unlink(missing_ok=True)
            raise
        log.info("enrolled %d photo(s) as %r from the staff page", len(paths), label)
        self.screen.touch()
        return {"item": item_json(item), "added": len(paths)}

    def update_item(self, item_id: int, label: Any = None, metadata: Any = None) -> dict[str, Any]:
        if label is not None and (not isinstance(label, str) or not label.strip()):
            raise KioskError("label: must be a non-empty string")
        if metadata is not None and not isinstance(metadata, dict):
            raise KioskError("metadata: must be an object of fields")
        if label is None and metadata is None:
            raise KioskError("nothing to change: give a label and/or metadata")
        with self._lock:
            self._item(item_id)
            try:
                item = self.gallery.update(int(item_id), label=label, metadata=metadata)
            except GalleryError as e:
                raise KioskError(str(e), 409) from None
        self.screen.touch()
        return {"item": item_json(item)}

    def remove_item(self, item_id: int) -> dict[str, Any]:
        with self._lock:
            self._item(item_id)
            item = self.gallery.remove(int(item_id))
        log.info("removed %r from the staff page", item.label)
        self.screen.touch()
        return {"removed": item_json(item)}

    def set_threshold(self, value: Any) -> dict[str, Any]:
        """Set the recognition threshold now (None: back to the config's); kept beside the gallery.
        It is the global threshold of the recognizers' one precedence (recognize/thresholds.py)."""
        if value is None:
            value = self.config.decision.threshold
            self._save_settings({})
        elif (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not MIN_THRESHOLD <= value <= MAX_THRESHOLD
        ):
            raise KioskError(f"threshold: a number from {MIN_THRESHOLD} to {MAX_THRESHOLD} is required")
        else:
            self._save_settings({"threshold": float(value)})
        self.threshold = None if value is None else float(value)
        recognizers = [self.recognizer, self.daemon.recognizer if self.daemon is not None else None]
        for recognizer in recognizers:
            if recognizer is not None:
                recognizer.thresholds.threshold = self.threshold
        now = self.recognizer.thresholds.default()
        log.info("recognition threshold set to %s on the staff page", "-" if now is None else f"{now:.3f}")
        self.screen.touch()
        return {"threshold": now, "default": self._config_default()}

    def settings(self) -> dict[str, Any]:
        return {"threshold": self.recognizer.thresholds.default(), "default": self._config_default()}

    def _config_default(self) -> float | None:
        """The threshold in force without the staff page's setting."""
        from ..recognize.thresholds import Thresholds

        t = self.recognizer.thresholds
        return Thresholds(self.gallery, t.preset, t.model_name, threshold=self.config.decision.threshold).default()

    def _settings_path(self) -> Path | None:
        path = self.config.gallery.path
        return None if not path or path == ":memory:" else Path(path + ".kiosk.json")

    def _settings(self) -> dict[str, Any]:
        path = self._settings_path()
        if path is None or not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            log.warning("%s: ignored (%s)", path, e)
            return {}
        return data if isinstance(data, dict) else {}

    def _save_settings(self, data: dict[str, Any]) -> None:
        path = self._settings_path()
        if path is None:
            return
        try:
            if not data:
                path.unlink(missing_ok=True)
                return
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(data), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as e:
            raise KioskError(f"{path}: cannot save the setting ({e})", 500) from None

    def check_token(self, given: str | None) -> bool:
        """Whether `given` is the staff token, compared in constant time."""
        return token_matches(given, self.token)


def _slug(text: str) -> str:
    out = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    return "-".join(filter(None, out.split("-")))[:40] or "item"
