"""`create_app`: the Starlette app (pages, static files, the JSON API) over a `Kiosk`."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import html
import json
import math
import time
from pathlib import Path
from typing import Any

from ..errors import BadImageError, EdgeRetrievalError, ModelMismatchError
from .app import Kiosk
from .errors import KioskError
from .events import Review
from .events import routes as event_routes
from .security import COOKIE, _Headers, check_origin, check_write
from .uploads import read_body, read_json

STATIC = Path(__file__).resolve().parent / "static"
SSE_HEARTBEAT = 2.0  # seconds between state pushes when nothing changed (fps, frame count)
POLL = 0.05  # seconds between looks at the state in the streaming responses


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def create_app(kiosk: Kiosk, allowed_hosts: tuple[str, ...] = ()):
    """The Starlette app: `/` (kiosk), `/admin` (staff), `/static/…` and the JSON API under `/api/`.
    `allowed_hosts`: the host names (Host header, no port) it answers; empty = any."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
    from starlette.responses import JSONResponse as _JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    cookie = COOKIE
    review = Review(kiosk)

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

    async def events_page(request: Request):
        """The events page: the token in the link (once) sets the cookie its pictures are read with."""
        given = request.query_params.get("token")
        if given is not None:
            if not kiosk.check_token(given):
                return HTMLResponse(_refusal("The token in the link is wrong.", "Events"), 403)
            response = RedirectResponse("/events", 303)
            for path in ("/events", "/api/events"):
                response.set_cookie(cookie, kiosk.token, httponly=True, samesite="strict", path=path)
            return response
        if not kiosk.check_token(request.cookies.get(cookie)):
            return HTMLResponse(_refusal("The events page needs the token.", "Events", "/events"), 401)
        page = (STATIC / "events.html").read_text(encoding="utf-8")
        page = page.replace("{{token}}", html.escape(kiosk.token, quote=True))
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    # -- state, pushed --
    async def api_state(request: Request):
        return JSONResponse(await run_in_threadpool(kiosk.state), headers={"Cache-Control": "no-store"})

    async def api_stream(request: Request):
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

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )

    async def api_video(request: Request):
        async def stream():
            seq = 0
            while not kiosk.stop.is_set():
                new, jpeg = kiosk.live_jpeg()
                if new != seq and jpeg:
                    seq = new
                    yield (
                        b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                        + str(len(jpeg)).encode()
                        + b"\r\n\r\n"
                        + jpeg
                        + b"\r\n"
                    )
                await asyncio.sleep(POLL)

        return StreamingResponse(
            stream(), media_type="multipart/x-mixed-replace; boundary=frame", headers={"Cache-Control": "no-store"}
        )

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
        data = await read_body(request, kiosk.max_upload)
        return JSONResponse(await run_in_threadpool(kiosk.search, data, k))

    # -- items --
    async def api_items(request: Request):
        if request.method == "GET":
            return JSONResponse({"items": await run_in_threadpool(kiosk.items)})
        check_write(request, kiosk.token)
        data = await read_json(request, kiosk.max_upload)
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
        check_write(request, kiosk.token)
        if request.method == "DELETE":
            return JSONResponse(await run_in_threadpool(kiosk.remove_item, item_id))
        data = await read_json(request, kiosk.max_upload)
        unknown = sorted(set(data) - {"label", "metadata"})
        if unknown:
            raise KioskError(f"{unknown[0]}: unknown field (known: label, metadata)")
        return JSONResponse(
            await run_in_threadpool(kiosk.update_item, item_id, data.get("label"), data.get("metadata"))
        )

    async def api_photo(request: Request):
        jpeg = await run_in_threadpool(kiosk.photo, request.path_params["item_id"])
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=60"})

    async def api_settings(request: Request):
        if request.method == "GET":
            return JSONResponse(kiosk.settings())
        check_write(request, kiosk.token)
        data = await read_json(request, kiosk.max_upload)
        unknown = sorted(set(data) - {"threshold"})
        if unknown or "threshold" not in data:
            raise KioskError(
                f"{unknown[0] if unknown else 'threshold'}: "
                + ("unknown field (known: threshold)" if unknown else "required (a number, or null for the config's)")
            )
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
            Route("/events", events_page),
            Route("/api/state/stream", api_stream),
            *event_routes(kiosk, review, JSONResponse),
            Route("/api/video.mjpg", api_video),
            Route("/api/frame.jpg", api_frame),
            Route("/api/search", api_search, methods=["POST"]),
            Route("/api/items", api_items, methods=["GET", "POST"]),
            Route("/api/items/{item_id:int}", api_item, methods=["GET", "PATCH", "DELETE"]),
            Route("/api/items/{item_id:int}/photo", api_photo),
            Route("/api/settings", api_settings, methods=["GET", "PUT"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={
            KioskError: on_kiosk_error,
            EdgeRetrievalError: on_library_error,
            BadImageError: on_library_error,
            HTTPException: on_http_error,
        },
        lifespan=lifespan,
    )
    app.add_middleware(_Headers, hosts=tuple(allowed_hosts))
    return app


def _refusal(reason: str, title: str = "Staff page", path: str = "/admin") -> str:
    return (
        f"<!doctype html><html lang=en><meta charset=utf-8><title>{title}</title>"
        f"<link rel=stylesheet href=/static/kiosk.css><body class=refusal><main><h1>{title}</h1>"
        f"<p>{html.escape(reason)}</p><p>Open <code>{path}?token=…</code> with the staff token: the one set "
        "in the configuration, or the one kept in the <code>.kiosk-token</code> file beside the gallery "
        "(also shown when the kiosk is started on a terminal).</p></main></body></html>"
    )
