"""Camera faults: the source disappears, hands over garbage, stalls, and comes back.

The real daemon loop (`Daemon`, `Reconnecting`, `LiveSource`, `Grabber`, `FileSource`) with
fakes for the camera (and `FakeEmbedder` where the model is irrelevant); the real model on the
built-in demo clip cut short and damaged. Guarantees:

- garbage frames are dropped (or converted), counted per kind and logged once per kind; the
  loop never crashes and goes on matching;
- the daemon keeps matching after the source comes back;
- the systemd watchdog is fed only by the frame loop: a stalled loop (a read, a decoder or a
  capture that never returns) pings nothing, whatever the sink threads do; a camera being
  reconnected (the loop alive, waiting) keeps it fed for as long as it takes.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from budget import budget
from fakes import BACKGROUND, FakeCapture, FakeEmbedder, NotifyListener, fake_frame

from edge_retrieval import democlip
from edge_retrieval.camera import (
    DROPPED,
    MAX_STUCK,
    NOTED,
    FileSource,
    FolderSource,
    Frame,
    SourceEnded,
    SourceError,
    open_source,
)
from edge_retrieval.config import Config, DecisionConfig, GalleryConfig, ServiceConfig, SourceConfig, VotesConfig
from edge_retrieval.service import daemon as daemon_module
from edge_retrieval.service.daemon import Daemon
from edge_retrieval.service.systemd import Notifier

B = BACKGROUND
FAST = Config(
    decision=DecisionConfig(preset="whole", threshold=0.5, margin=0.05, votes=VotesConfig(m=2, n=3), cooldown=5.0),
    service=ServiceConfig(status_interval=0.1, log_interval=0),
)
STALL = 1.5  # seconds a stall lasts in these tests: far above every ping interval of a live loop
IDLE_PING = 0.2  # the daemon's idle ping interval in the reconnect tests (1 s in production)
EMULATED_WATCHDOG = 0.6  # the WatchdogSec those tests emulate: longer than the idle ping, shorter than the backoff
_SLACK = 0.35  # scheduling slack of a shared 2-core machine on a gap between two pings

# Every kind of garbage a camera (or a broken driver) can hand over, and what the daemon makes of it.
GARBAGE = {
    "grey H×W": (lambda: np.full((48, 64), B * 30, np.uint8), "grey"),
    "grey H×W×1": (lambda: np.full((48, 64, 1), B * 30, np.uint8), "grey"),
    "BGRA": (lambda: np.full((48, 64, 4), B * 30, np.uint8), "bgra"),
    "2 channels": (lambda: np.full((48, 64, 2), B * 30, np.uint8), "bad channels"),
    "1×1": (lambda: np.full((1, 1, 3), B * 30, np.uint8), "too small"),
    "0×0": (lambda: np.zeros((0, 0, 3), np.uint8), "empty"),
    "empty 1-D": (lambda: np.array([], np.uint8), "empty"),
    "None": (lambda: None, "none"),
    "float32": (lambda: np.full((48, 64, 3), B * 30, np.float32), "bad dtype"),
    "uint16": (lambda: np.full((48, 64, 3), B * 30 * 256, np.uint16), "bad dtype"),
    "4-D": (lambda: np.full((1, 48, 64, 3), B * 30, np.uint8), "bad shape"),
    "JPEG bytes": (lambda: b"\xff\xd8\xff\xe0 not decoded", "not an array"),
    "all black": (lambda: np.zeros((48, 64, 3), np.uint8), "black"),
    "all white": (lambda: np.full((48, 64, 3), 255, np.uint8), "white"),
}


# -- fakes ----------------------------------------------------------------------------------------
class TimedListener(NotifyListener):
    """The notify socket, with the arrival time of every datagram."""

    def __init__(self, path):
        self.timed: list[tuple[float, str]] = []
        super().__init__(path)

    def _run(self):
        while not self._stop.is_set():
            try:
                message = self.sock.recv(4096).decode()
            except OSError:
                continue
            self.timed.append((time.monotonic(), message))
            self.messages.append(message)

    def pings(self, start=-np.inf, end=np.inf) -> list[float]:
        return [t for t, m in list(self.timed) if m.startswith("WATCHDOG=1") and start <= t <= end]


@pytest.fixture
def listener(tmp_path):
    sock = TimedListener(tmp_path / "notify.sock")
    yield sock
    sock.close()


class ListSink:
    """A sink that keeps what it gets; `hang` makes deliver block until released (a hung sink thread)."""

    def __init__(self, name="list", hang: threading.Event | None = None):
        self.name, self.hang = name, hang
        self.payloads: list[dict] = []

    def deliver(self, payload):
        if self.hang is not None:
            self.hang.wait()
        self.payloads.append(payload)

    def close(self):
        pass


class Stall:
    """A script step: the read blocks (ignoring its timeout) until `release` is set."""

    def __init__(self):
        self.started, self.release = threading.Event(), threading.Event()


class ScriptedSource:
    """A FrameSource handing over a script: each step is an image (or any garbage) or a Stall.
    Frame i has media time i × 0.1 s; the end of the script ends the source."""

    def __init__(self, script, name="scripted"):
        self.script, self.name, self.live = list(script), name, False
        self.pos = self.index = 0

    def read(self, timeout=0.5):
        while self.pos < len(self.script) and isinstance(self.script[self.pos], Stall):
            stall = self.script[self.pos]
            self.pos += 1
            stall.started.set()
            stall.release.wait()
        if self.pos >= len(self.script):
            raise SourceEnded(self.name)
        image = self.script[self.pos]
        self.pos += 1
        self.index += 1
        return Frame(image, (self.index - 1) * 0.1, self.index - 1)

    def close(self):
        pass


class ScriptedCapture(FakeCapture):
    """A cv2.VideoCapture stand-in whose read() follows a script: an image (or garbage) is handed
    over as (True, it), False as (False, None) (the camera gone), a Stall blocks the read
    until released (a driver hang), then (False, None)."""

    def __init__(self, script, interval=0.02):
        super().__init__(codes=[], interval=interval)
        self.script = list(script)

    def read(self):
        if not self.script:
            return False, None
        step = self.script.pop(0)
        if isinstance(step, Stall):
            step.started.set()
            step.release.wait()
            return False, None
        if step is False:
            return False, None
        time.sleep(self.interval)
        self.reads += 1
        return True, step


def frames(code, n):
    return [fake_frame(code) for _ in range(n)]


def live_config(**source):
    """A live camera: frame times are real time, so a short cooldown (an item shown again after a
    reconnect alerts again)."""
    source = {"uri": "0", "reconnect_initial": 0.05, "reconnect_max": 0.1, "read_timeout": 0.5, **source}
    return Config(source=SourceConfig(**source), decision=replace(FAST.decision, cooldown=0.5), service=FAST.service)


def run_in_thread(daemon):
    result = {}

    def target():
        try:
            result["summary"] = daemon.run()
        except BaseException as e:  # noqa: BLE001 (reported by the test)
            result["error"] = e

    thread = threading.Thread(target=target, name="daemon under test")
    thread.start()
    return thread, result


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def max_gap(times: list[float]) -> float:
    return float(np.diff(times).max()) if len(times) > 1 else np.inf


# -- garbage --------------------------------------------------------------------------------------
def test_garbage_frames_are_dropped_counted_and_logged_once_per_kind(fake_gallery, listener, caplog):
    """Every kind of garbage, `repeats` times, between frames showing items: no crash, every item
    still alerts, each kind counted exactly and logged once, a watchdog ping per frame handled."""
    repeats = budget(3, 50)
    script, expected = frames(B, 2), []
    for r in range(repeats):
        for make, _ in GARBAGE.values():  # two background frames after each: one vote at most in 3
            script += [make(), fake_frame(B), fake_frame(B)]
        code = 1 + r % 3
        script += frames(code, 3) + frames(B, 2)
        expected.append(f"item{code}")
    sink = ListSink()
    daemon = Daemon(
        FAST,
        embedder=FakeEmbedder(),
        gallery=fake_gallery,
        source=ScriptedSource(script),
        sinks=[sink],
        notifier=Notifier(listener.path),
    )
    with caplog.at_level(logging.WARNING, logger="edge_retrieval"):
        summary = daemon.run()

    assert summary.reason == "ended"
    assert [d.label for d in summary.decisions] == expected
    assert [p["label"] for p in sink.payloads] == expected  # recorded and delivered
    kinds = Counter(kind for _, kind in GARBAGE.values())
    dropped = {k: n * repeats for k, n in kinds.items() if k in DROPPED}
    noted = {k: n * repeats for k, n in kinds.items() if k in NOTED}
    assert dict(daemon.metrics.dropped) == dropped
    assert dict(daemon.metrics.noted) == noted
    assert summary.frames == len(script) - sum(dropped.values())  # noted frames were processed
    # logged once per kind, not once per frame
    frame_logs = [r.getMessage() for r in caplog.records if "counted, not logged again" in r.getMessage()]
    assert len(frame_logs) == len(kinds)
    for kind in kinds:
        text = DROPPED.get(kind) or NOTED[kind]
        assert sum(text in m for m in frame_logs) == 1, kind
    # the loop made progress on every frame, dropped or not: one ping each
    assert listener.wait_for("STOPPING=1")
    assert len(listener.pings()) == len(script)
    status = daemon.status_text(daemon.metrics)  # what STATUS and the log line say
    assert f"{sum(dropped.values())} frame(s) dropped" in status and f"bad dtype {2 * repeats}" in status
    assert f"{repeats} black frame(s)" in status


def test_garbage_from_a_live_capture_is_dropped_and_matching_goes_on(fake_gallery, listener, caplog):
    """The same garbage through the real grabber thread and live source (frames a driver hands over)."""
    repeats = budget(2, 20)
    script = frames(B, 3)
    for _ in range(repeats):
        for make, _ in GARBAGE.values():
            if make() is not None:  # (True, None) is a failed capture (reconnect), tested below
                script += [make(), fake_frame(B), fake_frame(B)]
    script += frames(2, 6) + [False]
    opened = []

    def open_fn(uri):
        opened.append(uri)
        if len(opened) > 1:
            raise SourceError(f"{uri}: gone")
        return ScriptedCapture(script, interval=0.02)

    stop = threading.Event()
    daemon = Daemon(
        live_config(),
        embedder=FakeEmbedder(),
        gallery=fake_gallery,
        sinks=[],
        stop=stop,
        source=open_source(live_config().source, stop, open_fn=open_fn),
        notifier=Notifier(listener.path),
    )
    thread, result = run_in_thread(daemon)
    try:
        wait_until(lambda: len(opened) > 1, 30, "the capture to end")
    finally:
        stop.set()
        thread.join(5)
    assert "error" not in result and not thread.is_alive()
    assert [d.label for d in result["summary"].decisions] == ["item2"]
    injected = {kind for make, kind in GARBAGE.values() if make() is not None}
    # the grabber keeps only the newest frame: a frame can be overtaken, so no exact counts here
    seen = set(daemon.metrics.dropped) | set(daemon.metrics.noted)
    assert seen <= injected and len(seen) >= len(injected) - 2, seen


def test_real_model_garbage_frames_raise_no_false_alert(embedder, demo, tmp_path):
    """Garbage spliced into the real demo clip (an enrolled cat, then the held-out tissue), every
    fifth frame, before the real model: the cat alerts, nothing else does."""
    clip = democlip.DemoClip(0, sequence=("cat", "tissue")).write(tmp_path / "short.avi")
    db = copy_gallery(demo[1], tmp_path)
    kinds = list(GARBAGE.values())

    class Spliced:
        name, live = "spliced", False

        def __init__(self):
            self.source, self.n = FileSource(str(clip)), 0

        def read(self, timeout=0.5):
            self.n += 1
            if self.n % 5 == 0:
                make, _ = kinds[(self.n // 5) % len(kinds)]
                return Frame(make(), self.n * 0.1, self.n)
            return self.source.read(timeout)

        def close(self):
            self.source.close()

    config = Config(gallery=GalleryConfig(path=str(db)))
    daemon = Daemon(config, embedder=embedder, source=Spliced(), sinks=[], notifier=Notifier(None))
    summary = daemon.run()
    assert summary.reason == "ended"
    assert [d.label for d in summary.decisions] == ["cat"]
    assert set(daemon.metrics.dropped) == {k for _, k in kinds if k in DROPPED}
    assert set(daemon.metrics.noted) == {k for _, k in kinds if k in NOTED}


# -- the source disappears and comes back -----------------------------------------------------
def test_camera_that_disappears_and_comes_back_is_matched_again(fake_gallery, listener):
    """Reads return False (unplugged), then `outages` opens fail, then the camera is back, twice over;
    the watchdog is fed all along (the loop is alive) and each item alerts after the return."""
    cycles = budget(2, 10)
    opened, expected = [], []
    plan = []  # per open: a capture script, or None for a failed open
    for c in range(cycles):
        code = 1 + c % 3
        plan += [frames(B, 2) + frames(code, 6) + [False], None, None]
        expected.append(f"item{code}")
    plan.append(frames(3, 6) + frames(B, 200))
    expected.append("item3")

    def open_fn(uri):
        opened.append(time.monotonic())
        step = plan[min(len(opened), len(plan)) - 1]
        if step is None:
            raise SourceError(f"{uri}: cannot open device")
        return ScriptedCapture(step, interval=0.02)

    stop = threading.Event()
    sink = ListSink()
    config = live_config(reconnect_initial=0.1, reconnect_max=0.3)
    daemon = Daemon(
        config,
        embedder=FakeEmbedder(),
        gallery=fake_gallery,
        sinks=[sink],
        stop=stop,
        source=open_source(config.source, stop, open_fn=open_fn),
        notifier=Notifier(listener.path),
    )
    thread, result = run_in_thread(daemon)
    try:
        wait_until(lambda: len(sink.payloads) >= len(expected), 30, "the alerts after each return")
    finally:
        stop.set()
        thread.join(5)
    assert "error" not in result, result
    assert [d.label for d in result["summary"].decisions] == expected
    assert [p["label"] for p in sink.payloads] == expected
    assert daemon._source.failures >= 3 * cycles
    pings = listener.pings()
    assert max_gap(pings) < 1.0 + _SLACK  # fed through every outage (IDLE_PING = 1 s)
    assert any("reconnecting to" in m for _, m in listener.timed)


def test_reconnecting_longer_than_the_watchdog_interval_keeps_it_fed(fake_gallery, listener, monkeypatch):
    """A camera gone for several backoff periods, each longer than the (emulated) WatchdogSec:
    the loop is alive, waiting, so it keeps pinging, and picks the camera up when it is back.
    (Before: a ping only per reconnect attempt, so once the backoff exceeded WatchdogSec systemd
    restarted the service over and over while the camera was unplugged.)"""
    monkeypatch.setattr(daemon_module, "IDLE_PING", IDLE_PING)
    outage = 3.0
    start = time.monotonic()
    opened = []

    def open_fn(uri):
        opened.append(time.monotonic())
        if time.monotonic() - start < outage:
            raise SourceError(f"{uri}: no such device")
        return ScriptedCapture(frames(2, 6) + frames(B, 500), interval=0.02)

    stop = threading.Event()
    backoff = EMULATED_WATCHDOG + 0.3  # every wait between two attempts outlasts the watchdog
    config = live_config(reconnect_initial=backoff, reconnect_max=backoff)
    daemon = Daemon(
        config,
        embedder=FakeEmbedder(),
        gallery=fake_gallery,
        sinks=[],
        stop=stop,
        source=open_source(config.source, stop, open_fn=open_fn),
        notifier=Notifier(listener.path),
    )
    thread, result = run_in_thread(daemon)
    try:
        wait_until(lambda: daemon.last_decision is not None, outage + 10, "the alert after the outage")
    finally:
        stop.set()
        thread.join(5)
    assert "error" not in result, result
    assert daemon.last_decision.label == "item2"
    assert len(opened) >= 3 and max_gap(opened[:-1]) >= EMULATED_WATCHDOG  # attempts alone would starve it
    ready = next(t for t, m in listener.timed if m.startswith("READY=1"))
    pings = [ready] + listener.pings(ready)
    assert pings[-1] - ready > outage
    assert max_gap(pings) < EMULATED_WATCHDOG, np.diff(pings).round(2)


def test_a_missing_v4l2_device_is_reconnected_with_the_watchdog_fed(fake_gallery, listener, monkeypatch):
    """The real OpenCV V4L2 open of a device that is not there (no fakes in the source)."""
    monkeypatch.setattr(daemon_module, "IDLE_PING", IDLE_PING)
    stop = threading.Event()
    config = live_config(uri="/dev/video-edge-retrieval-missing", reconnect_initial=0.3, reconnect_max=0.3)
    daemon = Daemon(
        config, embedder=FakeEmbedder(), gallery=fake_gallery, sinks=[], stop=stop, notifier=Notifier(listener.path)
    )
    thread, result = run_in_thread(daemon)
    try:
        time.sleep(1.5)
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(5)
    assert "error" not in result, result
    assert daemon._source.failures >= 3
    assert max_gap(listener.pings()) < EMULATED_WATCHDOG


def test_a_watched_folder_waiting_for_files_keeps_the_watchdog_fed(fake_gallery, listener, monkeypatch, tmp_path):
    """A time-lapse camera dropping a file now and then: the wait is the design, not a stall."""
    monkeypatch.setattr(daemon_module, "IDLE_PING", IDLE_PING)
    folder = tmp_path / "drop"
    folder.mkdir()
    stop = threading.Event()
    daemon = Daemon(
        FAST,
        embedder=FakeEmbedder(),
        gallery=fake_gallery,
        sinks=[],
        stop=stop,
        source=FolderSource(str(folder), watch=True, poll=0.05),
        notifier=Notifier(listener.path),
    )
    thread, result = run_in_thread(daemon)
    try:
        time.sleep(1.5)
    finally:
        stop.set()
        thread.join(5)
    assert "error" not in result, result
    assert len(listener.pings()) >= 4 and max_gap(listener.pings()) < EMULATED_WATCHDOG


# -- stalls ---------------------------------------------------------------------------------------
def test_a_stalled_read_stops_the_watchdog_pings_and_nothing_else_pings(fake_gallery, listener):
    """The read blocks (ignoring its timeout) for STALL s, `stalls` times: no WATCHDOG at all
    while it does, from any thread (a sink hangs in its own thread at the same time; the STATUS
    timer is due), so systemd's watchdog fires; released, the loop pings and matches again."""
    n = budget(2, 10)
    stalls = [Stall() for _ in range(n)]
    hang = threading.Event()
    script = frames(B, 2)
    for i, stall in enumerate(stalls):  # 2.4 s of media time a block: an item again in 3 blocks is past its cooldown
        script += frames(1 + i % 3, 4) + frames(B, 20) + [stall]
    script += frames(1 + n % 3, 4) + frames(B, 2)
    sink = ListSink(hang=hang)
    daemon = Daemon(
        FAST,
        embedder=FakeEmbedder(),
        gallery=fake_gallery,
        source=ScriptedSource(script),
        sinks=[sink],
        notifier=Notifier(listener.path),
    )
    thread, result = run_in_thread(daemon)
    windows = []
    try:
        for stall in stalls:
            assert stall.started.wait(30)
            began = time.monotonic()
            time.sleep(STALL)
            windows.append((began + 0.05, time.monotonic()))  # the last frame's ping may be in flight
            stall.release.set()
        hang.set()
        thread.join(30)
    finally:
        hang.set()
        for stall in stalls:
            stall.release.set()
    assert "error" not in result and not thread.is_alive()
    summary = result["summary"]
    expected = [f"item{1 + i % 3}" for i in range(n + 1)]
    assert [d.label for d in summary.decisions] == expected  # matching goes on after every stall
    assert [p["label"] for p in sink.payloads] == expected  # the hung sink delivered all once released
    pings = listener.pings()
    for began, ended in windows:
        assert listener.pings(began, ended) == []
        after = [t for t in pings if t > ended]
        assert after and after[0] - ended < 0.5  # and resume at once
    # a gap as long as the stall: any WatchdogSec below STALL would have fired
    assert max_gap(pings) >= STALL - 0.1
    assert len(pings) == summary.frames


def test_a_stalled_decoder_stops_the_watchdog_pings(fake_gallery, listener):
    """A video file whose decoder (grab) hangs in the prefetch thread: the loop gets no frame and
    its source is not waiting by design (`alive` False), so nothing pings."""
    stall = Stall()

    class HangingFile(FakeCapture):
        def grab(self):
            if self.reads == 8:
                stall.started.set()
                stall.release.wait()
                return False
            return super().grab()

    source = FileSource("hanging.avi", open_fn=lambda _: HangingFile(codes=[B, B] + [1] * 6))
    daemon = Daemon(
        FAST, embedder=FakeEmbedder(), gallery=fake_gallery, source=source, sinks=[], notifier=Notifier(listener.path)
    )
    thread, result = run_in_thread(daemon)
    try:
        assert stall.started.wait(10)
        wait_until(lambda: len(listener.pings()) == 8, 5, "the 8 frames before the hang")
        began = time.monotonic()
        time.sleep(STALL)
        assert listener.pings(began) == []
    finally:
        stall.release.set()
        thread.join(10)
    assert result["summary"].reason == "ended" and result["summary"].frames == 8


def test_a_capture_hanging_in_its_driver_ends_in_a_watchdog_restart_not_a_thread_pileup(
    fake_gallery, listener, monkeypatch, caplog
):
    """The capture's read() never returns (a driver hang). The live source notices (read_timeout),
    abandons it to its thread and reopens; the reopened one hangs too. With MAX_STUCK captures
    hanging the source opens nothing more and stops counting as alive: no ping, so systemd
    restarts the service. (Before: every reopen pinged, the watchdog never fired, and each
    reopen left one more thread hanging.) When the driver lets go, the camera is read again."""
    monkeypatch.setattr(daemon_module, "IDLE_PING", IDLE_PING)
    hang = Stall()
    opened = []

    def open_fn(uri):
        opened.append(time.monotonic())
        if len(opened) == 1:
            return ScriptedCapture(frames(B, 2) + frames(1, 6) + [hang])
        if len(opened) <= MAX_STUCK:
            return ScriptedCapture([hang])
        return ScriptedCapture(frames(2, 6) + frames(B, 500))

    stop = threading.Event()
    config = live_config(read_timeout=0.3)
    daemon = Daemon(
        config,
        embedder=FakeEmbedder(),
        gallery=fake_gallery,
        sinks=[],
        stop=stop,
        source=open_source(config.source, stop, open_fn=open_fn),
        notifier=Notifier(listener.path),
    )
    threads_before = threading.active_count()
    thread, result = run_in_thread(daemon)
    try:
        with caplog.at_level(logging.ERROR, logger="edge_retrieval.camera"):
            wait_until(
                lambda: any("hang inside the driver" in r.getMessage() for r in caplog.records),
                30,
                "the source to give up on the hanging captures",
            )
            began = time.monotonic()
            time.sleep(STALL)
            assert listener.pings(began) == []  # the watchdog fires
            assert len(opened) == MAX_STUCK  # nothing more opened
            grabbers = [t for t in threading.enumerate() if t.name.startswith("grab ")]
            assert len(grabbers) == MAX_STUCK and threading.active_count() <= threads_before + 1 + MAX_STUCK + 1
        hang.release.set()  # the driver lets go
        wait_until(
            lambda: daemon.last_decision is not None and daemon.last_decision.label == "item2",
            10,
            "matching after the driver let go",
        )
        assert listener.pings(time.monotonic() - 0.3)  # fed again
    finally:
        hang.release.set()
        stop.set()
        thread.join(5)
    assert "error" not in result, result
    assert [d.label for d in result["summary"].decisions] == ["item1", "item2"]


# -- a real video file cut short or damaged -----------------------------------------------------
@pytest.fixture(scope="module")
def demo(embedder, tmp_path_factory):
    """The built-in demo clip (cached) and a gallery of the demo items."""
    folder = tmp_path_factory.mktemp("demo")
    clip, db = democlip.prepare(embedder, folder)
    return clip, db


def copy_gallery(db, folder):
    """A test's own copy of the demo gallery (its events and outbox rows stay its own)."""
    shutil.copy(db, folder / db.name)
    return folder / db.name


def damaged_copy(clip, path, damage):
    data = bytearray(clip.read_bytes())
    if damage == "cut":  # a copy that stopped half-way (disk full, unplugged card)
        data = data[: len(data) // 2]
    else:  # bytes overwritten in the middle (bad sectors): during the held-out item, so no alert is at stake
        rng = np.random.default_rng(0)
        for offset in range(int(len(data) * 0.47), int(len(data) * 0.52), 5000):
            data[offset : offset + 300] = rng.integers(0, 256, 300, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("reduced", [False, True], ids=["full-decode", "reduced-decode"])
@pytest.mark.parametrize("damage", ["cut", "corrupted"])
def test_real_demo_clip_cut_short_or_damaged(embedder, demo, tmp_path, damage, reduced):
    """The real model on the demo clip cut short / with damaged frames: the loop processes every
    readable frame, alerts every enrolled item it shows, ends cleanly, delivers the events.
    (Before: FileSource ended at the first undecodable frame, losing the 300 good frames after it.)
    Also with the JPEG packets decoded at half size, as `run` plays a clip."""
    clip, db = demo
    path = damaged_copy(clip, tmp_path / f"{damage}.avi", damage)
    sink = ListSink()
    source = FileSource(str(path), decode_size=embedder.input_size if reduced else None)
    db = copy_gallery(db, tmp_path)
    daemon = Daemon(
        Config(gallery=GalleryConfig(path=str(db))),
        embedder=embedder,
        source=source,
        sinks=[sink],
        notifier=Notifier(None),
    )
    summary = daemon.run()
    enrolled = [name for name in democlip.SEQUENCE if name not in democlip.HELD_OUT]
    assert summary.reason == "ended"
    if damage == "cut":
        assert 200 < summary.frames < 260
        assert [d.label for d in summary.decisions] == enrolled[:3]  # cat, astronaut, coffee: the first half
    else:
        assert source.frames_damaged > 0
        assert 400 < summary.frames < democlip.DemoClip(0).frames
        assert [d.label for d in summary.decisions] == enrolled  # the items after the damage too
    assert [p["label"] for p in sink.payloads] == [d.label for d in summary.decisions]
