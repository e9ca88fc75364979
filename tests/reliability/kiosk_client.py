"""Helpers for the intrusion and fuzzing tests: call the kiosk's ASGI app directly (no socket, no
extra HTTP client library), and read what a process listens on from /proc."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str = ""  # the traceback of an exception that escaped the app (a 500 on a real server)


def call(
    app,
    method: str,
    path: str,
    *,
    query: bytes | str = b"",
    headers=(),
    body: bytes = b"",
    host: str | None = "127.0.0.1:8080",
    timeout: float = 20.0,
) -> Answer:
    """One HTTP request straight into the ASGI `app`. `headers`: (name, value) pairs of str or bytes.
    A streaming answer is cut after its first chunk (the client "disconnects")."""
    raw = [
        (k.encode("latin-1") if isinstance(k, str) else k, v.encode("latin-1") if isinstance(v, str) else v)
        for k, v in headers
    ]
    raw = [(k.lower(), v) for k, v in raw]
    if host is not None and not any(k == b"host" for k, _ in raw):
        raw.insert(0, (b"host", host.encode("latin-1")))
    if body and not any(k == b"content-length" for k, _ in raw):
        raw.append((b"content-length", str(len(body)).encode()))
    query = query.encode("latin-1", "replace") if isinstance(query, str) else query
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "query_string": query,
        "root_path": "",
        "headers": raw,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
        "state": {},
    }
    answer = Answer(0)
    chunks: list[bytes] = []

    async def run():
        started = asyncio.Event()
        body_sent = False

        async def receive():
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await started.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start":
                answer.status = message["status"]
                answer.headers = {
                    k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])
                }
                started.set()
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await asyncio.wait_for(app(scope, receive, send), timeout)
        except asyncio.TimeoutError:
            answer.error = f"no complete answer within {timeout} s"
        except Exception:  # noqa: BLE001 - what escaped the app is the finding
            answer.error = traceback.format_exc()

    asyncio.run(run())
    answer.body = b"".join(chunks)
    return answer


# -- what a process listens on -------------------------------------------------------------


def _address(hex_address: str) -> tuple[ipaddress._BaseAddress, int]:
    ip_hex, port_hex = hex_address.split(":")
    raw = bytes.fromhex(ip_hex)
    # /proc/net/tcp{,6} prints each 32-bit word of the address in host (little-endian) byte order
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw), int(port_hex, 16)


def listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket `pid` holds in the LISTEN state (IPv4 and IPv6), from /proc."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir() if fd_dir.is_dir() else ():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.is_file():
            continue
        for line in path.read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and parts[9] in inodes:  # 0A = TCP_LISTEN
                ip, port = _address(parts[1])
                found.append((str(ip), port))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (getattr(ip, "ipv4_mapped", None) is not None and ip.ipv4_mapped.is_loopback)


# -- a small real kiosk for the intrusion and fuzzing tests --------------------------------------
def open_kiosk(folder: Path, embedder, token: str, **kiosk_settings):
    """A kiosk (model and gallery open, camera loop not started) over a gallery of two real items
    ("cat", "coffee"), in `folder`; the caller closes it."""
    import shutil

    from edge_retrieval.config import Config, GalleryConfig, KioskConfig, SourceConfig
    from edge_retrieval.demo import photo
    from edge_retrieval.kiosk import Kiosk
    from edge_retrieval.storage.gallery import Gallery

    camera = folder / "camera"
    camera.mkdir()
    shutil.copy(photo("cat"), camera / "frame.jpg")
    with Gallery(folder / "gallery.db") as g:
        for name in ("cat", "coffee"):
            g.add(
                name,
                embedder.embed_files([photo(name)]),
                model_sha256=embedder.sha256,
                model_name=embedder.card.name,
                sources=[str(photo(name))],
                metadata={"name": name},
            )
    config = Config(
        source=SourceConfig(uri=str(camera)),
        gallery=GalleryConfig(path=str(folder / "gallery.db")),
        kiosk=KioskConfig(token=token, port=0, **kiosk_settings),
    )
    return Kiosk(config).open()


def gallery_state(kiosk) -> tuple:
    """Everything a write could change: items (labels, metadata, photos, negatives), the threshold
    setting, photo files, the events."""
    import json

    from edge_retrieval.storage.gallery import Gallery

    with Gallery(kiosk.config.gallery.path) as g:
        items = [(i.id, i.label, json.dumps(i.metadata, sort_keys=True), i.embeddings) for i in g.items()]
        items.append(("negatives", len(g.negatives()[0])))
        tables = {r[0] for r in g.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()}
        # no events table yet is no events (the kiosk's event store may create it meanwhile)
        events = g.db.execute("SELECT id FROM events ORDER BY id").fetchall() if "events" in tables else []
        items.append(("events", tuple(r[0] for r in events)))
    settings = Path(kiosk.config.gallery.path + ".kiosk.json")
    photos = sorted(p.name for p in kiosk.photos.glob("*")) if kiosk.photos.exists() else []
    return items, settings.read_text() if settings.exists() else None, photos, kiosk.threshold
