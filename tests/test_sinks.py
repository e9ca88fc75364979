"""Sinks on real parts: stdout, a real HTTP server, a real script, a real Mosquitto broker."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edge_retrieval.errors import ConfigError
from edge_retrieval.sinks import (
    CommandSinkConfig,
    DeliveryError,
    MqttSinkConfig,
    PermanentDeliveryError,
    Sink,
    SinksConfig,
    SnapshotConfig,
    WebhookSinkConfig,
    build_sinks,
)
from edge_retrieval.sinks.command import CommandSink
from edge_retrieval.sinks.stdout import StdoutSink
from edge_retrieval.sinks.webhook import WebhookSink

_TIMING_SLACK_S = 1.0  # a shared 2-core machine: how late a timed-out call may return
_DEADLINE_S = 5.0  # how long to poll for something that should happen at once

REPO = Path(__file__).resolve().parent.parent
MQTT_PORT = int(os.environ.get("MQTT_PORT", "1883"))


def wait_until(predicate, timeout: float = _DEADLINE_S, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def payload(event_id: int, label: str | None = "cat", score: float = 0.9) -> dict:
    return {
        "event_id": event_id,
        "time": 1_700_000_000.0 + event_id,
        "source": "cam0",
        "kind": "match" if label else "unknown",
        "label": label,
        "item_id": 1 if label else None,
        "score": score,
        "snapshot": None,
        "metadata": {"owner": "me"},
        "details": {},
        "box": None,
        "polygon": None,
    }


class Receiver:
    """A real HTTP server on 127.0.0.1 that keeps the JSON it was POSTed while `status` is 2xx."""

    def __init__(self, port: int = 0, status: int = 200, delay_s: float = 0.0):
        self.status, self.delay_s = status, delay_s
        self.received: list[dict] = []
        self.headers: list[dict] = []
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests += 1
                time.sleep(receiver.delay_s)
                status = receiver.status
                if 200 <= status < 300:
                    receiver.received.append(json.loads(body))
                    receiver.headers.append(dict(self.headers))
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def ids(self) -> list[int]:
        return [p["event_id"] for p in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


# -- config ----------------------------------------------------------------------
@pytest.mark.parametrize("cls", [WebhookSinkConfig, MqttSinkConfig, CommandSinkConfig, SinksConfig, SnapshotConfig])
def test_every_config_field_is_documented_and_frozen(cls):
    for f in dataclasses.fields(cls):
        assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no doc"
    assert cls.__dataclass_params__.frozen


def test_build_sinks_in_fixed_order_and_config_errors_name_the_key(receiver):
    sinks = build_sinks(
        SinksConfig(stdout=True, webhook=WebhookSinkConfig(url=receiver.url), command=CommandSinkConfig(argv=["true"]))
    )
    assert [s.name for s in sinks] == ["stdout", "webhook", "command"]
    assert all(isinstance(s, Sink) for s in sinks)
    assert build_sinks(SinksConfig()) == []
    with pytest.raises(ConfigError, match="sinks.webhook.url"):
        build_sinks(SinksConfig(webhook=WebhookSinkConfig(url="ftp://example.org/x")))
    with pytest.raises(ConfigError, match="sinks.command.argv"):
        build_sinks(SinksConfig(command=CommandSinkConfig(argv=[])))
    with pytest.raises(ConfigError, match="sinks.mqtt.qos"):
        build_sinks(SinksConfig(mqtt=MqttSinkConfig(qos=3)))
    with pytest.raises(ConfigError, match="sinks.mqtt.device_id"):
        build_sinks(SinksConfig(mqtt=MqttSinkConfig(device_id="a/#")))


# -- stdout ----------------------------------------------------------------------
def test_stdout_writes_one_json_line_per_event(capsys):
    sink = StdoutSink()
    sink.deliver(payload(1))
    sink.deliver(payload(2, label=None, score=0.2))
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [payload(1), payload(2, label=None, score=0.2)]
    stream = io.StringIO()
    StdoutSink(stream).deliver(payload(3, label="Zoë"))
    assert json.loads(stream.getvalue())["label"] == "Zoë"


# -- webhook ---------------------------------------------------------------------
def test_webhook_posts_json_with_headers(receiver):
    sink = WebhookSink(WebhookSinkConfig(url=receiver.url, headers={"Authorization": "Bearer s3cret"}))
    sink.deliver(payload(7))
    assert receiver.received == [payload(7)]
    headers = {k.lower(): v for k, v in receiver.headers[0].items()}
    assert headers["content-type"] == "application/json"
    assert headers["authorization"] == "Bearer s3cret"
    assert headers["idempotency-key"] == "7"


@pytest.mark.parametrize(
    "status, permanent",
    [
        (503, False),
        (500, False),
        (302, False),
        (408, False),
        (429, False),
        (404, True),
        (400, True),
        (401, True),
        (422, True),
    ],
)
def test_webhook_non_2xx_is_not_an_ack_and_4xx_is_for_good(receiver, status, permanent):
    receiver.status = status
    with pytest.raises(DeliveryError, match=f"HTTP {status}") as refused:
        WebhookSink(WebhookSinkConfig(url=receiver.url)).deliver(payload(1))
    assert isinstance(refused.value, PermanentDeliveryError) == permanent  # 408, 429: worth another try
    assert receiver.requests == 1 and receiver.received == []  # (a 302 is not followed)


def test_webhook_down_or_slow_fails_within_its_timeout():
    with pytest.raises(DeliveryError, match="refused"):
        WebhookSink(WebhookSinkConfig(url=f"http://127.0.0.1:{free_port()}/hook")).deliver(payload(1))
    slow = Receiver(delay_s=2.0)
    try:
        start = time.monotonic()
        with pytest.raises(DeliveryError, match="timed out"):
            WebhookSink(WebhookSinkConfig(url=slow.url, timeout_s=0.2)).deliver(payload(1))
        assert time.monotonic() - start < 0.2 + _TIMING_SLACK_S
    finally:
        slow.close()


# -- command ---------------------------------------------------------------------
HOOK = """#!/bin/sh
# A real alert script: keeps the event JSON (stdin) and a few of its variables.
out="$1"
cat > "$out/$EDGE_EVENT_ID.json"
printf '%s|%s|%s|%s\\n' "$EDGE_EVENT_KIND" "$EDGE_EVENT_LABEL" "$EDGE_EVENT_SCORE" "$EDGE_EVENT_SNAPSHOT" \\
    >> "$out/env.txt"
[ "$EDGE_EVENT_LABEL" = "fail" ] && { echo "no such contact: fail" >&2; exit 3; }
exit 0
"""


def test_command_gets_the_event_on_stdin_and_in_env(tmp_path):
    script = tmp_path / "hook.sh"
    script.write_text(HOOK)
    script.chmod(0o755)
    sink = CommandSink(CommandSinkConfig(argv=[str(script), str(tmp_path)]))
    sink.deliver(payload(4))
    sink.deliver(payload(5, label=None, score=0.25))
    assert json.loads((tmp_path / "4.json").read_text()) == payload(4)
    assert (tmp_path / "env.txt").read_text().splitlines() == ["match|cat|0.9|", "unknown||0.25|"]
    with pytest.raises(DeliveryError, match="exit status 3: no such contact: fail") as refused:
        sink.deliver(payload(6, label="fail"))
    assert not isinstance(refused.value, PermanentDeliveryError)  # retried unless configured otherwise
    sink = CommandSink(CommandSinkConfig(argv=[str(script), str(tmp_path)], permanent_exit_codes=[3, 64]))
    with pytest.raises(PermanentDeliveryError, match="exit status 3: no such contact: fail"):
        sink.deliver(payload(6, label="fail"))
    with pytest.raises(ConfigError, match=r"sinks.command.permanent_exit_codes: 0 is not an exit status"):
        CommandSink(CommandSinkConfig(argv=["true"], permanent_exit_codes=[0]))


def test_command_timeout_kills_the_whole_group_and_missing_program_fails(tmp_path):
    sink = CommandSink(CommandSinkConfig(argv=["sh", "-c", "sleep 30 & sleep 30; wait"], timeout_s=0.3))
    start = time.monotonic()
    with pytest.raises(DeliveryError, match="killed"):
        sink.deliver(payload(1))
    assert time.monotonic() - start < 0.3 + _TIMING_SLACK_S
    with pytest.raises(DeliveryError, match="cannot run"):
        CommandSink(CommandSinkConfig(argv=[str(tmp_path / "missing")])).deliver(payload(1))


# -- MQTT ------------------------------------------------------------------------
def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def mosquitto(port: int, folder: Path) -> subprocess.Popen:
    """Start a mosquitto of our own on 127.0.0.1:port (skip the test if there is no binary)."""
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None)
    if binary is None:
        pytest.skip(
            f"no MQTT broker on 127.0.0.1:{MQTT_PORT} and no mosquitto binary "
            "(apt-get install mosquitto, or run .ci/services.sh)"
        )
    conf = folder / f"mosquitto-{port}.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    conf.chmod(0o644)
    process = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_until(lambda: _answers(port)):
        process.kill()
        pytest.fail(f"mosquitto did not start on 127.0.0.1:{port}")
    return process


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """The MQTT broker's port: 127.0.0.1:$MQTT_PORT (.ci/services.sh) or a mosquitto of our own."""
    if _answers(MQTT_PORT):
        yield MQTT_PORT
        return
    port = free_port()
    process = mosquitto(port, tmp_path_factory.mktemp("mosquitto"))
    try:
        yield port
    finally:
        process.terminate()
        process.wait(5)


class Subscriber:
    """A real paho client that keeps (topic, payload, retain) of everything it receives."""

    def __init__(self, port: int, *topics: str):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{uuid.uuid4().hex[:8]}")
        subscribed = threading.Event()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload, bool(m.retain)))
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe([(t, 1) for t in topics])
        assert subscribed.wait(_DEADLINE_S)

    def on(self, topic: str) -> list[tuple[bytes, bool]]:
        return [(p, r) for t, p, r in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _clear_retained(port: int, topics) -> None:
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    for topic in topics:
        client.publish(topic, b"", qos=1, retain=True).wait_for_publish(_DEADLINE_S)
    client.disconnect()
    client.loop_stop()


def test_mqtt_events_availability_and_discovery(broker):
    from edge_retrieval.sinks.mqtt import MqttSink

    device = f"test-{uuid.uuid4().hex[:8]}"
    live = Subscriber(broker, f"edge-retrieval/{device}/#")
    sink = MqttSink(MqttSinkConfig(port=broker, device_id=device, timeout_s=_DEADLINE_S))
    retained = list(sink.discovery_configs()) + [sink.availability_topic]
    try:
        for event_id in (1, 2, 3):
            sink.deliver(payload(event_id))  # returns = PUBACK received
        assert wait_until(lambda: len(live.on(sink.event_topic)) == 3)
        assert [json.loads(p) for p, _ in live.on(sink.event_topic)] == [payload(1), payload(2), payload(3)]
        assert live.on(sink.availability_topic)[0][0] == b"online"

        late = Subscriber(broker, f"edge-retrieval/{device}/#", f"homeassistant/+/{device}/+/config")
        assert wait_until(lambda: len(late.messages) == 5)  # retained: availability + 4 discovery configs
        late.close()
        assert late.on(sink.availability_topic) == [(b"online", True)]
        assert late.on(sink.event_topic) == []  # events are not retained
        configs = {t: json.loads(p) for t, p, r in late.messages if t.endswith("/config") and r}
        assert set(configs) == {
            f"homeassistant/{c}/{device}/{o}/config"
            for c, o in [
                ("sensor", "last_label"),
                ("sensor", "last_score"),
                ("binary_sensor", "match"),
                ("event", "watchlist"),
            ]
        }
        for config in configs.values():
            assert config["state_topic"] == sink.event_topic
            assert config["availability_topic"] == sink.availability_topic
            assert config["unique_id"].startswith("edge_retrieval_")
        assert configs[f"homeassistant/event/{device}/watchlist/config"]["event_types"] == ["match", "unknown"]
    finally:
        sink.close()
        live.close()
    after = Subscriber(broker, sink.availability_topic)
    assert wait_until(lambda: after.messages)
    after.close()
    assert after.on(sink.availability_topic) == [(b"offline", True)]
    _clear_retained(broker, retained)


_ENTITY_ID = re.compile(r"(?!_)[a-z0-9_]+(?<!_)\.(?!_)(?!.*__)[a-z0-9_]+(?<!_)")  # Home Assistant's entity id


def test_mqtt_discovery_configs_name_entities_by_default_entity_id(broker):
    from edge_retrieval.sinks.mqtt import MqttSink

    device = f"Test-{uuid.uuid4().hex[:8]}"  # upper case and '-': not allowed in an entity id
    sub = Subscriber(broker, "homeassistant/#")
    sink = MqttSink(MqttSinkConfig(port=broker, device_id=device, timeout_s=_DEADLINE_S))
    try:
        sink.deliver(payload(1))  # connected, and the discovery configs (published first) are out
        assert wait_until(lambda: len([m for m in sub.messages if f"/{device}/" in m[0]]) == 4)
    finally:
        sink.close()
        sub.close()
    ours = [(t, p) for t, p, _ in sub.messages if f"/{device}/" in t]
    unique_ids, entity_ids = set(), set()
    for topic, body in ours:
        prefix, component, node, object_id, last = topic.split("/")
        assert (prefix, node, last) == ("homeassistant", device, "config")
        config = json.loads(body)
        assert "object_id" not in config  # deprecated in HA 2025.10, gone in 2026.4
        assert _ENTITY_ID.fullmatch(config["default_entity_id"]), config["default_entity_id"]
        assert config["default_entity_id"].split(".")[0] == component
        assert config["default_entity_id"] == f"{component}.{device.lower().replace('-', '_')}_{object_id}"
        assert config["unique_id"]
        unique_ids.add(config["unique_id"])
        entity_ids.add(config["default_entity_id"])
    assert len(unique_ids) == len(entity_ids) == 4
    _clear_retained(broker, [t for t, _ in ours] + [sink.availability_topic])


LAST_WILL_CHILD = """
import sys, time
from edge_retrieval.sinks import MqttSinkConfig
from edge_retrieval.sinks.mqtt import MqttSink
sink = MqttSink(MqttSinkConfig(port=int(sys.argv[1]), device_id=sys.argv[2], discovery_prefix="", timeout_s=5))
sink.deliver({"event_id": 1})
print("ready", flush=True)
time.sleep(60)
"""


def test_mqtt_last_will_says_offline_when_the_process_dies(broker):
    device = f"test-{uuid.uuid4().hex[:8]}"
    availability = f"edge-retrieval/{device}/availability"
    sub = Subscriber(broker, availability)
    child = subprocess.Popen(
        [sys.executable, "-c", LAST_WILL_CHILD, str(broker), device], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        assert wait_until(lambda: sub.on(availability))
        child.kill()  # no DISCONNECT: the broker must publish the Last Will
        child.wait(5)
        assert wait_until(lambda: len(sub.on(availability)) == 2)
        assert [p for p, _ in sub.on(availability)] == [b"online", b"offline"]
    finally:
        child.kill()
        sub.close()
    _clear_retained(broker, [availability])


def test_mqtt_broker_down_is_not_an_ack():
    from edge_retrieval.sinks.mqtt import MqttSink

    sink = MqttSink(MqttSinkConfig(port=free_port(), device_id="nobody", timeout_s=0.2))
    try:
        start = time.monotonic()
        with pytest.raises(DeliveryError, match="not connected"):
            sink.deliver(payload(1))
        assert time.monotonic() - start < 0.2 + _TIMING_SLACK_S
    finally:
        sink.close()
