"""The fleet on the wire: the MQTT client, the signed head, `publish` and `status`."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt

from ..errors import EdgeRetrievalError, one_line
from ..storage import transfer
from ..storage.gallery import Gallery
from . import FleetConfig, Topics

FORMAT = 1
CHUNK_BYTES = 256 * 1024  # under every broker's default message limit; 80 messages for a 20 MB watchlist
MAX_HEAD_BYTES = 1 << 20
QUIET_S = 0.3  # after the SUBACK, retained messages have all arrived once none came for this long
_HEX64 = re.compile(r"[0-9a-f]{64}")


class FleetError(EdgeRetrievalError):
    """The broker cannot be reached, or a publish was not acknowledged."""


class Refused(EdgeRetrievalError):
    """A version a follower will not apply (unsigned, tampered, older, oversized, another model)."""


def where(config: FleetConfig) -> str:
    return f"mqtt{'s' if config.tls else ''}://{config.host}:{config.port}"


def client(config: FleetConfig, client_id: str, will: tuple[str, str] | None = None) -> mqtt.Client:
    """A paho client with the broker options of `config` (as the MQTT sink's), not yet connected."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    if config.username:
        c.username_pw_set(config.username, config.password or None)
    if config.tls:
        c.tls_set()
    if will is not None:
        c.will_set(will[0], will[1], qos=1, retain=True)
    c.reconnect_delay_set(min_delay=1, max_delay=30)
    return c


# -- the head ---------------------------------------------------------------------------------
def canonical(head: dict[str, Any]) -> bytes:
    """What the signature covers: the head without its signature, as sorted compact JSON."""
    body = {k: v for k, v in head.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def sign(head: dict[str, Any], key: bytes) -> dict[str, Any]:
    return {**head, "signature": hmac.new(key, canonical(head), hashlib.sha256).hexdigest()}


def read_head(payload: bytes, key: bytes, group: str) -> dict[str, Any]:
    """The head, its signature verified and its fields checked; Refused saying why otherwise."""
    if len(payload) > MAX_HEAD_BYTES:
        raise Refused(f"a head of {len(payload)} bytes, more than {MAX_HEAD_BYTES}")
    try:
        head = json.loads(payload, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise Refused("a head that is not JSON") from None
    if not isinstance(head, dict):
        raise Refused("a head that is not a JSON object")
    signature = head.get("signature")
    if not isinstance(signature, str):
        raise Refused("an unsigned version")
    try:
        expected = hmac.new(key, canonical(head), hashlib.sha256).hexdigest()
    except ValueError:
        raise Refused("a head that cannot be signed (NaN)") from None
    if not hmac.compare_digest(signature, expected):
        raise Refused(
            f"version {head.get('version')!r}: its signature does not match the fleet key (tampered, or another key)"
        )

    def wrong(field: str) -> Refused:
        return Refused(f"version {head.get('version')!r}: field {field!r} is malformed")

    if head.get("format") != FORMAT:
        raise Refused(f"head format {head.get('format')!r}, this program reads {FORMAT}")
    if head.get("group") != group:
        raise Refused(f"version {head.get('version')!r} of group {head.get('group')!r}, not {group!r}")
    for field in ("version", "size", "chunk_size", "items"):
        value = head.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if field != "items" else 0):
            raise wrong(field)
    if not isinstance(head.get("sha256"), str) or not _HEX64.fullmatch(head["sha256"]):
        raise wrong("sha256")
    chunks = head.get("chunks")
    if (
        not isinstance(chunks, list)
        or len(chunks) != math.ceil(head["size"] / head["chunk_size"])
        or not all(isinstance(c, str) and _HEX64.fullmatch(c) for c in chunks)
    ):
        raise wrong("chunks")
    model = head.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("model_sha256"), str):
        raise wrong("model")
    return head


def _no_constant(name: str) -> Any:
    raise ValueError(name)


# -- a short-lived connection: publish, status ----------------------------------------------
class Connection:
    """A connected client that keeps what it receives (topic → latest payload), for commands."""

    def __init__(self, config: FleetConfig, role: str):
        self.config = config
        self.messages: dict[str, bytes] = {}
        self._last = time.monotonic()
        self._connected, self._subscribed = threading.Event(), threading.Event()
        self._refused: str | None = None
        self.client = client(config, f"edge-retrieval-{role}-{uuid.uuid4().hex[:12]}")
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        try:
            self.client.connect_async(config.host, config.port, keepalive=config.keepalive_s)
        except (OSError, ValueError) as e:
            raise FleetError(f"{where(config)}: {one_line(e)}") from None
        self.client.loop_start()
        if not self._connected.wait(config.timeout_s):
            self.close()
            state = f"refused ({self._refused})" if self._refused else f"no answer within {config.timeout_s:g} s"
            raise FleetError(f"{where(config)}: {state}")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
        else:
            self._connected.set()

    def _on_message(self, client, userdata, message) -> None:
        self.messages[message.topic] = message.payload
        self._last = time.monotonic()

    def retained(self, *topics: str) -> dict[str, bytes]:
        """What the broker retains on these topics (filters): subscribe, then wait for quiet."""
        self._subscribed.clear()
        self.client.subscribe([(t, 1) for t in topics])
        if not self._subscribed.wait(self.config.timeout_s):
            raise FleetError(f"{where(self.config)}: no SUBACK within {self.config.timeout_s:g} s")
        deadline = time.monotonic() + self.config.timeout_s
        self._last = time.monotonic()
        while time.monotonic() - self._last < QUIET_S and time.monotonic() < deadline:
            time.sleep(0.05)
        return dict(self.messages)

    def publish_all(self, messages: list[tuple[str, bytes]], on_sent: Callable[[int], None] | None = None) -> None:
        """Publish retained QoS 1 messages; return once the broker acknowledged every one."""
        infos = []
        for topic, payload in messages:
            info = self.client.publish(topic, payload, qos=1, retain=True)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise FleetError(f"{where(self.config)}: cannot publish {topic} ({mqtt.error_string(info.rc)})")
            infos.append(info)
        for i, info in enumerate(infos):
            try:
                info.wait_for_publish(self.config.timeout_s)
            except (RuntimeError, ValueError):
                pass
            if not info.is_published():
                raise FleetError(
                    f"{where(self.config)}: no PUBACK for {messages[i][0]} within {self.config.timeout_s:g} s"
                )
            if on_sent is not None:
                on_sent(i)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _version_of(payload: bytes) -> tuple[int, int]:
    """(version, chunks) a retained head or state claims (0, 0 if none): only to number the next version."""
    try:
        data = json.loads(payload)
        version = data.get("version") if isinstance(data, dict) else None
        chunks = data.get("chunks") if isinstance(data, dict) else None
        return (version if isinstance(version, int) and not isinstance(version, bool) else 0), (
            len(chunks) if isinstance(chunks, list) else 0
        )
    except (ValueError, RecursionError):
        return 0, 0


def publish(
    config: FleetConfig,
    gallery_path: str | Path,
    key: bytes,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    version: int | None = None,
    on_sent: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Publish the gallery to `config.group` as a new version; the signed head (its chunk
    digests left out) once the broker acknowledged everything. The version is one more than the
    newest the group's head or any device's state says (or `version`, for tests)."""
    if not config.group:
        raise FleetError("no group given (--group, or fleet.group in the config)")
    topics = Topics(config.topic_prefix, config.group)
    with tempfile.TemporaryDirectory(prefix="edge-retrieval-fleet-") as tmp:
        path = Path(tmp) / "watchlist.db"
        with Gallery(gallery_path, create=False) as gallery:
            gallery.export(path)
        src = transfer.open_import(path)
        try:
            manifest = transfer.read_manifest(src, path)
        finally:
            src.close()
        data = path.read_bytes()
    items = manifest["tables"]["items"]["rows"]
    if not items or "model_sha256" not in manifest["model"]:
        raise FleetError(f"{gallery_path}: the gallery is empty; nothing to publish")
    if len(data) > config.max_payload_bytes:
        raise FleetError(
            f"{gallery_path}: the export is {len(data) / (1 << 20):.1f} MB, more than max_payload_mb "
            f"({config.max_payload_mb:g}); followers would refuse it"
        )
    chunks = [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]
    connection = Connection(config, "publish")
    try:
        seen = connection.retained(topics.head, topics.states)
        previous, previous_chunks = _version_of(seen.get(topics.head, b""))
        newest = max([previous] + [_version_of(p)[0] for t, p in seen.items() if t != topics.head])
        version = version or newest + 1
        head = sign(
            {
                "format": FORMAT,
                "group": config.group,
                "version": version,
                "created": time.time(),
                "model": manifest["model"],
                "items": items,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "chunk_size": chunk_bytes,
                "chunks": [hashlib.sha256(c).hexdigest() for c in chunks],
            },
            key,
        )
        connection.publish_all([(topics.chunk(version, i), c) for i, c in enumerate(chunks)], on_sent)
        connection.publish_all([(topics.head, json.dumps(head).encode())])
        if previous and previous != version:  # the old version's chunks: nobody needs them now
            connection.publish_all([(topics.chunk(previous, i), b"") for i in range(previous_chunks)])
    finally:
        connection.close()
    return {k: v for k, v in head.items() if k != "chunks"} | {"chunks": len(chunks)}


def status(config: FleetConfig) -> dict[str, Any]:
    """{"version": the group's head version (None), "devices": [each device's retained state,
    with "online"]} sorted by device."""
    topics = Topics(config.topic_prefix, config.group)
    connection = Connection(config, "status")
    try:
        seen = connection.retained(topics.head, topics.states, topics.availabilities)
    finally:
        connection.close()
    devices: dict[str, dict[str, Any]] = {}
    for topic, payload in seen.items():
        name, _, kind = topic[len(topics.base) + 1 :].rpartition("/")
        if not payload or kind not in ("state", "availability") or "/" in name:
            continue
        entry = devices.setdefault(name, {"device": name})
        if kind == "availability":
            entry["online"] = payload == b"online"
            continue
        try:
            state = json.loads(payload)
        except (ValueError, RecursionError):
            state = None
        if isinstance(state, dict):
            entry.update({k: v for k, v in state.items() if k != "device"})
    version, _ = _version_of(seen.get(topics.head, b""))
    return {"group": config.group, "version": version or None, "devices": [devices[k] for k in sorted(devices)]}
