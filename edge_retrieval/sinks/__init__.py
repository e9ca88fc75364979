"""Sinks: where a decision goes once it is an event (stdout, webhook, MQTT, a command).

A sink acknowledges an event by returning from `deliver` and refuses it by raising; the
outbox (`outbox.py`) retries a refused event until it is acknowledged, except one refused
with `PermanentDeliveryError` (the receiver will never take it): that one is parked. Each sink's config is
a frozen dataclass documented per field; `build_sinks` turns `SinksConfig` into sinks.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigError, DeliveryError, PermanentDeliveryError  # noqa: F401 (re-exported for the sinks)

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@runtime_checkable
class Sink(Protocol):
    name: str  # stable across restarts: the outbox keys pending rows by it

    def deliver(self, payload: dict[str, Any]) -> None:
        """Hand over one event payload; return = acknowledged, raise = try again later
        (PermanentDeliveryError: never, park it)."""

    def close(self) -> None:
        """Release connections; deliver is not called afterwards."""


@dataclass(frozen=True)
class WebhookSinkConfig:
    url: str = field(
        metadata={
            "doc": "http(s) URL that receives each event as a JSON POST; any 2xx is an ack; a "
            "4xx other than 408 and 429 parks the event (not retried until `edge-"
            "retrieval events retry`)"
        }
    )
    timeout_s: float = field(default=5.0, metadata={"doc": "seconds to wait for the whole request before retrying"})
    headers: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "doc": "extra request headers, e.g. Authorization (never logged); "
            "user:password@ in the url becomes a Basic Authorization "
            "header"
        },
    )

    def validate(self, path: str = "sinks.webhook") -> None:
        """ConfigError naming the key for a URL, timeout or header the sink could not use."""
        url = urllib.parse.urlsplit(self.url)
        try:
            url.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError:
            url = url._replace(netloc="")
        if url.scheme not in ("http", "https") or not url.hostname or _CONTROL.search(self.url) or " " in self.url:
            raise ConfigError(f"{path}.url: {redact_url(self.url)!r} is not an http(s) URL")
        if not self.timeout_s > 0:
            raise ConfigError(f"{path}.timeout_s: must be positive, not {self.timeout_s}")
        for name, value in self.headers.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ConfigError(f"{path}.headers: {name!r} is not an HTTP header name")
            if _CONTROL.search(value.replace("\t", " ")) or not value.isascii() and not _latin1(value):
                raise ConfigError(
                    f"{path}.headers.{name}: a header value holds Latin-1 characters and no control characters"
                )


@dataclass(frozen=True)
class MqttSinkConfig:
    host: str = field(default="127.0.0.1", metadata={"doc": "MQTT broker host name or address"})
    port: int = field(default=1883, metadata={"doc": "MQTT broker TCP port"})
    username: str = field(default="", metadata={"doc": "broker user name; empty = anonymous"})
    password: str = field(default="", metadata={"doc": "broker password (used only with a user name)"})
    tls: bool = field(default=False, metadata={"doc": "connect with TLS, checking the broker against the system CAs"})
    topic_prefix: str = field(
        default="edge-retrieval", metadata={"doc": "topics are <topic_prefix>/<device_id>/event and .../availability"}
    )
    device_id: str = field(default="", metadata={"doc": "this device's id in topics; empty = the host name"})
    discovery_prefix: str = field(
        default="homeassistant", metadata={"doc": "Home Assistant discovery prefix; empty = no discovery messages"}
    )
    qos: int = field(default=1, metadata={"doc": "QoS of event messages: 1 = acknowledged by the broker (PUBACK)"})
    keepalive_s: int = field(
        default=30,
        metadata={
            "doc": "seconds between keep-alive pings; the broker publishes "
            "the Last Will (offline) after 1.5x this of silence"
        },
    )
    timeout_s: float = field(default=5.0, metadata={"doc": "seconds to wait for the connection and the PUBACK"})

    def validate(self, path: str = "sinks.mqtt") -> None:
        """ConfigError naming the key for a value the sink could not use (an empty device_id is the host name)."""
        for key in ("topic_prefix", "device_id", "discovery_prefix"):
            value = getattr(self, key)
            if key == "topic_prefix" or value:
                check_topic_part(value, f"{path}.{key}")
        if self.qos not in (0, 1, 2):
            raise ConfigError(f"{path}.qos: must be 0, 1 or 2, not {self.qos}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"{path}.port: {self.port} is not a TCP port")
        if not self.host or _CONTROL.search(self.host):
            raise ConfigError(f"{path}.host: {self.host!r} is not a host name or address")
        if not self.timeout_s > 0 or self.keepalive_s < 5:
            raise ConfigError(f"{path}: timeout_s must be positive and keepalive_s at least 5")


def check_topic_part(value: str, key: str) -> None:
    if not value or any(c in value for c in "+#\0") or value.startswith("/") or value.endswith("/"):
        raise ConfigError(f"{key}: {value!r} is not a usable MQTT topic level")


@dataclass(frozen=True)
class CommandSinkConfig:
    argv: list[str] = field(
        metadata={
            "doc": "program and arguments, run without a shell (use [\"sh\", \"-c\", "
            "\"...\"] for one); the event JSON is on stdin and in EDGE_EVENT_* "
            "variables; exit 0 is an ack"
        }
    )
    timeout_s: float = field(
        default=10.0, metadata={"doc": "seconds before the command (and its children) is killed and the event retried"}
    )
    permanent_exit_codes: list[int] = field(
        default_factory=list,
        metadata={
            "doc": "exit statuses that mean \"never take this event\": "
            "it is parked, not retried, until `edge-retrieval "
            "events retry`; any other non-zero status is retried"
        },
    )

    def validate(self, path: str = "sinks.command") -> None:
        if not self.argv or not all(isinstance(a, str) and a and "\0" not in a for a in self.argv):
            raise ConfigError(f"{path}.argv: must be a non-empty list of non-empty strings")
        if not self.timeout_s > 0:
            raise ConfigError(f"{path}.timeout_s: must be positive, not {self.timeout_s}")
        for code in self.permanent_exit_codes:
            if isinstance(code, bool) or not isinstance(code, int) or not 1 <= code <= 255:
                raise ConfigError(f"{path}.permanent_exit_codes: {code!r} is not an exit status 1-255")


@dataclass(frozen=True)
class SinksConfig:
    stdout: bool = field(default=False, metadata={"doc": "print each event as one JSON line on standard output"})
    webhook: WebhookSinkConfig | None = field(default=None, metadata={"doc": "POST each event to a URL"})
    mqtt: MqttSinkConfig | None = field(
        default=None, metadata={"doc": "publish each event to an MQTT broker (Home Assistant)"}
    )
    command: CommandSinkConfig | None = field(default=None, metadata={"doc": "run a program for each event"})


@dataclass(frozen=True)
class SnapshotConfig:
    enabled: bool = field(default=False, metadata={"doc": "save a JPEG of the frame, match drawn on it, per event"})
    folder: str = field(default="snapshots", metadata={"doc": "folder of the snapshots (created if missing)"})
    max_count: int = field(
        default=1000, metadata={"doc": "keep at most this many snapshots (oldest go); 0 = no limit", "min": 0}
    )
    max_age_days: float = field(
        default=30.0, metadata={"doc": "delete snapshots older than this; 0 = no limit", "min": 0}
    )
    jpeg_quality: int = field(default=85, metadata={"doc": "JPEG quality, 1-100", "min": 1, "max": 100})
    keep: str = field(
        default="all",
        metadata={
            "doc": "which events keep a snapshot: all, or matches (no frame of an unknown person or item is "
            "kept; watching people, faces no one was identified in are pixelated in a match's)",
            "choices": ("all", "matches"),
        },
    )


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
        return True
    except UnicodeEncodeError:
        return False


def redact_url(url: str) -> str:
    """The URL as it may appear in a log: no password, no query string values, no fragment."""
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        if "@" in parts.netloc:
            netloc = "***@" + netloc
        query = "&".join(f"{k}=***" for k, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        if parts.query and not query:
            query = "***"
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        return "<an unparsable URL>"


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


def redact_urls(text: str) -> str:
    """`text` (an `exec:` command line, a program's stderr line) with each URL in it redacted."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group()), text)


def build_sinks(config: SinksConfig) -> list[Sink]:
    """The configured sinks, in a fixed order (stdout, webhook, command, mqtt). Raises ConfigError."""
    sinks: list[Sink] = []
    try:
        if config.stdout:
            from .stdout import StdoutSink

            sinks.append(StdoutSink())
        if config.webhook is not None:
            from .webhook import WebhookSink

            sinks.append(WebhookSink(config.webhook))
        if config.command is not None:
            from .command import CommandSink

            sinks.append(CommandSink(config.command))
        if config.mqtt is not None:  # last: it starts connecting at once
            from .mqtt import MqttSink

            sinks.append(MqttSink(config.mqtt))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks


__all__ = [
    "CommandSinkConfig",
    "DeliveryError",
    "MqttSinkConfig",
    "PermanentDeliveryError",
    "Sink",
    "SinksConfig",
    "SnapshotConfig",
    "WebhookSinkConfig",
    "build_sinks",
    "redact_url",
    "redact_urls",
]
