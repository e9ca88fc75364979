"""The fleet on real parts: a real Mosquitto, real galleries, the real model, running services."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner

from edge_retrieval.cli import cli
from edge_retrieval.config import Config, DecisionConfig, GalleryConfig, ServiceConfig, SourceConfig
from edge_retrieval.demo import photo
from edge_retrieval.enroll import enroll
from edge_retrieval.errors import ConfigError
from edge_retrieval.fleet import FleetConfig, Topics, load_key
from edge_retrieval.fleet.follower import Follower
from edge_retrieval.fleet.wire import FleetError, publish, sign
from edge_retrieval.service.daemon import Daemon
from edge_retrieval.service.systemd import Notifier
from edge_retrieval.storage.gallery import Gallery

MQTT_PORT = int(os.environ.get("MQTT_PORT", "1883"))
DEADLINE_S = 20.0


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def wait_until(predicate, timeout: float = DEADLINE_S) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture(scope="module")
def broker() -> int:
    if not answers(MQTT_PORT):
        pytest.skip(f"no MQTT broker answers on 127.0.0.1:{MQTT_PORT} (start one with .ci/services.sh)")
    return MQTT_PORT


@pytest.fixture
def key(tmp_path) -> Path:
    path = tmp_path / "fleet.key"
    path.write_text(os.urandom(32).hex() + "\n")
    path.chmod(0o600)
    return path


def config_for(port: int, key: Path, **kw) -> FleetConfig:
    """A group of its own under a topic prefix of its own: tests never see each other's retained messages."""
    kw.setdefault("group", "museum")
    kw.setdefault("topic_prefix", f"test-fleet/{uuid.uuid4().hex[:10]}")
    return FleetConfig(port=port, key_file=str(key), timeout_s=DEADLINE_S / 2, state_interval=1.0, **kw)


@pytest.fixture(scope="module")
def watchlists(embedder, tmp_path_factory) -> dict[str, Path]:
    """Published galleries made with the real model: v1 (brick, coins), v2 (cat, brick), one item each photo."""
    folder = tmp_path_factory.mktemp("watchlists")
    out = {}
    for name, labels in {"v1": ["brick", "coins"], "v2": ["cat", "brick"], "v3": ["rocket", "coins", "grass"]}.items():
        with Gallery(folder / f"{name}.db") as g:
            enroll(g, embedder, [(label, photo(label)) for label in labels])
            if name == "v2":
                g.set_thresholds(0.42, {g.item("cat").id: 0.61}, {"preset": "whole", "source": "test"})
        out[name] = folder / f"{name}.db"
    return out


def labels(path) -> set[str]:
    with Gallery(path, create=False) as g:
        return {item.label for item in g.items()}


def snapshot(path) -> tuple:
    """Everything a refused version must leave as it was."""
    with Gallery(path, create=False) as g:
        return (g.generation(), g.count(), sorted((i.label, i.embeddings) for i in g.items()), g.thresholds())


class Listener:
    """A real paho client keeping every message it gets."""

    def __init__(self, port: int, *topics: str):
        self.messages: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}")
        done = threading.Event()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.client.on_subscribe = lambda *a: done.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe([(t, 1) for t in topics])
        assert done.wait(DEADLINE_S)

    def json(self, topic: str) -> list[dict]:
        return [json.loads(p) for t, p in self.messages if t == topic and p]

    def send(self, topic: str, payload: bytes, retain: bool = True) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(DEADLINE_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- the key and the config ---------------------------------------------------------------------
def test_the_key_file_must_be_private_and_is_never_shown(tmp_path, key, broker, watchlists):
    assert len(load_key(key)) == 64
    key.chmod(0o644)
    with pytest.raises(ConfigError, match=r"fleet.key_file: .*mode 644 .*chmod 600"):
        load_key(key)
    result = CliRunner().invoke(
        cli, ["fleet", "publish", str(watchlists["v1"]), "--group", "g", "--key-file", str(key), "--port", str(broker)]
    )
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "--key-file" in result.output
    assert "chmod 600" in result.output
    service = Config(
        source=SourceConfig(uri=str(tmp_path)),
        gallery=GalleryConfig(path=str(tmp_path / "g.db")),
        fleet=config_for(broker, key),
    )
    with pytest.raises(ConfigError, match="chmod 600"):  # the service refuses to start
        Daemon(service, notifier=Notifier(None), sinks=[]).run()
    short = tmp_path / "short.key"
    short.write_text("tiny")
    short.chmod(0o600)
    with pytest.raises(ConfigError, match="fewer than 16"):
        load_key(short)

    key.chmod(0o600)
    toml = tmp_path / "device.toml"
    toml.write_text(f'[fleet]\ngroup = "museum"\nkey_file = "{key}"\nusername = "kiosk"\npassword = "hunter22"\n')
    shown = CliRunner().invoke(cli, ["check-config", str(toml), "--show"])
    assert shown.exit_code == 0, shown.output
    assert "hunter22" not in shown.output and key.read_text().strip() not in shown.output
    assert 'password = "***"' in shown.output and f'key_file = "{key}"' in shown.output
    toml.write_text('[fleet]\ngroup = "museum"\n')
    refused = CliRunner().invoke(cli, ["check-config", str(toml)])
    assert refused.exit_code == 1 and "fleet.key_file: required" in refused.output
    toml.write_text('[fleet]\ngroup = "a/b"\nkey_file = "k"\n')
    assert "fleet.group" in CliRunner().invoke(cli, ["check-config", str(toml)]).output


# -- three running services --------------------------------------------------------------------
def service_config(tmp_path: Path, name: str, fleet: FleetConfig, scene: Path) -> Config:
    return Config(
        source=SourceConfig(uri=str(scene), loop=True, realtime=True, fps=4.0, name=name),
        gallery=GalleryConfig(path=str(tmp_path / f"{name}.db")),
        decision=DecisionConfig(preset="whole"),
        service=ServiceConfig(status_interval=0.2, log_interval=0),
        fleet=replace(fleet, device_id=name),
    )


def test_a_publish_reaches_three_running_services_and_their_next_lookups_use_it(
    tmp_path, key, broker, watchlists, caplog
):
    caplog.set_level(logging.INFO)
    scene = tmp_path / "scene"
    scene.mkdir()
    shutil.copy(photo("cat"), scene / "cat.jpg")  # every camera shows the cat, which only v2 holds
    fleet = config_for(broker, key)
    secret = key.read_text().strip()
    publish(fleet, watchlists["v1"], load_key(key))
    stop = threading.Event()
    daemons = [
        Daemon(service_config(tmp_path, f"kiosk{i}", fleet, scene), stop=stop, notifier=Notifier(None), sinks=[])
        for i in range(3)
    ]
    threads = [threading.Thread(target=d.run) for d in daemons]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: all(d.fleet is not None and d.fleet.applied.get("version") == 1 for d in daemons))
        assert wait_until(lambda: all(d.last_result is not None for d in daemons))
        time.sleep(0.5)
        assert all(d.last_result.ranking.best.label != "cat" for d in daemons)  # v1: no cat to find

        published = time.monotonic()
        head = publish(fleet, watchlists["v2"], load_key(key))
        assert head["version"] == 2 and head["items"] == 2
        assert wait_until(lambda: all(d.fleet.applied.get("version") == 2 for d in daemons))
        # the next lookups answer from v2 (the service's own connection sees it within its refresh)
        assert wait_until(lambda: all(d.last_result.ranking.best.label == "cat" for d in daemons), 10)
        took = time.monotonic() - published
        assert took < 10, took
        for d in daemons:
            assert labels(d.config.gallery.path) == {"cat", "brick"}
            with Gallery(d.config.gallery.path, create=False) as g:  # the version's calibration came along
                assert g.threshold == 0.42 and g.calibration()["preset"] == "whole"
                assert g.thresholds() == {g.item("cat").id: 0.61}
            assert d.last_result.ranking.threshold == 0.61  # cat's own calibrated threshold decides

        # fleet status sees the three, on version 2, with their fps
        assert wait_until(lambda: all(d.fleet.fps is not None for d in daemons))
        time.sleep(1.5)  # a state interval: fps reported
        args = ["fleet", "status", "--group", fleet.group, "--port", str(broker), "--topic-prefix", fleet.topic_prefix]
        result = CliRunner().invoke(cli, args + ["--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        assert report["version"] == 2
        assert [d["device"] for d in report["devices"]] == ["kiosk0", "kiosk1", "kiosk2"]
        for d in report["devices"]:
            assert d["online"] is True and d["version"] == 2 and d["items"] == 2 and d["last_error"] == ""
            assert d["model"]["model_name"] and d["fps"] > 0
        table = CliRunner().invoke(cli, args)
        assert table.exit_code == 0 and "kiosk2" in table.output and "version 2 published" in table.output
    finally:
        stop.set()
        started = time.monotonic()
        for t in threads:
            t.join(10)
        stopped = time.monotonic() - started
    assert not any(t.is_alive() for t in threads) and stopped < 5
    assert secret not in caplog.text
    listener = Listener(broker, Topics(fleet.topic_prefix, fleet.group).availabilities)
    assert wait_until(lambda: len(listener.messages) == 3)
    assert {p for _, p in listener.messages} == {b"offline"}  # a clean stop says so
    listener.close()


# -- a device that comes later; the local layer -------------------------------------------------
def test_a_device_started_later_gets_the_retained_version_and_keeps_its_local_items(
    tmp_path, key, broker, watchlists, embedder
):
    fleet = config_for(broker, key, device_id="late")
    publish(fleet, watchlists["v1"], load_key(key))
    device = tmp_path / "late.db"
    with Gallery(device) as g:  # enrolled on the device itself: the local layer
        enroll(g, embedder, [("galaxies", photo("galaxies")), ("coins", photo("coins"))])
    with Follower(fleet, device, embedder.sha256, embedder.card.name).start() as follower:
        assert follower.wait_for(1, DEADLINE_S)  # retained: published before it started
        assert labels(device) == {"galaxies", "coins", "brick"}  # local "coins" replaced by the fleet's
        with Gallery(device) as g:  # all verifiers' features came over the wire (SIFT: 128 bytes a feature)
            assert g.feature_photos() == {"gray": 3, "orb": 3, "sift": 3}
            shapes = {f[0]: f[3].shape for f in g.features(g.item("brick").id)}
            assert shapes["orb"][1] == 32 and shapes["sift"][1] == 128 and shapes["gray"] == (64, 64)
        assert follower.state()["local_items"] == 1 and follower.state()["items"] == 3
        with Gallery(device) as g:  # enrolled while following: local as well
            enroll(g, embedder, [("tissue", photo("tissue"))])
        publish(fleet, watchlists["v3"], load_key(key))
        assert follower.wait_for(2, DEADLINE_S)
        assert labels(device) == {"galaxies", "tissue", "rocket", "coins", "grass"}  # brick left with v1
        assert follower.state()["local_items"] == 2
    # restarted: the version applied is remembered, the retained head is not applied again
    before = snapshot(device)
    with Follower(fleet, device, embedder.sha256, embedder.card.name).start() as follower:
        assert follower.applied["version"] == 2
        time.sleep(1.0)
        assert follower.last_error == ""
    assert snapshot(device) == before


# -- refusals ------------------------------------------------------------------------------------
def test_tampered_wrong_key_unsigned_older_oversized_and_other_model_versions_are_refused(
    tmp_path, key, broker, watchlists, embedder, caplog
):
    caplog.set_level(logging.INFO)
    fleet = config_for(broker, key, device_id="dev")
    topics = Topics(fleet.topic_prefix, fleet.group, "dev")
    good = load_key(key)
    device = tmp_path / "dev.db"
    events = []
    publish(fleet, watchlists["v1"], good)
    listener = Listener(broker, topics.event, topics.state)
    follower = Follower(fleet, device, embedder.sha256, embedder.card.name, on_event=events.append).start()
    try:
        assert follower.wait_for(1, DEADLINE_S)
        v1 = snapshot(device)

        def refused(what: str) -> None:
            """One log line, one event (callback and MQTT), last_error in the state; nothing changed."""
            assert wait_until(lambda: len([e for e in events if e["kind"] == "refused"]) == refused.count + 1), what
            refused.count += 1
            event = events[-1]
            assert what in event["reason"], event
            assert wait_until(lambda: any(what in e["reason"] for e in listener.json(topics.event)))
            assert wait_until(lambda: any(what in s["last_error"] for s in listener.json(topics.state)))
            lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
            assert len(lines) == refused.count and what in lines[-1] and "\n" not in lines[-1]  # one line each
            assert follower.applied["version"] == 1 and snapshot(device) == v1

        refused.count = 0
        # a key that is not the fleet's
        other = tmp_path / "other.key"
        other.write_text(os.urandom(32).hex())
        other.chmod(0o600)
        publish(fleet, watchlists["v2"], load_key(other))
        refused("does not match the fleet key")

        # tampered: a signed head, one chunk changed on the broker
        data = Path(watchlists["v2"]).read_bytes()  # any file will do: it must never get in
        import hashlib

        chunks = [data[i : i + 4096] for i in range(0, len(data), 4096)]
        head = sign(
            {
                "format": 1,
                "group": fleet.group,
                "version": 5,
                "created": time.time(),
                "model": {"model_sha256": embedder.sha256},
                "items": 2,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "chunk_size": 4096,
                "chunks": [hashlib.sha256(c).hexdigest() for c in chunks],
            },
            good,
        )
        for i, c in enumerate(chunks):
            listener.send(topics.chunk(5, i), c[:-1] + bytes([c[-1] ^ 1]) if i == 1 else c)
        listener.send(topics.head, json.dumps(head).encode())
        refused("chunk 1 differs from the signed digest")

        # a head changed after signing (a bigger version), and one never signed
        listener.send(topics.head, json.dumps({**head, "version": 6}).encode())
        refused("does not match the fleet key")
        listener.send(topics.head, json.dumps({k: v for k, v in head.items() if k != "signature"}).encode())
        refused("unsigned")

        # signed, but the file is not a gallery: the import path refuses it inside the transaction
        junk = os.urandom(5000)
        bad = sign(
            {
                **head,
                "version": 7,
                "size": len(junk),
                "sha256": hashlib.sha256(junk).hexdigest(),
                "chunks": [hashlib.sha256(junk[:4096]).hexdigest(), hashlib.sha256(junk[4096:]).hexdigest()],
            },
            good,
        )
        listener.send(topics.chunk(7, 0), junk[:4096])
        listener.send(topics.chunk(7, 1), junk[4096:])
        listener.send(topics.head, json.dumps(bad).encode())
        refused("version 7:")
        assert not follower.download.exists()
    finally:
        follower.close()

    # older than the version applied (a replayed, genuinely signed v1), oversized, another model
    with Gallery(device) as g:
        g.db.execute("UPDATE fleet_version SET value = '9' WHERE key = 'version'")
    v9 = snapshot(device)
    for kw, what in (
        ({}, "not newer than the version applied (9)"),
        ({"max_payload_mb": 0.01}, "more than max_payload_mb"),
    ):
        events.clear()
        publish(fleet, watchlists["v2"], good, version=9 if not kw else 10)
        with Follower(replace(fleet, **kw), device, embedder.sha256, on_event=events.append).start() as f:
            assert wait_until(lambda: events), what
            assert what in events[0]["reason"] and f.applied["version"] == 9
        assert snapshot(device) == v9
    events.clear()
    publish(fleet, watchlists["v2"], good, version=11)
    with Follower(fleet, device, "0" * 64, "another", on_event=events.append).start():
        assert wait_until(lambda: events)
        assert "this device runs another" in events[0]["reason"]
    assert snapshot(device) == v9
    listener.close()
    assert good.decode() not in caplog.text


# -- a broker restart in the middle of a publish ---------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mosquitto(port: int, folder: Path) -> subprocess.Popen:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.access(binary, os.X_OK):
        pytest.skip("no mosquitto binary (apt-get install mosquitto, or run .ci/services.sh)")
    conf = folder / "mosquitto.conf"  # persistence on: what was retained at the stop comes back
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {folder}/\n"
        "log_dest none\n"
    )
    process = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_until(lambda: answers(port), 10):
        process.kill()
        pytest.fail(f"mosquitto did not start on 127.0.0.1:{port}")
    return process


def test_a_broker_restart_mid_publish_leaves_every_device_on_a_whole_version(tmp_path, key, watchlists, embedder):
    port = free_port()
    broker = start_mosquitto(port, tmp_path)
    fleet = config_for(port, key)
    good = load_key(key)
    followers = []
    try:
        publish(fleet, watchlists["v1"], good)
        for i in range(3):
            f = Follower(replace(fleet, device_id=f"cam{i}"), tmp_path / f"cam{i}.db", embedder.sha256).start()
            followers.append(f)
        assert all(f.wait_for(1, DEADLINE_S) for f in followers)

        def kill_after_two(i: int) -> None:
            if i == 2:
                broker.send_signal(signal.SIGTERM)  # saves what it retains (v1's head, 3 chunks of v2)
                broker.wait(10)

        with pytest.raises(FleetError):
            publish(replace(fleet, timeout_s=2), watchlists["v3"], good, chunk_bytes=8192, on_sent=kill_after_two)
        broker = start_mosquitto(port, tmp_path)
        assert wait_until(lambda: all(f._client.is_connected() for f in followers), 40)
        time.sleep(1.5)  # the retained head (v1) and the partial chunks of v2 are delivered again
        for f in followers:
            assert f.applied["version"] == 1 and labels(f.gallery_path) == {"brick", "coins"}
        head = publish(fleet, watchlists["v3"], good, chunk_bytes=8192)  # the publish again, whole
        assert head["version"] == 2
        assert all(f.wait_for(2, DEADLINE_S) for f in followers)
        for f in followers:
            assert (
                labels(f.gallery_path) == {"rocket", "coins", "grass"} and "version" not in f.last_error
            )  # no refusal
    finally:
        for f in followers:
            f.close()
        broker.terminate()
        broker.wait(10)
