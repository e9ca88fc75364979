"""The MQTT sink (paho-mqtt 2.x): events, retained availability and Home Assistant discovery.

Topics, with `base = <topic_prefix>/<device_id>`:

- `base/event`: each event's JSON, QoS 1 by default; the broker's PUBACK is the ack.
- `base/availability`: `online` (retained) once connected, `offline` (retained) on close and,
  as the Last Will, when the connection dies without a goodbye.
- `<discovery_prefix>/{sensor,binary_sensor,event}/<node>/<object>/config` (retained): a sensor
  of the last label, one of the last score, a binary sensor "match" (on for 10 s after a match)
  and an event entity (event types `match` and `unknown`), all reading `base/event`. Each names
  its entity with `default_entity_id` (`<component>.<node>_<object>`, lower-case), which
  replaces `object_id` (deprecated in Home Assistant 2025.10, removed in 2026.4).

The client connects in the background and reconnects by itself; `deliver` waits at most
`timeout_s` for a connection and then for the PUBACK. A message that paho could not get
acknowledged in time stays in paho's queue (it is resent on reconnect), so a retry of the
same event waits for that message instead of publishing a second copy.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from typing import Any

import paho.mqtt.client as mqtt

from ..errors import ConfigError
from . import DeliveryError, MqttSinkConfig, check_topic_part

_OFF_DELAY_S = 10


def entity_slug(text: str) -> str:
    """`text` as the object part of a Home Assistant entity id (lower-case a-z, 0-9, single `_`)."""
    return re.sub(r"_+", "_", re.sub(r"[^a-z0-9]", "_", text.lower())).strip("_") or "edge_retrieval"


class MqttSink:
    name = "mqtt"

    def __init__(self, config: MqttSinkConfig):
        config.validate("sinks.mqtt")
        device_id = config.device_id or socket.gethostname()
        check_topic_part(device_id, "sinks.mqtt.device_id")
        self.config = config
        self.device_id = device_id
        self.node_id = re.sub(r"[^A-Za-z0-9_-]", "_", device_id)
        base = f"{config.topic_prefix}/{device_id}"
        self.event_topic = f"{base}/event"
        self.availability_topic = f"{base}/availability"
        self._connected = threading.Event()
        self._refused: str | None = None
        self._unacked: dict[Any, mqtt.MQTTMessageInfo] = {}  # event_id -> message paho still holds
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edge-retrieval-{self.node_id}")
        if config.username:
            client.username_pw_set(config.username, config.password or None)
        if config.tls:
            client.tls_set()
        client.will_set(self.availability_topic, "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self._client = client
        try:
            client.connect_async(config.host, config.port, keepalive=config.keepalive_s)
        except (OSError, ValueError) as e:
            raise ConfigError(f"sinks.mqtt.host: {config.host}:{config.port}: {e}") from None
        client.loop_start()

    # -- connection ------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
            return
        self._refused = None
        for topic, config in self.discovery_configs().items():
            client.publish(topic, json.dumps(config), qos=1, retain=True)
        client.publish(self.availability_topic, "online", qos=1, retain=True)
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()

    def discovery_configs(self) -> dict[str, dict[str, Any]]:
        """Home Assistant discovery topic -> config (empty when discovery_prefix is empty)."""
        prefix = self.config.discovery_prefix
        if not prefix:
            return {}
        common = {
            "state_topic": self.event_topic,
            "availability_topic": self.availability_topic,
            "device": {
                "identifiers": [f"edge_retrieval_{self.node_id}"],
                "name": f"Watchlist {self.device_id}",
                "manufacturer": "edge-retrieval",
                "model": "watchlist camera",
            },
        }

        def entity(domain: str, object_id: str, name: str, **extra: Any) -> tuple[str, dict[str, Any]]:
            # default_entity_id (<domain>.<object id>) replaces object_id, deprecated by HA 2025.10
            config = {
                "name": name,
                "unique_id": f"edge_retrieval_{self.node_id}_{object_id}",
                "default_entity_id": f"{domain}.{entity_slug(self.node_id + '_' + object_id)}",
                **common,
                **extra,
            }
            return f"{prefix}/{domain}/{self.node_id}/{object_id}/config", config

        return dict(
            [
                entity(
                    "sensor",
                    "last_label",
                    "Last label",
                    icon="mdi:account-search",
                    json_attributes_topic=self.event_topic,
                    value_template="{{ value_json.label if value_json.label else value_json.kind }}",
                ),
                entity(
                    "sensor",
                    "last_score",
                    "Last score",
                    icon="mdi:percent",
                    state_class="measurement",
                    value_template="{{ value_json.score | round(3) }}",
                ),
                entity(
                    "binary_sensor",
                    "match",
                    "Match",
                    off_delay=_OFF_DELAY_S,
                    value_template="{{ 'ON' if value_json.kind == 'match' else 'OFF' }}",
                ),
                entity(
                    "event",
                    "watchlist",
                    "Watchlist",
                    event_types=["match", "unknown"],
                    value_template="{{ {'event_type': value_json.kind, 'label': value_json.label, "
                    "'score': value_json.score, 'event_id': value_json.event_id} | to_json }}",
                ),
            ]
        )

    # -- delivery --------------------------------------------------------------
    def deliver(self, payload: dict[str, Any]) -> None:
        timeout = self.config.timeout_s
        where = f"mqtt://{self.config.host}:{self.config.port}"
        if not self._connected.wait(timeout):
            raise DeliveryError(f"{where}: " + (f"refused ({self._refused})" if self._refused else "not connected"))
        key = payload.get("event_id")
        info = self._unacked.pop(key, None)
        if info is None or info.rc != mqtt.MQTT_ERR_SUCCESS:
            info = self._client.publish(self.event_topic, json.dumps(payload), qos=self.config.qos)
        try:
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                info.wait_for_publish(timeout)
            published = info.is_published()
        except (RuntimeError, ValueError):
            published = False
        if not published:
            if key is not None:
                self._unacked[key] = info
            raise DeliveryError(f"{where}: no PUBACK for {self.event_topic} within {timeout:g} s")

    def close(self) -> None:
        """Say `offline` (retained) and disconnect, waiting at most timeout_s."""
        if self._connected.is_set():
            info = self._client.publish(self.availability_topic, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(self.config.timeout_s)
            except (RuntimeError, ValueError):
                pass
        self._client.disconnect()
        self._client.loop_stop()
