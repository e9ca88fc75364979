"""A fleet: one watchlist on many devices, through an MQTT broker (no sync server of our own).

A publisher (`edge-retrieval fleet publish`) puts a gallery's export file (transfer.py: its
manifest, the model it belongs to, its calibrated thresholds) on the broker, retained:

- `<prefix>/<group>/watchlist/<version>/<i>`: the file in chunks (raw bytes, QoS 1, retained),
  published first, each acknowledged by the broker;
- `<prefix>/<group>/watchlist`: the head (JSON, retained), published last: format, group,
  version, model, item count, size, sha256 of the file and of each chunk, and an HMAC-SHA256 of
  all of it with the fleet key. A head is only ever on the broker after all of its chunks.

A follower (`Follower`, started by the service when `[fleet] group` is set) takes a head only
when it is signed with the key, names this group and this device's model, is newer than the
version applied and not over `max_payload_mb`; then each chunk only when its sha256 is the one
the head signed. The whole file then goes through the import path (`transfer.import_into`) in
one SQLite transaction (layer.py): the running service answers from the old gallery until the
commit and from the new one within its next gallery check (a quarter of a second). Anything
refused is one log line, an event on `<prefix>/<group>/<device>/event` and the state's
`last_error`; the gallery stays as it was.

Each device keeps `<prefix>/<group>/<device>/state` (retained JSON: version applied, items,
model, last error, fps) and `…/availability` (`online`/`offline`, the Last Will), so one
subscriber (`edge-retrieval fleet status`) sees the whole fleet.
"""

from __future__ import annotations

import os
import re
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..settings import join_key, setting

KEY_BYTES = 16  # the shortest fleet key accepted
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class FleetConfig:
    """Follow a watchlist published to a group of devices (`edge-retrieval fleet publish`)."""

    group: str = setting(
        "",
        "The fleet group this device follows: the service applies each new version of the "
        "group's watchlist to its gallery. Empty = no fleet.",
    )
    device_id: str = setting("", "This device's name in the fleet's topics; empty = the host name.")
    key_file: str = setting(
        "",
        "File holding the fleet key (the same on the publisher and every device; at least 16 "
        "bytes, e.g. `openssl rand -hex 32`), mode 600: versions are signed with it (HMAC-SHA256). "
        "The key itself is never logged or shown.",
    )
    host: str = setting("127.0.0.1", "MQTT broker host name or address.")
    port: int = setting(1883, "MQTT broker TCP port.", min=1, max=65535)
    username: str = setting("", "Broker user name; empty = anonymous.")
    password: str = setting("", "Broker password (used only with a user name).")
    tls: bool = setting(False, "Connect with TLS, checking the broker against the system CAs.")
    topic_prefix: str = setting("edge-retrieval/fleet", "Topics are <topic_prefix>/<group>/...")
    keepalive_s: int = setting(30, "Seconds between keep-alive pings (the Last Will after 1.5x this).", min=5)
    timeout_s: float = setting(10.0, "Seconds to wait for the broker (connection, acknowledgements).", min=0.1)
    max_payload_mb: float = setting(
        256.0,
        "Largest watchlist accepted, in megabytes (a 1,000-item gallery with local features, ORB and SIFT, "
        "is about 90); a bigger one is refused before it is downloaded.",
        min=0.01,
        max=4096,
    )
    state_interval: float = setting(
        30.0, "Seconds between state messages (version, items, fps); also sent after every change.", min=1
    )

    def validate(self, path: str = "fleet") -> None:
        for key in ("topic_prefix", "group", "device_id"):
            value = getattr(self, key)
            if key == "topic_prefix" or value:
                check_topic_part(value, join_key(path, key), levels=key == "topic_prefix")
        if not self.host or _CONTROL.search(self.host):
            raise ConfigError(f"{join_key(path, 'host')}: {self.host!r} is not a host name or address")
        if self.group and not self.key_file:
            raise ConfigError(f"{join_key(path, 'key_file')}: required with a group (the fleet key signs versions)")

    @property
    def max_payload_bytes(self) -> int:
        return int(self.max_payload_mb * (1 << 20))

    @property
    def device(self) -> str:
        device = self.device_id or socket.gethostname()
        check_topic_part(device, "fleet.device_id")
        return device


def check_topic_part(value: str, key: str, *, levels: bool = False) -> None:
    """A topic level (or, with `levels`, several joined by /): no wildcards, no empty level."""
    parts = value.split("/") if levels else [value]
    if not value or any(not p or any(c in p for c in "+#\0/") or _CONTROL.search(p) for p in parts):
        raise ConfigError(f"{key}: {value!r} is not a usable MQTT topic {'prefix' if levels else 'level'}")


def load_key(path: str | Path, key: str = "fleet.key_file") -> bytes:
    """The fleet key: the file's bytes (surrounding white space stripped). The file must be a
    regular file that only its owner can read or write (mode 600 or 400): ConfigError otherwise."""
    if not path:
        raise ConfigError(f"{key}: not set (a file holding the fleet key, mode 600)")
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ConfigError(f"{key}: {path}: cannot read ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{key}: {path}: not a regular file")
        if st.st_mode & 0o077:
            raise ConfigError(
                f"{key}: {path}: mode {stat.S_IMODE(st.st_mode):03o} lets others read or write the fleet key; "
                f"chmod 600 {path}"
            )
        data = os.read(fd, 1 << 16).strip()
    finally:
        os.close(fd)
    if len(data) < KEY_BYTES:
        raise ConfigError(f"{key}: {path}: the key has {len(data)} bytes, fewer than {KEY_BYTES}")
    return data


class Topics:
    """The topics of one group, and one device in it."""

    def __init__(self, prefix: str, group: str, device: str = ""):
        self.base = f"{prefix}/{group}"
        self.head = f"{self.base}/watchlist"
        self.state = f"{self.base}/{device}/state"
        self.event = f"{self.base}/{device}/event"
        self.availability = f"{self.base}/{device}/availability"
        self.states = f"{self.base}/+/state"
        self.availabilities = f"{self.base}/+/availability"

    def chunk(self, version: int, index: int | str) -> str:
        return f"{self.head}/{version}/{index}"
