"""The kiosk's defences: the staff token (kept beside the gallery, compared in constant time), same-origin
writes, host-name checks against DNS rebinding and the security headers on every response."""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from .errors import KioskError

log = logging.getLogger(__name__)

TOKEN_ENV = "EDGE_RETRIEVAL_KIOSK_TOKEN"
TOKEN_SUFFIX = ".kiosk-token"  # the generated staff token is kept beside the gallery, in <gallery>.kiosk-token
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")

CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


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
            scope = {
                **scope,
                "query_string": b"".join(bytes([b]) if 0x21 <= b < 0x7F else b"%%%02X" % b for b in query),
            }
        if self.hosts:
            host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), "")
            if host_name(host) not in self.hosts:
                body = b"this kiosk answers only requests addressed to 127.0.0.1 or localhost"
                await send(
                    {
                        "type": "http.response.start",
                        "status": 421,
                        "headers": [
                            (b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                for name, value in (
                    (b"content-security-policy", CSP),
                    (b"x-content-type-options", "nosniff"),
                    (b"x-frame-options", "DENY"),
                    (b"referrer-policy", "no-referrer"),
                ):
                    if name not in names:
                        headers.append((name, value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def token_matches(given: str | None, token: str) -> bool:
    """Whether `given` is the staff token, compared in constant time."""
    return bool(given) and secrets.compare_digest(given.encode(), token.encode())


def keep_token(gallery_path: str, token: str) -> tuple[str, Path] | None:
    """The generated token: the one already kept in <gallery>.kiosk-token (mode 600), or this one,
    written there, so that it never has to be printed to a log and survives restarts.
    (token, its file), or None if it is not kept."""
    if not gallery_path or gallery_path == ":memory:":
        return None
    path = Path(gallery_path + TOKEN_SUFFIX)
    try:
        if path.is_file() and path.stat().st_mode & 0o077 == 0:
            kept = path.read_text(encoding="utf-8").strip()
            if len(kept) >= 8 and kept.isprintable():
                return kept, path
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(token + "\n")
        os.replace(tmp, path)
        return token, path
    except (OSError, UnicodeDecodeError) as e:
        log.warning(
            "%s: cannot keep the staff token there (%s); set kiosk.token", path, getattr(e, "strerror", None) or e
        )
        return None


def check_write(request, token: str) -> None:
    """Writes: same-origin only, and the staff token in the Authorization header."""
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise KioskError(f"cross-site request from {origin} refused", 403)
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise KioskError("cross-site request refused", 403)
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise KioskError(
            "this needs the staff token: send the header 'Authorization: Bearer <token>' "
            "(kiosk.token, or the <gallery>.kiosk-token file)",
            401,
        )
    if not token_matches(given.strip(), token):
        raise KioskError("wrong staff token", 403)


COOKIE = "kiosk_token"  # set by /admin?token= and /events?token= (HttpOnly, SameSite=Strict)


def check_read(request, token: str) -> None:
    """Reads of camera pictures (the events): same-origin only, and the staff token in the
    Authorization header or the pages' cookie (an <img> cannot send a header)."""
    check_origin(request)
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise KioskError("cross-site request refused", 403)
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    given = given.strip() if scheme.lower() == "bearer" else ""
    given = given or request.cookies.get(COOKIE, "")
    if not given:
        raise KioskError(
            "the events need the staff token: open /events?token=<token>, or send the header "
            "'Authorization: Bearer <token>' (kiosk.token, or the <gallery>.kiosk-token file)",
            401,
        )
    if not token_matches(given, token):
        raise KioskError("wrong staff token", 403)


def check_origin(request) -> None:
    """Requests that only read (a search): same-origin only."""
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise KioskError(f"cross-site request from {origin} refused", 403)
