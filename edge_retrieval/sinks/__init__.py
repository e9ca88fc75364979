"""Sinks: where a decision goes once it is an event (stdout, webhook, MQTT, a command).

A sink acknowledges an event by returning from `deliver` and refuses it by raising; the
outbox (`outbox.py`) retries a refused event until it is acknowledged. Each sink's config is
a frozen dataclass documented per field; `build_sinks` turns `SinksConfig` into sinks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..errors import DeliveryError  # noqa: F401 (re-exported for the sinks)


@runtime_checkable
class Sink(Protocol):
    name: str  # stable across restarts: the outbox keys pending rows by it

    def deliver(self, payload: dict[str, Any]) -> None:
        """Hand over one event payload; return = acknowledged, raise = try again later."""

    def close(self) -> None:
        """Release connections; deliver is not called afterwards."""


@dataclass(frozen=True)
class WebhookSinkConfig:
    url: str = field(metadata={"doc": "http(s) URL that receives each event as a JSON POST; any 2xx is an ack"})
    timeout_s: float = field(default=5.0, metadata={"doc": "seconds to wait for the whole request before retrying"})
    headers: dict[str, str] = field(default_factory=dict,
                                    metadata={"doc": "extra request headers, e.g. Authorization"})


@dataclass(frozen=True)
class MqttSinkConfig:
    host: str = field(default="127.0.0.1", metadata={"doc": "MQTT broker host name or address"})
    port: int = field(default=1883, metadata={"doc": "MQTT broker TCP port"})
    username: str = field(default="", metadata={"doc": "broker user name; empty = anonymous"})
    password: str = field(default="", metadata={"doc": "broker password (used only with a user name)"})
    tls: bool = field(default=False, metadata={"doc": "connect with TLS, checking the broker against the system CAs"})
    topic_prefix: str = field(default="edge-retrieval",
                              metadata={"doc": "topics are <topic_prefix>/<device_id>/event and .../availability"})
    device_id: str = field(default="", metadata={"doc": "this device's id in topics; empty = the host name"})
    discovery_prefix: str = field(default="homeassistant",
                                  metadata={"doc": "Home Assistant discovery prefix; empty = no discovery messages"})
    qos: int = field(default=1, metadata={"doc": "QoS of event messages: 1 = acknowledged by the broker (PUBACK)"})
    keepalive_s: int = field(default=30, metadata={"doc": "seconds between keep-alive pings; the broker publishes "
                                                          "the Last Will (offline) after 1.5x this of silence"})
    timeout_s: float = field(default=5.0, metadata={"doc": "seconds to wait for the connection and the PUBACK"})


@dataclass(frozen=True)
class CommandSinkConfig:
    argv: list[str] = field(metadata={"doc": "program and arguments, run without a shell (use [\"sh\", \"-c\", "
                                             "\"...\"] for one); the event JSON is on stdin and in EDGE_EVENT_* "
                                             "variables; exit 0 is an ack"})
    timeout_s: float = field(default=10.0, metadata={"doc": "seconds before the command (and its children) is "
                                                             "killed and the event retried"})


@dataclass(frozen=True)
class SinksConfig:
    stdout: bool = field(default=False, metadata={"doc": "print each event as one JSON line on standard output"})
    webhook: WebhookSinkConfig | None = field(default=None, metadata={"doc": "POST each event to a URL"})
    mqtt: MqttSinkConfig | None = field(default=None,
                                        metadata={"doc": "publish each event to an MQTT broker (Home Assistant)"})
    command: CommandSinkConfig | None = field(default=None, metadata={"doc": "run a program for each event"})


@dataclass(frozen=True)
class SnapshotConfig:
    enabled: bool = field(default=False, metadata={"doc": "save a JPEG of the frame, match drawn on it, per event"})
    folder: str = field(default="snapshots", metadata={"doc": "folder of the snapshots (created if missing)"})
    max_count: int = field(default=1000, metadata={"doc": "keep at most this many snapshots (oldest go); 0 = no limit"})
    max_age_days: float = field(default=30.0, metadata={"doc": "delete snapshots older than this; 0 = no limit"})
    jpeg_quality: int = field(default=85, metadata={"doc": "JPEG quality, 1-100"})


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


__all__ = ["CommandSinkConfig", "DeliveryError", "MqttSinkConfig", "Sink", "SinksConfig", "SnapshotConfig",
           "WebhookSinkConfig", "build_sinks"]
