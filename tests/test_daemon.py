"""The service loop: fakes for the pipeline logic, then the real thing (model, CLI, signals, sd_notify)."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import cv2
import pytest
from click.testing import CliRunner
from fakes import BACKGROUND, FakeEmbedder, FakeSource, fake_frame, fake_vector

from edge_retrieval import democlip
from edge_retrieval.cli import cli
from edge_retrieval.config import Config, DecisionConfig, GalleryConfig, ServiceConfig, SourceConfig, VotesConfig
from edge_retrieval.demo import photo
from edge_retrieval.enroll import enroll
from edge_retrieval.recognize import PRESETS, open_recognizer
from edge_retrieval.service.daemon import Daemon
from edge_retrieval.service.pipeline import ITEMS, Pipeline, Watch
from edge_retrieval.service.systemd import Notifier
from edge_retrieval.storage.events import EventLog
from edge_retrieval.storage.gallery import Gallery

REPO = Path(__file__).resolve().parent.parent
FAST = Config(
    decision=DecisionConfig(preset="whole", threshold=0.5, margin=0.05, votes=VotesConfig(m=2, n=3), cooldown=5.0),
    service=ServiceConfig(status_interval=0.1, log_interval=0),
)


def daemon_for(gallery, source, config=FAST, **kw):
    kw.setdefault("notifier", Notifier(None))
    return Daemon(config, embedder=kw.pop("embedder", FakeEmbedder()), gallery=gallery, source=source, sinks=[], **kw)


def test_alerts_events_and_the_motion_gate(fake_gallery):
    B = BACKGROUND
    codes = [B, B, 1, 1, 1, 1, 1, B, B, 2, 2, 1, 1, 1, B]
    embedder = FakeEmbedder()
    seen = []
    daemon = daemon_for(
        fake_gallery,
        FakeSource(codes),
        embedder=embedder,
        on_decision=lambda d, r: seen.append((d.label, r.frame.index)),
    )
    summary = daemon.run()
    assert summary.reason == "ended" and summary.frames == len(codes)
    # item1 once (standing in view), item2 at once after it, item1 again only after its cooldown: no
    assert seen == [("item1", 3), ("item2", 10)]
    assert embedder.invocations == summary.embedded == 6  # unchanged frames reuse the last descriptor
    with EventLog(fake_gallery.path, []) as log:
        events = log.recent()
    assert [(e.label, e.kind, e.details["frame"]) for e in reversed(events)] == [
        ("item1", "match", 3),
        ("item2", "match", 10),
    ]
    assert events[0].score == pytest.approx(0.995, abs=1e-3) and events[0].details["votes"] == 2


def test_a_snapshot_that_cannot_be_written_loses_the_picture_not_the_alert(fake_gallery, tmp_path):
    from dataclasses import replace

    from edge_retrieval.sinks import SnapshotConfig

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the snapshot folder should be")
    config = replace(FAST, snapshot=SnapshotConfig(enabled=True, folder=str(blocker)))
    B = BACKGROUND
    daemon_for(fake_gallery, FakeSource([B, 1, 1, 1]), config=config).run()
    with EventLog(fake_gallery.path, []) as log:
        events = log.recent()
    assert [(e.label, e.snapshot) for e in events] == [("item1", None)]


def test_the_service_keeps_the_event_history_its_config_asks_for(fake_gallery):
    from dataclasses import replace

    from edge_retrieval.config import EventsConfig

    B = BACKGROUND
    codes = [B, 1, 1, 1, B, B, 2, 2, 2, B]  # item1, then item2: two alerts, no sink to wait for
    assert [d.label for d in daemon_for(fake_gallery, FakeSource(codes)).run().decisions] == ["item1", "item2"]
    config = replace(FAST, events=EventsConfig(max_count=1, max_age_days=0))
    daemon_for(fake_gallery, FakeSource([B, B]), config=config).run()  # retention applies when it starts
    with EventLog(fake_gallery.path, []) as log:
        assert [e.label for e in log.recent()] == ["item2"]


def test_the_roi_is_what_the_model_sees(fake_gallery):
    from edge_retrieval.camera import Frame
    from edge_retrieval.config import RoiConfig
    from edge_retrieval.decide import Decider
    from edge_retrieval.motion import MotionGate

    image = fake_frame(1, shape=(48, 64))
    image[:, 32:] = fake_frame(2, shape=(48, 32))  # item1 on the left, item2 on the right
    recognizer = open_recognizer(FakeEmbedder(), fake_gallery, "whole")
    for roi, label in ((None, "item1"), (RoiConfig(x=0.5, width=0.5), "item2")):
        pipeline = Pipeline([Watch(ITEMS, recognizer, fake_gallery, Decider())], MotionGate(), roi=roi)
        result = pipeline.process(Frame(image, 0.0, 0))
        assert result.ranking.best.label == label
    assert pipeline.box(Frame(image, 0.0, 0)) == (32.0, 0.0, 64.0, 48.0)


def test_per_item_threshold(fake_gallery):
    item1 = fake_gallery.item("item1").id
    fake_gallery.set_thresholds(0.5, {item1: 0.999}, {"preset": "whole"})  # as `calibrate` stores them
    daemon = daemon_for(fake_gallery, FakeSource([1, 1, 1, 2, 2, 2]))
    summary = daemon.run()
    assert [d.label for d in summary.decisions] == ["item2"]  # item1's own threshold is out of reach


def test_sd_notify_ready_watchdog_per_frame_stopping(fake_gallery, notify_socket):
    daemon = daemon_for(
        fake_gallery, FakeSource([1] * 6 + [2] * 4, interval=0.04), notifier=Notifier(notify_socket.path)
    )
    summary = daemon.run()
    assert notify_socket.wait_for("STOPPING=1")
    kinds = [m.split("=")[0] for m in notify_socket.messages]
    assert kinds[0] == "READY" and kinds[-1] == "STOPPING"
    assert kinds.count("WATCHDOG") == summary.frames == 10
    status = [m for m in notify_socket.messages if m.startswith("STATUS=")]
    assert status and "fps" in status[0] and any("last match item" in s for s in status)


def test_stop_event_ends_a_live_loop_quickly(fake_gallery):
    stop = threading.Event()
    daemon = daemon_for(fake_gallery, FakeSource(live=True, code_fn=lambda i: 1, interval=0.01), stop=stop)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    time.sleep(0.3)
    start = time.monotonic()
    stop.set()
    thread.join(2)
    assert not thread.is_alive() and time.monotonic() - start < 0.5


ENROL = textwrap.dedent("""
    import sys, numpy as np
    from edge_retrieval.storage.gallery import Gallery
    with Gallery(sys.argv[1]) as g:
        v = np.zeros(8, np.float32); v[int(sys.argv[2])] = 1
        g.add(sys.argv[3], v, model_sha256="f" * 64, metadata={"owner": "enrolled live"})
""")


def test_gallery_sees_another_process_changes(fake_gallery):
    assert fake_gallery.search(fake_vector(5), k=1).labels[0, 0] != "item5"
    subprocess.run([sys.executable, "-c", ENROL, fake_gallery.path, "5", "item5"], check=True, timeout=60)
    assert fake_gallery.search(fake_vector(5), k=1).labels[0, 0] == "item5"  # same connection, reloaded
    other = Gallery(fake_gallery.path)
    other.remove("item5")
    other.close()
    assert fake_gallery.search(fake_vector(5), k=1).labels[0, 0] != "item5"


def test_enrol_and_remove_while_running_take_effect_within_a_second(fake_gallery):
    """A live camera keeps showing item 5 (static: the motion gate skips the model); another
    process enrols it, then the CLI removes it, while the daemon runs."""
    stop = threading.Event()
    alerts = []
    daemon = daemon_for(
        fake_gallery,
        FakeSource(live=True, code_fn=lambda i: 5, interval=0.02),
        stop=stop,
        on_decision=lambda d, r: alerts.append((d.label, time.monotonic())),
    )
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        time.sleep(0.3)
        assert alerts == []
        subprocess.run([sys.executable, "-c", ENROL, fake_gallery.path, "5", "item5"], check=True, timeout=60)
        enrolled = time.monotonic()
        deadline = enrolled + 3
        while not alerts and time.monotonic() < deadline:
            time.sleep(0.01)
        assert alerts and alerts[0][0] == "item5" and alerts[0][1] - enrolled < 1.0
        assert {"owner": "enrolled live"} in daemon.pipeline.watch(ITEMS).items().values()  # its record came along
        result = CliRunner().invoke(cli, ["remove", "item5", "--gallery", fake_gallery.path])
        assert result.exit_code == 0, result.output
        removed = time.monotonic()
        while daemon.last_result.ranking.best.label == "item5" and time.monotonic() < removed + 3:
            time.sleep(0.01)
        assert daemon.last_result.ranking.best.label != "item5" and time.monotonic() - removed < 1.0
    finally:
        stop.set()
        thread.join(2)
    assert daemon.last_result.embedded is False or daemon.pipeline.metrics.embedded < 5


def test_one_side_configured_is_a_config_error(tmp_path):
    from edge_retrieval.errors import ConfigError

    with pytest.raises(ConfigError, match="source.uri: not set"):
        Daemon(
            Config(gallery=GalleryConfig(path=str(tmp_path / "g.db"))), embedder=FakeEmbedder(), notifier=Notifier(None)
        ).run()


# -- the real model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_clip(tmp_path_factory):
    """The demo clip's rendering with two appearances: an enrolled cat, then the held-out tissue."""
    clip = democlip.DemoClip(0, sequence=("cat", "tissue"))
    return clip.write(tmp_path_factory.mktemp("clip") / "short.avi")


def test_real_model_on_a_demo_clip_alerts_the_enrolled_item_only(embedder, tmp_path, short_clip):
    with Gallery(tmp_path / "demo.db") as gallery:
        enroll(gallery, embedder, [(name, photo(name)) for name in democlip.enrolled()])
    config = Config(source=SourceConfig(uri=str(short_clip)), gallery=GalleryConfig(path=str(tmp_path / "demo.db")))
    summary = Daemon(config, embedder=embedder, notifier=Notifier(None)).run()
    assert [d.label for d in summary.decisions] == ["cat"]
    d = summary.decisions[0]
    assert d.score > PRESETS["default"].threshold  # the default preset's scale (the gallery: uncalibrated)
    assert 2.0 < d.time < 4.0  # while the cat is coming in (it enters at 2 s, fully in at 3 s)
    assert summary.embedded < summary.frames  # the motion gate skipped the still background


def test_a_clip_is_decoded_at_the_model_input_size_and_snapshots_stay_full_size(embedder, tmp_path, short_clip):
    """The whole-frame preset decodes a Motion-JPEG clip's frames at half size (240×320, the
    model's input); the event's box is in the frame's own pixels, its snapshot the full frame."""
    from dataclasses import replace

    from edge_retrieval.config import DecisionConfig, RoiConfig
    from edge_retrieval.sinks import SnapshotConfig

    with Gallery(tmp_path / "demo.db") as gallery:
        enroll(gallery, embedder, [(name, photo(name)) for name in democlip.enrolled()])
    config = Config(
        source=SourceConfig(uri=str(short_clip)),
        gallery=GalleryConfig(path=str(tmp_path / "demo.db")),
        snapshot=SnapshotConfig(enabled=True, folder=str(tmp_path / "snaps")),
        roi=RoiConfig(x=0.0625, y=0.0625, width=0.875, height=0.875),
        decision=DecisionConfig(preset="whole"),
    )
    seen = []
    daemon = Daemon(
        config,
        embedder=embedder,
        notifier=Notifier(None),
        on_decision=lambda decision, result: seen.append(result.frame),
    )
    summary = daemon.run()
    assert daemon._source._yield_to is embedder.idle  # the decoder thread waits while the model runs
    assert [d.label for d in summary.decisions] == ["cat"]
    assert seen[0].image.shape == (240, 320, 3) and seen[0].size == (640, 480)
    with EventLog(tmp_path / "demo.db", []) as log:
        [event] = log.recent()
    assert event.box == (40.0, 30.0, 600.0, 450.0)
    assert cv2.imread(event.snapshot).shape == (480, 640, 3)

    config = replace(
        config,
        decision=replace(config.decision, preset="fast"),
        snapshot=replace(config.snapshot, folder=str(tmp_path / "fast")),
    )
    seen.clear()  # a search preset looks at the full frame
    with Gallery(tmp_path / "demo.db") as gallery:
        gallery.set_thresholds(0.5, report={"preset": "fast"})
    Daemon(
        config,
        embedder=embedder,
        notifier=Notifier(None),
        on_decision=lambda decision, result: seen.append(result.frame),
    ).run()
    assert seen and seen[0].image.shape == (480, 640, 3) and seen[0].jpeg is None


def test_a_search_preset_decides_and_draws_the_outline(embedder, tmp_path, short_clip):
    from dataclasses import replace

    from edge_retrieval.sinks import SnapshotConfig

    with Gallery(tmp_path / "demo.db") as gallery:
        enroll(gallery, embedder, [(name, photo(name)) for name in democlip.enrolled()])
    config = Config(
        source=SourceConfig(uri=str(short_clip)),
        gallery=GalleryConfig(path=str(tmp_path / "demo.db")),
        snapshot=SnapshotConfig(enabled=True, folder=str(tmp_path / "snaps")),
    )
    daemon = Daemon(config, embedder=embedder, notifier=Notifier(None))  # the default preset
    summary = daemon.run()
    assert [d.label for d in summary.decisions] == ["cat"]  # not the held-out tissue
    assert summary.decisions[0].score > PRESETS["default"].threshold  # search's scale (the gallery: uncalibrated)
    assert 0 < summary.embedded < summary.frames  # the motion gate still skips a still scene
    with EventLog(tmp_path / "demo.db", []) as log:
        [event] = log.recent()
    assert event.polygon is not None and len(event.polygon) == 4  # the verified outline
    xs, ys = zip(*event.polygon)
    assert max(xs) > 0 and min(xs) < 640 and max(ys) > 0 and min(ys) < 480  # (the cat may be coming in)
    assert Path(event.snapshot).is_file()

    config = replace(
        config,
        decision=replace(config.decision, preset="fast"),
        snapshot=replace(config.snapshot, folder=str(tmp_path / "fast")),
    )
    with Gallery(tmp_path / "demo.db") as gallery:  # fast: no verification, the best region is drawn
        gallery.set_thresholds(0.5, report={"preset": "fast"})
    Daemon(config, embedder=embedder, notifier=Notifier(None)).run()
    with EventLog(tmp_path / "demo.db", []) as log:
        event = log.recent()[0]
    (x0, y0), (x1, _), (_, y1) = event.polygon[:3]
    assert event.label == "cat" and 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480


def run_service(tmp_path, embedder, *extra, env_extra=None):
    folder = tmp_path / "camera"
    folder.mkdir()
    for name in ("cat", "brick"):
        cv2.imwrite(str(folder / f"{name}.jpg"), cv2.imread(str(photo(name))))
    with Gallery(tmp_path / "g.db") as gallery:
        enroll(gallery, embedder, [("cat", photo("cat"))])
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_retrieval.cli",
            "run",
            "--source",
            str(folder),
            "--gallery",
            str(tmp_path / "g.db"),
            "--fps",
            "10",
            "--set",
            "source.loop=true",
            "--set",
            "source.realtime=true",
            "--set",
            "decision.votes.m=1",
            "--set",
            "decision.votes.n=1",
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_service_process_notifies_and_exits_within_2s_of_a_signal(tmp_path, embedder, notify_socket, signum):
    proc = run_service(tmp_path, embedder, env_extra={"NOTIFY_SOCKET": notify_socket.path})
    try:
        assert notify_socket.wait_for("READY=1", timeout=30), proc.stderr.read() if proc.poll() else ""
        assert notify_socket.wait_for("WATCHDOG=1", timeout=10)
        assert notify_socket.wait_for("last match cat", timeout=10)
        start = time.monotonic()
        proc.send_signal(signum)
        rc = proc.wait(timeout=5)
        elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read()
    assert rc == 0, stderr
    assert elapsed < 2.0
    assert notify_socket.wait_for("STOPPING=1", timeout=1)
    ready = next(i for i, m in enumerate(notify_socket.messages) if m.startswith("READY=1"))
    assert not any(m == "WATCHDOG=1" for m in notify_socket.messages[:ready])  # loaded before the first frame
    assert "alert: cat" in stderr and "stopped:" in stderr


def test_readme_command_shows_alerts_from_the_built_in_default(monkeypatch):
    """`edge-retrieval run` with nothing configured plays the demo clip (rendered into the cache
    on first use) against the demo gallery and alerts each enrolled item once."""
    result = CliRunner().invoke(cli, ["run", "--stats"])
    assert result.exit_code == 0, result.output + result.stderr
    alerts = [line.split("alert: ")[1].split(" ")[0] for line in result.stderr.splitlines() if "alert: " in line]
    expected = [name for name in democlip.SEQUENCE if name not in democlip.HELD_OUT]
    assert alerts == expected
    assert "ended: 475 frame(s) processed" in result.stderr and "identify" in result.stderr  # the default preset
