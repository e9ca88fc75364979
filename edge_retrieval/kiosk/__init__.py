"""The kiosk: a local web page that shows what the camera sees and the record of the item in
front of it, and a staff page to enrol items from the live camera.

`Kiosk` runs the service's own loop (`daemon.Daemon`: source, motion gate, model, gallery scan,
decision rules, events and sinks) in a thread and watches every frame it processes. `Screen`
turns those frames into what the page shows, with the same decision rules: a record appears
when its item is confirmed (M of the last N frames pass the threshold and the margin) and
stays until the item has not been confirmed for `kiosk.hold` seconds; "unknown item" when
the scene moves in M of N frames and nothing passes. The web side has its own model
interpreter and gallery connection (searches and enrolments never wait for the camera loop;
the loop sees new items through the gallery's change counter).

`create_app` is the Starlette app (pages, static files, the JSON API); `Server` runs it with
uvicorn. Every asset is served from `static/`: the pages work offline.

The staff token is never written to a log: a configured one is only compared, and a generated one
is kept in `<gallery>.kiosk-token` (mode 600) and shown only on a terminal (`Server.staff_address`).
A server on a loopback address answers only requests addressed to a loopback name (`Host:`), so a
web page cannot reach it through DNS rebinding.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import html
import ipaddress
import json
import logging
import math
import os
import secrets
import signal
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import cv2
import numpy as np

from .. import demo as demo_data
from .. import democlip
from ..camera import kind_of, source_name
from ..config import Config
from ..service.daemon import Daemon, FrameResult
from ..decide import MATCH, Decider
from ..embedder import Embedder
from ..enroll import enroll
from .. import preprocess
from ..preprocess import IMAGE_SUFFIXES
from ..errors import BadImageError, ConfigError, EdgeRetrievalError, GalleryError, ModelMismatchError
from ..storage.gallery import Gallery, Item
from ..motion import crop_roi

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
TOKEN_ENV = "EDGE_RETRIEVAL_KIOSK_TOKEN"
MAX_PIXELS = 40_000_000  # larger uploads are refused before decoding (a 10 MB PNG can hold gigabytes)
STREAM_WIDTH = 960  # the live view is scaled down to this width (wider camera frames cost CPU to encode)
PHOTO_SIZE = 1024  # enrolled photos are served at most this many pixels on their longer side
CAPTURE_QUALITY = 92  # JPEG quality of /api/frame.jpg and of photos saved by the staff page
SSE_HEARTBEAT = 2.0  # seconds between state pushes when nothing changed (fps, frame count)
POLL = 0.05  # seconds between looks at the state in the streaming responses
DRAIN = 64_000_000  # bytes of a too-large request read and dropped before answering 413
STALE = 10.0  # seconds without a processed frame before the page says the camera is not available
TOKEN_SUFFIX = ".kiosk-token"  # the generated staff token is kept beside the gallery, in <gallery>.kiosk-token
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


class KioskError(EdgeRetrievalError):
    """A request the kiosk refuses; `status` is its HTTP status code."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# -- uploaded images ------------------------------------------------------------------

KIOSK_FORMATS = ("jpeg", "png", "webp", "bmp")  # what a browser uploads


def image_header(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) from the header of a JPEG, PNG, WebP or BMP image; None otherwise
    (`preprocess.image_size`, which also checks the file's structure)."""
    if preprocess.image_format(data) not in KIOSK_FORMATS:
        return None
    try:
        return preprocess.image_size(data)
    except ValueError:
        return None


def decode_image(data: bytes, what: str = "the image") -> np.ndarray:
    """Uploaded bytes → BGR image; KioskError (4xx) naming `what` for anything else."""
    if not data:
        raise KioskError(f"{what} is empty")
    kind = preprocess.image_format(data)
    if kind not in KIOSK_FORMATS:
        raise KioskError(f"{what} is not a JPEG, PNG, WebP or BMP image", 415)
    try:
        _, width, height = preprocess.image_size(data)
    except ValueError as e:
        raise KioskError(f"{what} looks like a {kind.upper()} image but cannot be decoded ({e})") from None
    if width * height > MAX_PIXELS:
        raise KioskError(f"{what} has {width}×{height} pixels, more than the limit of {MAX_PIXELS / 1e6:g} megapixels",
                         413)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise KioskError(f"{what} looks like a {kind.upper()} image but cannot be decoded (truncated or corrupt?)")
    return image


def encode_jpeg(image: np.ndarray, quality: int, max_side: int = 0) -> bytes:
    if max_side and max(image.shape[:2]) > max_side:
        s = max_side / max(image.shape[:2])
        image = cv2.resize(image, (max(1, round(image.shape[1] * s)), max(1, round(image.shape[0] * s))),
                           interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise KioskError("cannot encode the image as JPEG", 500)
    return buf.tobytes()


# -- what the screen shows --------------------------------------------------------------

STARTING, IDLE, RECOGNISED, UNKNOWN, ERROR, ENDED = "starting", "idle", "match", "unknown", "error", "ended"


@dataclass(frozen=True)
class Shown:
    """What the page shows: a status and, for a match, the item."""

    status: str  # starting | idle | match | unknown | error | ended
    item_id: int | None = None
    label: str | None = None
    score: float | None = None
    since: float = 0.0  # wall-clock time it appeared
    message: str = ""


class Screen:
    """Turns processed frames into what the page shows. Thread-safe; `version` counts changes.

    A frame *confirms* a key (an item, or "unknown") when the decision rules say so: a `Decider`
    with the service's rules and no cooldown is fed each frame's candidate. A confirmed item
    shows its record at once; it stays until it has not been confirmed for `hold` seconds of
    source time. "Unknown" confirmed while a record is held is an item leaving and is ignored.
    """

    def __init__(self, decision_config, hold: float, clock: Callable[[], float] = time.time):
        self.confirm = Decider.from_config(replace(decision_config, cooldown=0.0, unknown=True))
        self.hold = hold
        self.clock = clock
        self._lock = threading.Lock()
        self._shown = Shown(STARTING, since=clock())
        self._last_seen = -math.inf
        self.version = 0
        self.frame_index = -1
        self.frames = 0

    @property
    def shown(self) -> Shown:
        return self._shown

    def _show(self, shown: Shown) -> None:
        self._shown = shown
        self.version += 1

    def frame(self, result: FrameResult, source: str = "camera") -> Shown:
        """Record one processed frame; what is shown afterwards."""
        t = result.frame.time
        confirmed = self.confirm.update(source, result.candidate, t)
        with self._lock:
            self.frame_index, self.frames = result.frame.index, self.frames + 1
            shown = self._shown
            if confirmed is not None and confirmed.kind == MATCH:
                if shown.status != RECOGNISED or shown.item_id != confirmed.item_id:
                    self._show(Shown(RECOGNISED, confirmed.item_id, confirmed.label, confirmed.score, self.clock()))
                elif round(confirmed.score, 2) != round(shown.score or 0, 2):
                    self._show(replace(shown, score=confirmed.score))
                self._last_seen = t
            elif confirmed is not None:  # unknown
                if shown.status == RECOGNISED and t - self._last_seen <= self.hold:
                    pass  # the held item leaving the view
                else:
                    if shown.status != UNKNOWN:
                        self._show(Shown(UNKNOWN, since=self.clock()))
                    self._last_seen = t
            elif shown.status == STARTING or (shown.status in (RECOGNISED, UNKNOWN)
                                               and t - self._last_seen > self.hold):
                self._show(Shown(IDLE, since=self.clock()))
            return self._shown

    def set_status(self, status: str, message: str = "") -> None:
        with self._lock:
            self._show(Shown(status, since=self.clock(), message=message))

    def touch(self) -> None:
        """Something the page shows changed elsewhere (an item's record was edited)."""
        with self._lock:
            self.version += 1


# -- the service loop, watched ------------------------------------------------------------

class _Watched:
    """The daemon's `Pipeline`, reporting every processed frame (everything else passes through)."""

    def __init__(self, pipeline, watch: Callable[[FrameResult], None]):
        self._pipeline, self._watch = pipeline, watch

    def process(self, frame):
        result = self._pipeline.process(frame)
        self._watch(result)
        return result

    def __getattr__(self, name):
        return getattr(self._pipeline, name)


class KioskDaemon(Daemon):
    """The service's `Daemon`, unchanged, with every processed frame also handed to `watch`."""

    full_frames = True  # the live view shows them

    def __init__(self, config: Config, *, watch: Callable[[FrameResult], None], **kwargs):
        super().__init__(config, **kwargs)
        self._watch = watch

    def open(self) -> None:
        super().open()
        self.pipeline = _Watched(self.pipeline, self._watch)


def kiosk_config(config: Config) -> Config:
    """The config as the kiosk runs it: a file or folder source plays in real time, over and over."""
    uri = config.source.uri.strip()
    if uri and kind_of(uri) in ("file", "folder") and not config.source.watch:
        config = replace(config, source=replace(config.source, loop=True, realtime=True))
    return config


def item_json(item: Item) -> dict[str, Any]:
    return {"id": item.id, "label": item.label, "metadata": item.metadata, "embeddings": item.embeddings,
            "created": item.created, "photo": f"/api/items/{item.id}/photo?v={item.embeddings}"}


class Kiosk:
    """The kiosk's library API: open it, start the camera loop, then ask it for state, search,
    enrol, edit. The web app is a thin layer over these methods.

    >>> with Kiosk(config) as kiosk:      # or Kiosk(Config(), demo=True)
    ...     kiosk.start()
    ...     kiosk.state()["status"]
    """

    def __init__(self, config: Config, *, demo: bool = False, demo_seed: int = 0, token: str = "",
                 stop: threading.Event | None = None, clock: Callable[[], float] = time.time):
        self.config = config
        self.demo, self.demo_seed = demo, demo_seed
        self.token = token or config.kiosk.token
        self.token_file: Path | None = None  # where a generated token is kept (None: configured, or not kept)
        self.token_generated = not self.token
        if self.token_generated:
            self.token = secrets.token_urlsafe(18)
        self.stop = stop or threading.Event()
        self.clock = clock
        self.screen = Screen(config.decision, config.kiosk.hold, clock)
        self.max_upload = int(config.kiosk.max_upload_mb * 1_000_000)
        self.daemon: KioskDaemon | None = None
        self.embedder: Embedder | None = None
        self.gallery: Gallery | None = None
        self.photos: Path | None = None
        self.source_name = ""
        self.threshold = config.decision.threshold
        self._decider = Decider.from_config(config.decision, item_threshold=self._item_threshold)
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
        self._item_thresholds: dict[int, float] = {}

    # -- lifecycle --------------------------------------------------------------------
    def open(self) -> "Kiosk":
        """Load the model and the gallery (preparing the demo clip and gallery with `demo`)."""
        config = self.config
        self.embedder = Embedder(config.model.path or None, config.model.threads)
        self._owned.append(self.embedder)
        if self.demo:
            import tempfile

            folder = tempfile.TemporaryDirectory(prefix="edge-retrieval-kiosk-demo-")
            self._owned.append(folder)
            clip, db = democlip.prepare(self.embedder, folder.name, self.demo_seed)
            config = replace(config, source=replace(config.source, uri=str(clip), name=config.source.name or
                                                    "demo-clip"), gallery=replace(config.gallery, path=str(db)))
            log.info("built-in demo: clip %s (items %s; %s shown but not enrolled)", clip,
                     ", ".join(democlip.SEQUENCE), ", ".join(democlip.HELD_OUT))
        else:
            for key, value in (("source.uri", config.source.uri), ("gallery.path", config.gallery.path)):
                if not value:
                    raise ConfigError(f"{key}: not set (set source.uri and gallery.path, or neither for the "
                                      "built-in demo)")
        self.config = config = kiosk_config(config)
        self.gallery = Gallery(config.gallery.path)
        self._owned.append(self.gallery)
        self.gallery.check_model(self.embedder.sha256, self.embedder.card.name)
        if self.demo:
            for item in self.gallery.items():
                if not item.metadata and item.label in demo_data.DETAILS:
                    self.gallery.update(item.id, metadata=demo_data.DETAILS[item.label])
        gallery_file = Path(config.gallery.path)
        self.photos = Path(config.kiosk.photos) if config.kiosk.photos else \
            gallery_file.with_name(gallery_file.stem + "-photos")
        saved = self._settings().get("threshold")
        if isinstance(saved, (int, float)) and -1 <= saved <= 1:
            self.threshold = float(saved)
            log.info("recognition threshold %.3f (set on the staff page, %s)", saved, self._settings_path())
        self._decider.threshold = self.threshold
        if self.token_generated:
            self._keep_token(config.gallery.path)
        self.source_name = source_name(config.source)  # shown on the page: a stream URL without its password
        self.daemon = KioskDaemon(replace(config, decision=replace(config.decision, threshold=self.threshold)),
                                  stop=self.stop, watch=self._watch)
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
        return {"status": status, "version": version, "item": item,
                "score": round(shown.score, 4) if item is not None and shown.score is not None else None,
                "since": shown.since, "message": message, "source": self.source_name,
                "frame": screen.frame_index, "frames": screen.frames, "fps": round(self._fps, 1),
                "threshold": self.threshold, "margin": d.margin, "votes": {"m": d.votes.m, "n": d.votes.n},
                "hold": self.config.kiosk.hold}

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return [item_json(item) for item in self.gallery.items()]

    def item(self, item_id: int) -> dict[str, Any]:
        with self._lock:
            return item_json(self._item(item_id))

    def _item(self, item_id: int) -> Item:
        try:
            if not 0 <= int(item_id) < 2 ** 63:  # beyond SQLite's integers: no such item (not an OverflowError)
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
    def _item_threshold(self, item_id: int) -> float | None:
        return self._item_thresholds.get(item_id)  # an item's own `threshold` metadata, as the service reads it

    def search(self, data: bytes, k: int = 5) -> dict[str, Any]:
        """Look an uploaded image up: the top-k items and the verdict of the decision rules."""
        image = decode_image(data)
        with self._lock:
            vector = self.embedder.embed(image)
            items = {item.id: item for item in self.gallery.items()}
            if not items:
                return {"matches": [], "verdict": {"status": UNKNOWN, "label": None, "item_id": None,
                                                    "score": None, "threshold": self.threshold,
                                                    "reason": "the gallery is empty"}}
            matches = self.gallery.search(vector, k=max(k, 2))
            self._item_thresholds = {i: t for i, item in items.items()
                                     if (t := _number(item.metadata.get("threshold"))) is not None}
            ids, labels, scores = matches.item_ids[0], matches.labels[0], matches.scores[0]
            c = self._decider.candidate(ids, labels, scores)
        reason = ("passes the threshold and the margin" if c.passed else
                  f"score below the threshold {c.threshold:.3f}" if c.score < c.threshold else
                  f"too close to the next item (margin {c.margin:.3f} < {self._decider.margin:.3f})")
        return {
            "matches": [{**item_json(items[int(i)]), "score": round(float(s), 4)}
                        for i, s in zip(ids[:k], scores[:k])],
            "verdict": {"status": RECOGNISED if c.passed else UNKNOWN, "label": c.label if c.passed else None,
                        "item_id": c.item_id if c.passed else None, "score": round(c.score, 4),
                        "margin": round(c.margin, 4) if math.isfinite(c.margin) else None,
                        "threshold": c.threshold, "reason": reason},
        }

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
        decoded = [decode_image(data, f"image {i + 1}" if len(images) > 1 else "the image")
                   for i, data in enumerate(images)]
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
        """Set the recognition threshold now (None: back to the config's); kept beside the gallery."""
        if value is None:
            value = self.config.decision.threshold
            self._save_settings({})
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not -1 <= value <= 1:
            raise KioskError("threshold: a number from -1 to 1 is required")
        else:
            self._save_settings({"threshold": float(value)})
        self.threshold = float(value)
        self._decider.threshold = self.threshold
        pipeline = self.daemon.pipeline if self.daemon is not None else None
        if pipeline is not None:
            pipeline.decider.threshold = self.threshold
        log.info("recognition threshold set to %.3f on the staff page", self.threshold)
        self.screen.touch()
        return {"threshold": self.threshold, "default": self.config.decision.threshold}

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
        return bool(given) and secrets.compare_digest(given.encode(), self.token.encode())

    def _keep_token(self, gallery_path: str) -> None:
        """The generated token: the one already kept in <gallery>.kiosk-token (mode 600), or this one,
        written there, so that it never has to be printed to a log and survives restarts."""
        if not gallery_path or gallery_path == ":memory:":
            return
        path = Path(gallery_path + TOKEN_SUFFIX)
        try:
            if path.is_file() and path.stat().st_mode & 0o077 == 0:
                kept = path.read_text(encoding="utf-8").strip()
                if len(kept) >= 8 and kept.isprintable():
                    self.token, self.token_file = kept, path
                    return
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(self.token + "\n")
            os.replace(tmp, path)
            self.token_file = path
        except (OSError, UnicodeDecodeError) as e:
            log.warning("%s: cannot keep the staff token there (%s); set kiosk.token", path,
                        getattr(e, "strerror", None) or e)


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


def _number(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _slug(text: str) -> str:
    out = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    return "-".join(filter(None, out.split("-")))[:40] or "item"


# -- the web app ----------------------------------------------------------------------------

CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def host_name(host_header: str) -> str:
    """The host of a Host header, without the port: "127.0.0.1:8080" → "127.0.0.1", "[::1]:80" → "[::1]"."""
    host = host_header.strip().lower()
    if host.startswith("[") and "]" in host:
        name, _, port = host.partition("]")
        name += "]"
        port = port[1:] if port.startswith(":") else port
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
    else:
        return host
    return name if port == "" or port.isdigit() else host  # "host:junk" is no host name


def is_loopback(host: str) -> bool:
    """Whether serving on `host` reaches this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Headers:
    """ASGI middleware: security headers on every response (the pages load nothing from elsewhere) and,
    with `hosts`, 421 for a request addressed to another host name (DNS rebinding)."""

    def __init__(self, app, hosts: tuple[str, ...] = ()):
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        query = scope.get("query_string", b"")
        if not query.isascii() or any(b < 0x21 or b == 0x7F for b in query):
            # percent-encode what a lenient HTTP parser let through: Starlette reads the query string
            # as UTF-8 in places (redirects, error pages) and would fail with a 500 otherwise
            scope = {**scope, "query_string": b"".join(bytes([b]) if 0x21 <= b < 0x7F else b"%%%02X" % b
                                                       for b in query)}
        if self.hosts:
            host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), "")
            if host_name(host) not in self.hosts:
                body = b"this kiosk answers only requests addressed to 127.0.0.1 or localhost"
                await send({"type": "http.response.start", "status": 421,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                for name, value in ((b"content-security-policy", CSP), (b"x-content-type-options", "nosniff"),
                                    (b"x-frame-options", "DENY"), (b"referrer-policy", "no-referrer")):
                    if name not in names:
                        headers.append((name, value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(kiosk: Kiosk, allowed_hosts: tuple[str, ...] = ()):
    """The Starlette app: `/` (kiosk), `/admin` (staff), `/static/…` and the JSON API under `/api/`.
    `allowed_hosts`: the host names (Host header, no port) it answers; empty = any."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
    from starlette.responses import JSONResponse as _JSONResponse
    from starlette.routing import Mount, Route
    from starlette.concurrency import run_in_threadpool
    from starlette.staticfiles import StaticFiles

    cookie = "kiosk_token"

    class JSONResponse(_JSONResponse):
        """JSON the page can parse: a NaN or an infinity (metadata enrolled by other means) becomes null."""

        def render(self, content: Any) -> bytes:
            return super().render(finite(content))

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def on_kiosk_error(request: Request, exc: KioskError):
        return error(exc.status, str(exc))

    async def on_library_error(request: Request, exc: EdgeRetrievalError):
        status = 409 if isinstance(exc, ModelMismatchError) else 400
        return error(status, str(exc))

    async def on_http_error(request: Request, exc: HTTPException):
        if request.scope["path"].startswith("/api/"):  # (request.url would choke on a query string not in UTF-8)
            return error(exc.status_code, exc.detail)
        return HTMLResponse(f"<h1>{exc.status_code}</h1><p>{html.escape(str(exc.detail))}</p>", exc.status_code)

    def check_write(request: Request) -> None:
        """Writes: same-origin only, and the staff token in the Authorization header."""
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            raise KioskError(f"cross-site request from {origin} refused", 403)
        if request.headers.get("sec-fetch-site") == "cross-site":
            raise KioskError("cross-site request refused", 403)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise KioskError("this needs the staff token: send the header 'Authorization: Bearer <token>' "
                             "(kiosk.token, or the <gallery>.kiosk-token file)", 401)
        if not kiosk.check_token(given.strip()):
            raise KioskError("wrong staff token", 403)

    async def body(request: Request) -> bytes:
        """The request body, at most kiosk.max_upload_mb. A larger one is read to its end and dropped
        (up to DRAIN bytes) so that the client, still sending, gets the 413 and not a broken pipe."""
        limit = kiosk.max_upload
        length = request.headers.get("content-length")
        declared = int(length) if length and length.isascii() and length.isdigit() else 0  # (not "²")
        size_text = f" {declared / 1e6:.1f} MB," if declared > limit else ""
        too_big = KioskError(f"the request is{size_text} more than the limit of {limit / 1e6:g} MB "
                             "(kiosk.max_upload_mb)", 413)
        if declared > max(limit, DRAIN):
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > max(limit, DRAIN):
                break
        if size > limit:
            raise too_big
        return b"".join(chunks)

    async def json_body(request: Request) -> dict:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise KioskError("send JSON with 'Content-Type: application/json'", 415)
        try:
            data = json.loads(await body(request), parse_constant=_not_json)
        except (ValueError, UnicodeDecodeError) as e:  # (NaN and Infinity are not JSON either)
            raise KioskError(f"the body is not valid JSON ({e})") from None
        except RecursionError:
            raise KioskError("the body is not valid JSON (nested too deeply)") from None
        if not isinstance(data, dict):
            raise KioskError("the body must be a JSON object")
        return data

    # -- pages --
    async def index(request: Request):
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def admin(request: Request):
        given = request.query_params.get("token")
        if given is not None:
            if not kiosk.check_token(given):
                return HTMLResponse(_refusal("The token in the link is wrong."), 403)
            response = RedirectResponse("/admin", 303)
            response.set_cookie(cookie, kiosk.token, httponly=True, samesite="strict", path="/admin")
            return response
        if not kiosk.check_token(request.cookies.get(cookie)):
            return HTMLResponse(_refusal("The staff page needs the token."), 401)
        page = (STATIC / "admin.html").read_text(encoding="utf-8")
        page = page.replace("{{token}}", html.escape(kiosk.token, quote=True))
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    # -- state, pushed --
    async def api_state(request: Request):
        return JSONResponse(await run_in_threadpool(kiosk.state), headers={"Cache-Control": "no-store"})

    async def api_events(request: Request):
        async def stream():
            version, sent_at = None, 0.0
            yield "retry: 1000\n\n"
            while not kiosk.stop.is_set():
                now = time.monotonic()
                if kiosk.screen.version != version or now - sent_at >= SSE_HEARTBEAT:
                    state = await run_in_threadpool(kiosk.state)
                    version, sent_at = state["version"], now
                    yield f"data: {json.dumps(finite(state))}\n\n"
                await asyncio.sleep(POLL)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def api_video(request: Request):
        async def stream():
            seq = 0
            while not kiosk.stop.is_set():
                new, jpeg = kiosk.live_jpeg()
                if new != seq and jpeg:
                    seq = new
                    yield (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: " + str(len(jpeg)).encode()
                           + b"\r\n\r\n" + jpeg + b"\r\n")
                await asyncio.sleep(POLL)

        return StreamingResponse(stream(), media_type="multipart/x-mixed-replace; boundary=frame",
                                 headers={"Cache-Control": "no-store"})

    async def api_frame(request: Request):
        crop = request.query_params.get("crop") in ("1", "true", "roi")
        jpeg = await run_in_threadpool(kiosk.frame_jpeg, crop)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    # -- search --
    async def api_search(request: Request):
        check_origin(request)
        try:
            k = int(request.query_params.get("k", 5))
        except ValueError:
            raise KioskError("k: an integer from 1 to 50 is required") from None
        if not 1 <= k <= 50:
            raise KioskError("k: an integer from 1 to 50 is required")
        data = await body(request)
        return JSONResponse(await run_in_threadpool(kiosk.search, data, k))

    def check_origin(request: Request) -> None:
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            raise KioskError(f"cross-site request from {origin} refused", 403)

    # -- items --
    async def api_items(request: Request):
        if request.method == "GET":
            return JSONResponse({"items": await run_in_threadpool(kiosk.items)})
        check_write(request)
        data = await json_body(request)
        images = data.get("images")
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise KioskError("images: a list of base64-encoded images is required")
        raw = []
        for i, text in enumerate(images):
            if text.startswith("data:"):
                text = text.partition(",")[2]
            try:
                raw.append(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError):
                raise KioskError(f"images[{i}]: not valid base64") from None
        unknown = sorted(set(data) - {"label", "metadata", "images"})
        if unknown:
            raise KioskError(f"{unknown[0]}: unknown field (known: label, metadata, images)")
        result = await run_in_threadpool(kiosk.enrol, data.get("label"), data.get("metadata"), raw)
        return JSONResponse(result, status_code=201)

    async def api_item(request: Request):
        item_id = request.path_params["item_id"]
        if request.method == "GET":
            return JSONResponse(await run_in_threadpool(kiosk.item, item_id))
        check_write(request)
        if request.method == "DELETE":
            return JSONResponse(await run_in_threadpool(kiosk.remove_item, item_id))
        data = await json_body(request)
        unknown = sorted(set(data) - {"label", "metadata"})
        if unknown:
            raise KioskError(f"{unknown[0]}: unknown field (known: label, metadata)")
        return JSONResponse(await run_in_threadpool(kiosk.update_item, item_id, data.get("label"),
                                                    data.get("metadata")))

    async def api_photo(request: Request):
        jpeg = await run_in_threadpool(kiosk.photo, request.path_params["item_id"])
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=60"})

    async def api_settings(request: Request):
        if request.method == "GET":
            return JSONResponse({"threshold": kiosk.threshold, "default": kiosk.config.decision.threshold})
        check_write(request)
        data = await json_body(request)
        unknown = sorted(set(data) - {"threshold"})
        if unknown or "threshold" not in data:
            raise KioskError(f"{unknown[0] if unknown else 'threshold'}: "
                             + ("unknown field (known: threshold)" if unknown else "required (a number, or null "
                                                                                   "for the config's)"))
        return JSONResponse(await run_in_threadpool(kiosk.set_threshold, data["threshold"]))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if kiosk._thread is None and not kiosk.stop.is_set():
            kiosk.start()
        yield
        kiosk.stop.set()

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/admin", admin),
            Route("/api/state", api_state),
            Route("/api/events", api_events),
            Route("/api/video.mjpg", api_video),
            Route("/api/frame.jpg", api_frame),
            Route("/api/search", api_search, methods=["POST"]),
            Route("/api/items", api_items, methods=["GET", "POST"]),
            Route("/api/items/{item_id:int}", api_item, methods=["GET", "PATCH", "DELETE"]),
            Route("/api/items/{item_id:int}/photo", api_photo),
            Route("/api/settings", api_settings, methods=["GET", "PUT"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={KioskError: on_kiosk_error, EdgeRetrievalError: on_library_error,
                            BadImageError: on_library_error, HTTPException: on_http_error},
        lifespan=lifespan,
    )
    app.add_middleware(_Headers, hosts=tuple(allowed_hosts))
    return app


def _refusal(reason: str) -> str:
    return ("<!doctype html><html lang=en><meta charset=utf-8><title>Staff page</title>"
            "<link rel=stylesheet href=/static/kiosk.css><body class=refusal><main><h1>Staff page</h1>"
            f"<p>{html.escape(reason)}</p><p>Open <code>/admin?token=…</code> with the staff token: the one set "
            "in the configuration, or the one kept in the <code>.kiosk-token</code> file beside the gallery "
            "(also shown when the kiosk is started on a terminal).</p></main></body></html>")


# -- serving ------------------------------------------------------------------------------

def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port (port 0: any free one); KioskError if taken."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise KioskError(f"cannot serve on {host}:{port} ({e.strerror or e})", 500) from None
    sock.set_inheritable(True)
    return sock


class Server:
    """uvicorn serving the kiosk's app on one socket. `run()` blocks (SIGINT/SIGTERM only set
    flags); `start()` runs it in a thread (tests); `stop()` ends both it and the camera loop."""

    def __init__(self, kiosk: Kiosk, host: str = "127.0.0.1", port: int = 8080, log_level: str = "warning"):
        import uvicorn

        class _Uvicorn(uvicorn.Server):
            def handle_exit(self, sig, frame):  # a signal: set the flags, the loops do the rest
                kiosk.stop.set()
                super().handle_exit(sig, frame)

        self.kiosk = kiosk
        self.socket = bind(host, port)
        self.host, self.port = host, self.socket.getsockname()[1]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/"
        hosts = LOOPBACK_NAMES if is_loopback(host) else ()  # elsewhere the names it is reached by are unknown
        self._server = _Uvicorn(uvicorn.Config(create_app(kiosk, hosts), log_level=log_level, access_log=False,
                                               timeout_graceful_shutdown=2, lifespan="on"))
        self._thread: threading.Thread | None = None

    @property
    def admin_url(self) -> str:
        return f"{self.url}admin?token={self.kiosk.token}"

    def staff_address(self, show_token: bool) -> str:
        """The staff page's address for people: with the token only when `show_token` (a terminal,
        not a log); otherwise where the token is."""
        if show_token:
            return self.admin_url
        if self.kiosk.token_file is not None:
            where = f"the token is in {self.kiosk.token_file}"
        elif self.kiosk.token_generated:
            where = "no token file could be written: set kiosk.token or EDGE_RETRIEVAL_KIOSK_TOKEN"
        else:
            where = "the token is kiosk.token or EDGE_RETRIEVAL_KIOSK_TOKEN, as configured"
        return f"{self.url}admin?token=<token> ({where})"

    def run(self) -> None:
        # uvicorn re-raises the signal that stopped it once it is done: with these handlers in place
        # (they only set the stop flag) that ends here and the camera loop and the files close cleanly.
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {signum: signal.signal(signum, lambda *_: self.kiosk.stop.set())
                        for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._server.run(sockets=[self.socket])
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.kiosk.close()
            self.socket.close()

    def start(self, timeout: float = 30.0) -> "Server":
        self._thread = threading.Thread(target=self.run, name="kiosk web server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise KioskError("the kiosk web server did not start", 500)
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.kiosk.stop.set()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
