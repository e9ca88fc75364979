"""The outbox on real parts: a real HTTP server that is down for a while, real commands, restarts."""

from __future__ import annotations

import json
import time
from dataclasses import replace

from test_sinks import Receiver, free_port, wait_until

from edge_retrieval.sinks import CommandSinkConfig, WebhookSinkConfig
from edge_retrieval.sinks.command import CommandSink
from edge_retrieval.sinks.webhook import WebhookSink
from edge_retrieval.storage.events import Event, EventLog
from edge_retrieval.storage.outbox import Dispatcher, backoff

_FAST = dict(retry_base_s=0.02, retry_max_s=0.2)  # backoff for tests: retries every few tens of ms
_TIMING_SLACK_S = 0.5  # how late stop() may return on a shared 2-core machine
_RECORD_BUDGET_S = 1.0  # 20 record()+wake() calls while a sink hangs (the frame loop's share)


def event(i: int) -> Event:
    return Event(time=1_700_000_000.0 + i, source="cam0", kind="match", label=f"item{i}", item_id=i, score=0.9)


def webhook(url: str, name: str = "webhook") -> WebhookSink:
    sink = WebhookSink(WebhookSinkConfig(url=url, timeout_s=2.0))
    sink.name = name
    return sink


def attempts(log: EventLog, sink: str) -> int:
    return log.db.execute("SELECT coalesce(sum(attempts), 0) FROM outbox WHERE sink = ?", [sink]).fetchone()[0]


def test_backoff_grows_to_its_cap_with_jitter():
    for n, full in [(1, 1.0), (2, 2.0), (3, 4.0), (10, 60.0), (10_000, 60.0)]:
        delays = [backoff(n, 1.0, 60.0) for _ in range(50)]
        assert all(full * 0.5 <= d <= full for d in delays)
        assert len(set(delays)) > 1


def test_every_alert_arrives_once_in_order_after_the_webhook_was_down(tmp_path):
    receiver = Receiver(status=503)
    db = tmp_path / "gallery.db"
    with EventLog(db, ["webhook"]) as log, Dispatcher(db, [webhook(receiver.url)], **_FAST) as dispatcher:
        ids = []
        for i in range(5):
            ids.append(log.record(event(i)))
            dispatcher.wake()
        assert wait_until(lambda: attempts(log, "webhook") >= 3)  # refused a few times: 503
        assert receiver.received == [] and dispatcher.pending() == 5
        receiver.status = 200
        assert wait_until(lambda: dispatcher.pending() == 0)
        assert receiver.ids() == ids
        ids.append(log.record(event(5)))  # a later event lands after them, and nothing came twice
        dispatcher.wake()
        assert wait_until(lambda: dispatcher.pending() == 0)
        assert receiver.ids() == ids
        last_errors = log.db.execute("SELECT DISTINCT last_error FROM outbox").fetchall()
        assert last_errors == [(None,)]
    receiver.close()


def test_a_failing_sink_does_not_hold_up_the_others(tmp_path):
    receiver = Receiver()
    db = tmp_path / "gallery.db"
    sinks = [
        webhook(f"http://127.0.0.1:{free_port()}/hook", "down"),
        CommandSink(CommandSinkConfig(argv=["false"])),
        webhook(receiver.url, "up"),
    ]
    with EventLog(db, [s.name for s in sinks]) as log, Dispatcher(db, sinks, **_FAST) as dispatcher:
        ids = [log.record(event(i)) for i in range(4)]
        dispatcher.wake()
        assert wait_until(lambda: dispatcher.pending("up") == 0)
        assert receiver.ids() == ids
        assert dispatcher.pending("down") == dispatcher.pending("command") == 4
        assert wait_until(lambda: attempts(log, "command") >= 2)
        first = log.db.execute(
            "SELECT event_id, last_error FROM outbox WHERE sink = 'command' AND attempts > 0"
        ).fetchall()
        assert [r[0] for r in first] == [ids[0]]  # only the head is tried: order is kept
        assert "exit status 1" in first[0][1]
    receiver.close()


def test_restart_delivers_what_a_previous_run_left_once_in_order(tmp_path):
    port = free_port()  # nothing listens here yet: the webhook is down
    db = tmp_path / "gallery.db"
    with EventLog(db, ["webhook"]) as log:
        first = Dispatcher(db, [webhook(f"http://127.0.0.1:{port}/hook")], **_FAST).start()
        ids = [log.record(event(i)) for i in range(3)]
        first.wake()
        assert wait_until(lambda: attempts(log, "webhook") >= 2)
        assert first.stop(timeout=2.0)
        ids += [log.record(event(i)) for i in range(3, 5)]  # recorded while no dispatcher runs
    receiver = Receiver(port=port)  # the webhook comes back, on the same port
    second = Dispatcher(db, [webhook(receiver.url)], **_FAST).start()
    try:
        assert wait_until(lambda: second.pending() == 0)
        assert receiver.ids() == ids
        assert receiver.requests == 5
    finally:
        second.stop()
        receiver.close()


def test_stop_returns_in_time_while_a_sink_hangs_and_recording_never_waits(tmp_path):
    started = tmp_path / "started"
    hanging = CommandSink(CommandSinkConfig(argv=["sh", "-c", 'touch "$0"; exec sleep 3', str(started)], timeout_s=10))
    db = tmp_path / "gallery.db"
    with EventLog(db, ["command"]) as log:
        dispatcher = Dispatcher(db, [hanging], **_FAST).start()
        log.record(event(0))
        dispatcher.wake()
        assert wait_until(started.exists)
        t0 = time.monotonic()
        for i in range(1, 21):
            log.record(event(i))
            dispatcher.wake()
        assert time.monotonic() - t0 < _RECORD_BUDGET_S
        t0 = time.monotonic()
        assert dispatcher.stop(timeout=0.3) is False  # the sink's thread is still in `sleep`
        assert time.monotonic() - t0 < 0.3 + _TIMING_SLACK_S
        assert dispatcher.pending() == 21


def test_pending_rows_of_an_unconfigured_sink_stay(tmp_path):
    receiver = Receiver()
    db = tmp_path / "gallery.db"
    with EventLog(db, ["webhook", "mqtt"]) as log:
        ids = [log.record(event(i)) for i in range(2)]
    with Dispatcher(db, [webhook(receiver.url)], **_FAST) as dispatcher:
        assert wait_until(lambda: dispatcher.pending() == 0)
        assert receiver.ids() == ids
    with EventLog(db, []) as log:
        left = log.db.execute("SELECT count(*) FROM outbox WHERE sink = 'mqtt' AND delivered IS NULL")
        assert left.fetchone()[0] == 2
    receiver.close()


def test_mqtt_alerts_survive_a_broker_restart(tmp_path):
    from test_sinks import Subscriber, mosquitto

    from edge_retrieval.sinks import MqttSinkConfig
    from edge_retrieval.sinks.mqtt import MqttSink

    port = free_port()
    broker = mosquitto(port, tmp_path)  # our own: this one gets killed
    db = tmp_path / "gallery.db"
    sink = MqttSink(MqttSinkConfig(port=port, device_id="restart", discovery_prefix="", timeout_s=0.2))
    sub = Subscriber(port, sink.event_topic)
    try:
        with EventLog(db, ["mqtt"]) as log, Dispatcher(db, [sink], **_FAST) as dispatcher:
            ids = [log.record(event(i)) for i in range(2)]
            dispatcher.wake()
            assert wait_until(lambda: dispatcher.pending() == 0 and len(sub.messages) == 2)
            sub.close()
            broker.kill()
            broker.wait(5)
            ids += [log.record(event(i)) for i in range(2, 4)]
            dispatcher.wake()
            assert wait_until(lambda: attempts(log, "mqtt") >= 3)  # refused: broker gone
            broker = mosquitto(port, tmp_path)
            sub2 = Subscriber(port, sink.event_topic)  # (the sink reconnects only after a second)
            assert wait_until(lambda: dispatcher.pending() == 0)
            assert wait_until(lambda: len(sub.messages) + len(sub2.messages) == 4)
            sub2.close()
        got = [json.loads(p)["event_id"] for _, p, _ in sub.messages + sub2.messages]
        assert got == ids
    finally:
        broker.kill()
        broker.wait(5)


# -- refused for good: parked --------------------------------------------------------
def cli(*args) -> str:
    from click.testing import CliRunner

    from edge_retrieval.cli import cli as main

    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output + result.stderr
    return result.stdout


def parked_ids(db) -> list[int]:
    return [json.loads(line)["event_id"] for line in cli("events", "list", "--parked", "--json", "-g", db).splitlines()]


def test_a_webhook_400_parks_that_event_the_later_ones_arrive_and_retry_sends_it(tmp_path):
    receiver = Receiver(status=400)
    db = tmp_path / "gallery.db"
    with EventLog(db, ["webhook"]) as log, Dispatcher(db, [webhook(receiver.url)], idle_s=0.05, **_FAST) as dispatcher:
        refused = log.record(event(0))
        dispatcher.wake()
        assert wait_until(lambda: dispatcher.parked() == 1)
        assert receiver.requests == 1  # parked at once: not retried
        receiver.status = 200
        ids = [log.record(event(i)) for i in range(1, 4)]
        dispatcher.wake()
        assert wait_until(lambda: dispatcher.pending() == 0)
        assert receiver.ids() == ids and dispatcher.parked() == 1 and receiver.requests == 4

        assert parked_ids(db) == [refused]
        [line] = cli("events", "list", "--parked", "-g", db).splitlines()
        assert line.split()[0] == str(refused) and "webhook parked (PermanentDeliveryError" in line
        assert "HTTP 400" in line
        listed = [json.loads(x) for x in cli("events", "list", "--json", "-g", db).splitlines()]
        assert [(e["event_id"], [d["state"] for d in e["deliveries"]]) for e in listed] == [
            (i, ["delivered"]) for i in reversed(ids)
        ] + [(refused, ["parked"])]

        assert cli("events", "retry", refused, "-g", db) == f"event {refused}: webhook will be tried again\n"
        assert wait_until(lambda: receiver.ids() == ids + [refused])  # the running dispatcher, no wake()
        # (the dispatcher marks the delivery once the answer is back: a moment after the receiver has it)
        assert wait_until(lambda: dispatcher.parked() == dispatcher.pending() == 0) and parked_ids(db) == []
    receiver.close()


REFUSE_ONE = """
test -e "$REFUSE" && [ "$EDGE_EVENT_LABEL" = item0 ] && { echo "no such contact" >&2; exit 65; }
echo "$EDGE_EVENT_ID" >> "$OUT"
"""


def test_a_commands_permanent_exit_code_parks_that_event_across_restarts_until_retried(tmp_path, monkeypatch):
    out, refuse = tmp_path / "delivered.txt", tmp_path / "refuse"
    refuse.touch()
    monkeypatch.setenv("OUT", str(out))
    monkeypatch.setenv("REFUSE", str(refuse))

    def sink():
        return CommandSink(CommandSinkConfig(argv=["sh", "-c", REFUSE_ONE], permanent_exit_codes=[65]))

    def delivered():
        return [int(x) for x in out.read_text().split()] if out.exists() else []

    db = tmp_path / "gallery.db"
    with EventLog(db, ["command"]) as log:
        with Dispatcher(db, [sink()], **_FAST) as dispatcher:
            ids = [log.record(event(i)) for i in range(4)]
            dispatcher.wake()
            assert wait_until(lambda: dispatcher.pending() == 0)
            assert delivered() == ids[1:] and dispatcher.parked() == 1
        with Dispatcher(db, [sink()], **_FAST) as dispatcher:  # a restart does not retry a parked row
            time.sleep(0.3)
            assert delivered() == ids[1:] and dispatcher.parked() == 1
            assert attempts(log, "command") == 4
        assert parked_ids(db) == [ids[0]]
        assert "exit status 65: no such contact" in cli("events", "list", "--parked", "-g", db)
        refuse.unlink()  # the cause is fixed
        assert cli("events", "retry", "--all", "-g", db) == f"event {ids[0]}: command will be tried again\n"
        with Dispatcher(db, [sink()], **_FAST) as dispatcher:  # the next service sends it
            assert wait_until(lambda: delivered() == ids[1:] + ids[:1])
            assert wait_until(lambda: dispatcher.pending() == dispatcher.parked() == 0)


def test_two_services_on_one_gallery_file_each_deliver_their_own_sources_events(tmp_path):
    """Two cameras' services (systemd/edge-retrieval@.service) share the file and a sink name: each
    dispatcher takes only its own source's rows, so the door's events wait for the door's webhook
    (down at first) and never go to the front's; nothing is delivered twice."""
    front, door = Receiver(), Receiver(status=503)
    db = tmp_path / "gallery.db"
    with (
        EventLog(db, ["webhook"]) as log,
        Dispatcher(db, [webhook(front.url)], source="front", **_FAST) as a,
        Dispatcher(db, [webhook(door.url)], source="door", **_FAST) as b,
    ):
        ids = {}
        for i in range(6):
            source = ("front", "door")[i % 2]
            ids.setdefault(source, []).append(log.record(replace(event(i), source=source)))
            a.wake()
            b.wake()
        assert wait_until(lambda: a.pending() == 0) and front.ids() == ids["front"]
        assert wait_until(lambda: attempts(log, "webhook") >= 3 + 3)  # the door's rows refused a few times
        assert b.pending() == 3 and a.pending() == 0 and front.ids() == ids["front"]
        door.status = 200
        assert wait_until(lambda: b.pending() == 0)
        assert door.ids() == ids["door"] and front.ids() == ids["front"]
    front.close()
    door.close()
