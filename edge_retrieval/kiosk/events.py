"""The events page's side of the kiosk: what the camera saw (the service's events and their
snapshots), search by example over them, and the staff's answers to an event (enrol its crop,
"this is NOT X", delete).

`Review` is the library API over the kiosk's gallery file (its `events` table, written by the
camera loop or by an `edge-retrieval run` on the same file); `routes` is its JSON API under
`/api/events`. Reading needs the staff token, as writing does: snapshots are camera pictures.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..enroll import enroll_negatives
from ..errors import EventError, GalleryError
from ..storage.events import KINDS, Event, EventLog, draw_event, photo_descriptor
from .app import _slug, item_json
from .errors import KioskError
from .security import check_read, check_write
from .uploads import decode_image, encode_jpeg, read_body, read_json

PAGE = 48  # events a page of the grid holds
MAX_PAGE = 200
TOP_K = 48  # events a search by example answers
SNAPSHOT_NAME = re.compile(r"event-[^/]*\.jpg")  # only the service's snapshot files are ever served
CROP_QUALITY = 92


class Review:
    """The events of the kiosk's gallery file, for the staff. Every method takes the kiosk's lock
    (its web-side gallery connection and model interpreter are shared with search and enrolment)."""

    def __init__(self, kiosk):
        self.kiosk = kiosk
        self._log: EventLog | None = None

    @property
    def log(self) -> EventLog:
        if self._log is None:  # the events and outbox ladders, applied once, on the web side's connection
            self._log = EventLog(self.kiosk.gallery.db, [])
        return self._log

    # -- reading ------------------------------------------------------------------------
    def event_json(self, event: Event, items: dict[int, Any]) -> dict[str, Any]:
        d = event.details
        item = items.get(event.item_id) if event.item_id is not None else None
        return {
            "id": event.id,
            "time": event.time,
            "time_iso": datetime.fromtimestamp(event.time, timezone.utc).isoformat(timespec="seconds"),
            "source": event.source,
            "kind": event.kind,
            "label": event.label,
            "item_id": event.item_id,
            "item": item_json(item) if item is not None else None,
            "score": event.score,
            "threshold": d.get("threshold"),
            "margin": d.get("margin"),
            "votes": d.get("votes"),
            "window": d.get("window"),
            "inliers": d.get("inliers"),
            "aligned": d.get("aligned"),
            "box": list(event.box) if event.box is not None else None,
            "polygon": [list(p) for p in event.polygon] if event.polygon is not None else None,
            "points": d.get("points"),
            "metadata": event.metadata,
            "snapshot": f"/api/events/{event.id}/snapshot.jpg" if _snapshot_file(event) else None,
        }

    def _items(self) -> dict[int, Any]:
        return {item.id: item for item in self.kiosk.gallery.items()}

    def list(self, filters: dict[str, Any], before: int | None, limit: int) -> dict[str, Any]:
        with self.kiosk._lock:
            events = self.log.query(**filters, before_id=before, limit=limit + 1)
            latest = self.log.query(limit=1)
            items = self._items()
        more = len(events) > limit
        events = events[:limit]
        return {
            "events": [self.event_json(e, items) for e in events],
            "next": events[-1].id if more else None,
            "latest": latest[0].id if latest else 0,
        }

    def event(self, event_id: int) -> dict[str, Any]:
        with self.kiosk._lock:
            return self.event_json(self._event(event_id), self._items())

    def _event(self, event_id: int) -> Event:
        try:
            return self.log.event(event_id)
        except EventError:
            raise KioskError(f"no event {event_id}", 404) from None

    def snapshot(self, event_id: int) -> Path:
        with self.kiosk._lock:
            path = _snapshot_file(self._event(event_id))
        if path is None:
            raise KioskError(f"event {event_id} has no snapshot (not saved, or deleted by retention)", 404)
        return path

    # -- search by example ---------------------------------------------------------------
    def similar_to(self, event_id: int, filters: dict[str, Any], top_k: int) -> dict[str, Any]:
        with self.kiosk._lock:
            self._event(event_id)
            try:
                found = self.log.similar_to(event_id, top_k=top_k, **filters)
            except EventError as e:
                raise KioskError(str(e).rpartition(": ")[2], 409) from None
            return self._results(found)

    def similar_photo(self, data: bytes, filters: dict[str, Any], top_k: int) -> dict[str, Any]:
        image = decode_image(data)
        with self.kiosk._lock:
            vector = photo_descriptor(self.kiosk.embedder, image)
            return self._results(self.log.similar(vector, top_k=top_k, **filters))

    def _results(self, found: list[tuple[Event, float]]) -> dict[str, Any]:
        items = self._items()
        return {"results": [{**self.event_json(e, items), "similarity": round(s, 4)} for e, s in found]}

    # -- the staff's answers ------------------------------------------------------------------
    def crop(self, event_id: int) -> np.ndarray:
        """The matched region of the event's snapshot, the drawing painted out: what the camera saw
        of the item (the outline's bounding box; the ROI or the whole frame if none)."""
        with self.kiosk._lock:
            event = self._event(event_id)
        path = _snapshot_file(event)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path is not None else None
        if image is None:
            raise KioskError(f"event {event_id} has no snapshot to crop", 409)
        height, width = image.shape[:2]
        drawn = np.zeros_like(image)  # the pixels `draw_event` drew on the snapshot, painted over
        draw_event(drawn, event)
        mask = cv2.dilate((drawn.max(axis=2) > 0).astype(np.uint8), np.ones((5, 5), np.uint8))
        if mask.any():
            image = cv2.inpaint(image, mask, 3, cv2.INPAINT_TELEA)
        if event.polygon:
            xs, ys = zip(*event.polygon)
            x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
        elif event.box is not None:
            x0, y0, x1, y1 = event.box
        else:
            x0, y0, x1, y1 = 0, 0, width, height
        x0, y0 = max(0, math.floor(x0)), max(0, math.floor(y0))
        x1, y1 = min(width, math.ceil(x1)), min(height, math.ceil(y1))
        if x1 - x0 < 16 or y1 - y0 < 16:
            raise KioskError(f"event {event_id}: the matched region is too small to enrol", 409)
        return image[y0:y1, x0:x1]

    def enrol_crop(self, event_id: int, label: Any) -> dict[str, Any]:
        """Add the event's crop to the item `label` (created if new), as the staff page's enrolment does."""
        jpeg = encode_jpeg(self.crop(event_id), CROP_QUALITY)
        return {**self.kiosk.enrol(label, None, [jpeg]), "event": event_id}

    def not_item(self, event_id: int, label: Any) -> dict[str, Any]:
        """Enrol the event's crop as a negative of `label` (`enroll --not`): it vetoes that item's
        matches on what looks like it and raises its calibrated threshold."""
        if label is None:
            with self.kiosk._lock:
                label = self._event(event_id).label
        if not isinstance(label, str) or not label.strip():
            raise KioskError("label: the item this is NOT (a non-empty string) is required")
        label = label.strip()
        with self.kiosk._lock:
            try:
                item = self.kiosk.gallery.item(label)
            except GalleryError:
                raise KioskError(f"no item {label!r}", 404) from None
        crop = self.crop(event_id)
        folder = self.kiosk.photos
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"not-{_slug(label)}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}.jpg"
        path.write_bytes(encode_jpeg(crop, CROP_QUALITY))
        try:
            with self.kiosk._lock:
                enroll_negatives(self.kiosk.gallery, self.kiosk.embedder, label, [path])
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        self.kiosk.screen.touch()
        return {"item": item_json(item), "negatives": 1, "event": event_id}

    def delete(self, event_id: int) -> dict[str, Any]:
        with self.kiosk._lock:
            if not self.log.delete(event_id):
                raise KioskError(f"no event {event_id}", 404)
        return {"deleted": event_id}


def _snapshot_file(event: Event) -> Path | None:
    if not event.snapshot:
        return None
    path = Path(event.snapshot)
    return path if SNAPSHOT_NAME.fullmatch(path.name) and path.is_file() else None


# -- the query string ---------------------------------------------------------------------------
def filters_of(query) -> dict[str, Any]:
    """label, kind, source, since, until (seconds since the epoch) from the query string."""
    unknown = sorted(set(query) - {"label", "kind", "source", "since", "until", "before", "limit", "top_k"})
    if unknown:
        raise KioskError(
            f"{unknown[0]}: unknown parameter (known: label, kind, source, since, until, before, limit, top_k)"
        )
    out: dict[str, Any] = {}
    for name in ("label", "source"):
        if query.get(name):
            out[name] = query[name]
    kind = query.get("kind")
    if kind:
        if kind not in KINDS:
            raise KioskError(f"kind: one of {', '.join(KINDS)}, not {kind!r}")
        out["kind"] = kind
    for name in ("since", "until"):
        if query.get(name):
            try:
                value = float(query[name])
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise KioskError(f"{name}: a time in seconds since the epoch is required, not {query[name]!r}")
            out[name] = value
    return out


def integer(query, name: str, default: int | None, lo: int, hi: int) -> int | None:
    text = query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise KioskError(f"{name}: an integer from {lo} to {hi} is required")
    return value


def routes(kiosk, review: Review, JSONResponse) -> list:
    """The routes of `/api/events…` (the kiosk's `create_app` adds them)."""
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import FileResponse
    from starlette.routing import Route

    def event_id(request) -> int:
        value = request.path_params["event_id"]
        if not 0 <= value < 2**63:
            raise KioskError(f"no event {value}", 404)
        return value

    async def api_list(request):
        check_read(request, kiosk.token)
        q = request.query_params
        filters = filters_of(q)
        before = integer(q, "before", None, 1, 2**63 - 1)
        limit = integer(q, "limit", PAGE, 1, MAX_PAGE)
        return JSONResponse(await run_in_threadpool(review.list, filters, before, limit))

    async def api_event(request):
        if request.method == "DELETE":
            check_write(request, kiosk.token)
            return JSONResponse(await run_in_threadpool(review.delete, event_id(request)))
        check_read(request, kiosk.token)
        return JSONResponse(await run_in_threadpool(review.event, event_id(request)))

    async def api_snapshot(request):
        check_read(request, kiosk.token)
        path = await run_in_threadpool(review.snapshot, event_id(request))
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    async def api_similar(request):
        check_read(request, kiosk.token)
        q = request.query_params
        filters, top_k = filters_of(q), integer(q, "top_k", TOP_K, 1, MAX_PAGE)
        return JSONResponse(await run_in_threadpool(review.similar_to, event_id(request), filters, top_k))

    async def api_search(request):
        check_read(request, kiosk.token)
        q = request.query_params
        filters, top_k = filters_of(q), integer(q, "top_k", TOP_K, 1, MAX_PAGE)
        data = await read_body(request, kiosk.max_upload)
        return JSONResponse(await run_in_threadpool(review.similar_photo, data, filters, top_k))

    async def label_of(request) -> Any:
        check_write(request, kiosk.token)
        data = await read_json(request, kiosk.max_upload)
        unknown = sorted(set(data) - {"label"})
        if unknown:
            raise KioskError(f"{unknown[0]}: unknown field (known: label)")
        return data.get("label")

    async def api_enrol(request):
        label = await label_of(request)
        return JSONResponse(await run_in_threadpool(review.enrol_crop, event_id(request), label), status_code=201)

    async def api_not(request):
        label = await label_of(request)
        return JSONResponse(await run_in_threadpool(review.not_item, event_id(request), label))

    return [
        Route("/api/events", api_list),
        Route("/api/events/search", api_search, methods=["POST"]),
        Route("/api/events/{event_id:int}", api_event, methods=["GET", "DELETE"]),
        Route("/api/events/{event_id:int}/snapshot.jpg", api_snapshot),
        Route("/api/events/{event_id:int}/similar", api_similar),
        Route("/api/events/{event_id:int}/enrol", api_enrol, methods=["POST"]),
        Route("/api/events/{event_id:int}/not", api_not, methods=["POST"]),
    ]
