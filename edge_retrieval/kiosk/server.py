"""Serving the kiosk: `bind` a socket, `Server` runs the app on it with uvicorn."""

from __future__ import annotations

import signal
import socket
import threading
import time

from .app import Kiosk
from .errors import KioskError
from .security import LOOPBACK_NAMES, is_loopback
from .web import create_app


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
        self._server = _Uvicorn(
            uvicorn.Config(
                create_app(kiosk, hosts),
                log_level=log_level,
                access_log=False,
                timeout_graceful_shutdown=2,
                lifespan="on",
            )
        )
        self._thread: threading.Thread | None = None

    @property
    def admin_url(self) -> str:
        return f"{self.url}admin?token={self.kiosk.token}"

    def staff_address(self, show_token: bool, page: str = "admin") -> str:
        """The address of a staff page (`admin`, `events`) for people: with the token only when
        `show_token` (a terminal, not a log); otherwise where the token is."""
        if show_token:
            return f"{self.url}{page}?token={self.kiosk.token}"
        if self.kiosk.token_file is not None:
            where = f"the token is in {self.kiosk.token_file}"
        elif self.kiosk.token_generated:
            where = "no token file could be written: set kiosk.token or EDGE_RETRIEVAL_KIOSK_TOKEN"
        else:
            where = "the token is kiosk.token or EDGE_RETRIEVAL_KIOSK_TOKEN, as configured"
        return f"{self.url}{page}?token=<token> ({where})"

    def run(self) -> None:
        # uvicorn re-raises the signal that stopped it once it is done: with these handlers in place
        # (they only set the stop flag) that ends here and the camera loop and the files close cleanly.
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {
                signum: signal.signal(signum, lambda *_: self.kiosk.stop.set())
                for signum in (signal.SIGINT, signal.SIGTERM)
            }
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
