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

The modules: `app` (`Kiosk`, the camera loop it runs), `screen` (`Screen`, `Shown`), `uploads` (request
bodies and uploaded images), `security` (the token, origin and host checks, the headers), `web`
(`create_app`), `events` (`Review`: the events page's API over the recorded events), `server`
(`bind`, `Server`), `errors` (`KioskError`).

The staff token is never written to a log: a configured one is only compared, and a generated one
is kept in `<gallery>.kiosk-token` (mode 600) and shown only on a terminal (`Server.staff_address`).
A server on a loopback address answers only requests addressed to a loopback name (`Host:`), so a
web page cannot reach it through DNS rebinding.
"""

from .app import Kiosk
from .errors import KioskError
from .screen import Screen, Shown
from .security import LOOPBACK_NAMES, is_loopback
from .server import Server, bind
from .uploads import decode_image, encode_jpeg, image_header
from .web import STATIC, create_app

__all__ = [
    "LOOPBACK_NAMES",
    "STATIC",
    "Kiosk",
    "KioskError",
    "Screen",
    "Server",
    "Shown",
    "bind",
    "create_app",
    "decode_image",
    "encode_jpeg",
    "image_header",
    "is_loopback",
]
