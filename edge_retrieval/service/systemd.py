"""sd_notify without python-systemd: one datagram per message to `$NOTIFY_SOCKET`.

Without `NOTIFY_SOCKET` (not started by systemd with Type=notify) every call does nothing.
An address starting with "@" is a Linux abstract socket name.

    notifier = Notifier.from_env()
    notifier.ready()            # after the model and the gallery are loaded
    notifier.watchdog()         # after each processed frame
    notifier.status("4.9 fps")  # shown by `systemctl status`
    notifier.stopping()         # when the stop event was seen
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def socket_address(value: str) -> str | bytes:
    """$NOTIFY_SOCKET → an AF_UNIX address ("@name" → b"\\0name", the abstract namespace)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_seconds(env: dict[str, str] | None = None) -> float | None:
    """The watchdog period systemd expects pings within (WATCHDOG_USEC), if it is meant for us."""
    env = os.environ if env is None else env
    usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return int(usec) / 1e6
    except ValueError:
        return None


class Notifier:
    """Sends sd_notify messages; a no-op when `address` is None."""

    def __init__(self, address: str | None):
        self.address = address or None
        self._sock: socket.socket | None = None
        self.sent = 0
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Notifier":
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, **fields: object) -> bool:
        """Send KEY=value lines (notify(READY=1, STATUS="…")); False if not sent (no socket, error)."""
        if self._sock is None:
            return False
        text = "\n".join(f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items())
        try:
            self._sock.sendto(text.encode(), socket_address(self.address))
        except OSError as e:  # systemd gone or the socket full: never fatal for the service
            log.debug("sd_notify to %s failed: %s", self.address, e)
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify(READY=1, **({"STATUS": status} if status else {}))

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def stopping(self, status: str | None = None) -> bool:
        return self.notify(STOPPING=1, **({"STATUS": status} if status else {}))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "Notifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
