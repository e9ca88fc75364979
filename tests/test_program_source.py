"""The program source (`exec:`): a real ffmpeg writing Motion-JPEG to its stdout, as rpicam-vid does on a Pi."""

import importlib.machinery
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from fakes import read_frames

from edge_retrieval import democlip
from edge_retrieval.camera import ProgramCapture, Reconnecting, SourceError, kind_of, open_source, program_argv
from edge_retrieval.camera.program import JpegSplitter
from edge_retrieval.config import SourceConfig
from edge_retrieval.demo import photo

needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ffmpeg absent (apt-get install ffmpeg; listed in .ci/apt-packages.txt)"
)
FFMPEG = "ffmpeg -nostdin -loglevel error"
TESTSRC = f"{FFMPEG} -re -f lavfi -i testsrc=size=640x480:rate=10 -f mjpeg -q:v 5 -"


def jpeg(name: str, size=(640, 480), quality=90) -> bytes:
    image = cv2.resize(cv2.imread(str(photo(name))), size, interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def mean_difference(a, b) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def gone(pid: int) -> bool:
    """No such process, or a zombie left to an init that does not reap (what a container's may not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_the_splitter_cuts_a_byte_stream_into_its_jpegs_whatever_the_chunks():
    """Garbage before, between and after; an EXIF thumbnail (a JPEG inside the first one's APP1
    header) is not cut out; a JPEG whose header is broken is dropped."""
    thumb = jpeg("coffee", (64, 48))
    app1 = b"Exif\0\0" + thumb
    with_thumbnail = jpeg("cat")[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + jpeg("cat")[2:]
    assert cv2.imdecode(np.frombuffer(with_thumbnail, np.uint8), cv2.IMREAD_COLOR).shape == (480, 640, 3)
    broken = b"\xff\xd8\x12\x34 not a header"
    packets = [with_thumbnail, jpeg("rocket", quality=50), jpeg("astronaut", (320, 240))]
    stream = b"noise\xff" + packets[0] + broken + packets[1] + b"\x00\xff\x00" + packets[2] + b"tail\xff"
    rng = np.random.default_rng(0)
    for _ in range(20):
        splitter, out, i = JpegSplitter(), [], 0
        while i < len(stream):
            n = int(rng.integers(1, 5000))
            out += splitter.feed(stream[i : i + n])
            i += n
        assert out == packets
        assert len(splitter.buffer) <= 1  # nothing held but a last 0xFF


def test_kind_and_argv_of_an_exec_source():
    assert kind_of("exec:rpicam-vid -t 0 --codec mjpeg -o -") == "program"
    assert kind_of("exec:ffmpeg -i rtsp://cam/stream -f mjpeg -") == "program"  # not a URL
    assert program_argv("exec:ffmpeg -i 'a file.mp4' -f mjpeg -") == ["ffmpeg", "-i", "a file.mp4", "-f", "mjpeg", "-"]
    with pytest.raises(SourceError, match="no-such-camera-program: program not found"):
        program_argv("exec:no-such-camera-program -o -")
    with pytest.raises(SourceError, match="names no program"):
        program_argv("exec:  ")
    with pytest.raises(SourceError, match="cannot split"):
        program_argv("exec:ffmpeg -i 'unclosed")


def test_a_missing_program_is_a_one_line_error_at_start(tmp_path):
    with pytest.raises(SourceError, match="program not found"):
        open_source(SourceConfig(uri="exec:no-such-camera-program --codec mjpeg -o -"))
    result = subprocess.run(
        [sys.executable, "-m", "edge_retrieval.cli", "run", "-s", "exec:no-such-camera-program -o -", "-g", "g.db"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: no-such-camera-program: program not found (source exec:no-such-camera-program -o -)"]


@needs_ffmpeg
def test_frames_from_a_real_ffmpeg_pipe_are_the_photo_decoded_at_the_size_asked(tmp_path):
    """ffmpeg plays a photo as a 10 fps Motion-JPEG camera: each frame handed over is decoded at
    half size (the model's 320×240), keeps its JPEG for the full picture and its size for boxes,
    and is the photo; frames come in order, the newest each time."""
    still = tmp_path / "cat.png"
    image = cv2.resize(cv2.imread(str(photo("cat"))), (640, 480), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(still), image)
    uri = f"exec:{FFMPEG} -re -loop 1 -framerate 10 -i {still} -f mjpeg -q:v 2 -"
    with open_source(SourceConfig(uri=uri, name="cam"), decode_size=(320, 240)) as source:
        assert isinstance(source, Reconnecting) and source.live
        frames = read_frames(source, 5)
    assert len(frames) == 5
    small = cv2.resize(image, (320, 240), interpolation=cv2.INTER_AREA)
    for frame in frames:
        assert frame.image.shape == (240, 320, 3) and frame.size == (640, 480)
        assert mean_difference(frame.image, small) < 3.0
        assert frame.full().shape == (480, 640, 3) and mean_difference(frame.full(), image) < 3.0
    assert [f.index for f in frames] == sorted({f.index for f in frames})
    with open_source(SourceConfig(uri=uri)) as plain:  # no size asked: decoded whole
        [whole] = read_frames(plain, 1)
    assert whole.image.shape == (480, 640, 3) and whole.jpeg is None and mean_difference(whole.image, image) < 3.0


@needs_ffmpeg
def test_a_program_that_exits_is_started_again_with_backoff(caplog):
    caplog.set_level(logging.INFO)
    uri = f"exec:{FFMPEG} -re -f lavfi -i testsrc=size=640x480:rate=10 -t 1 -f mjpeg -q:v 5 -"
    config = SourceConfig(uri=uri, name="cam", reconnect_initial=0.2, reconnect_max=0.4)
    with open_source(config, decode_size=(320, 240)) as source:
        frames = read_frames(source, 25, seconds=20)  # 10 a run: the third run's frames
        assert source.failures >= 2 and source.attempts >= 3
        assert "ffmpeg exited with status 0" in source.last_error
    assert len(frames) == 25 and all(f.image.shape == (240, 320, 3) for f in frames)
    assert "receiving frames again" in caplog.text


@needs_ffmpeg
def test_stderr_is_logged_line_by_line_and_named_when_the_program_fails(caplog, tmp_path):
    caplog.set_level(logging.INFO)
    missing = tmp_path / "no-such-clip.mp4"
    config = SourceConfig(uri=f"exec:{FFMPEG} -i {missing} -f mjpeg -", name="cam", reconnect_initial=5)
    with open_source(config) as source:
        deadline = time.monotonic() + 20
        while not source.failures and time.monotonic() < deadline:
            assert source.read(0.2) is None
    assert f"cam: {missing}: No such file or directory" in caplog.text  # the program's own line
    assert source.last_error == f"capture failed (ffmpeg exited with status 1: {missing}: No such file or directory)"


@needs_ffmpeg
def test_a_program_not_writing_jpegs_fails_with_a_reason():
    capture = ProgramCapture(program_argv(f"exec:{FFMPEG} -f lavfi -i testsrc=size=640x480 -t 5 -f rawvideo -"))
    try:
        with pytest.raises(SourceError, match="without a JPEG: is it Motion-JPEG"):
            capture.read()
    finally:
        capture.release()
    assert gone(capture.pid)


@needs_ffmpeg
def test_closing_kills_the_program_and_its_group_without_a_zombie(tmp_path):
    """A shell that started ffmpeg and a sleeping child: closing the source ends all three, at once."""
    pids = tmp_path / "pids"
    script = f"sleep 300 & echo $! > {pids}; {TESTSRC}; wait"
    capture_pids = []

    def opened(argv, name):
        capture = ProgramCapture(argv, name)
        capture_pids.append(capture.pid)
        return capture

    config = SourceConfig(uri=f"exec:sh -c {script!r}", name="cam")
    source = open_source(config, open_fn=lambda uri: opened(program_argv(uri), "cam"), decode_size=(320, 240))
    assert len(read_frames(source, 3)) == 3
    ffmpeg = subprocess.run(["pgrep", "-g", str(capture_pids[0]), "ffmpeg"], capture_output=True, text=True)
    children = [int(p) for p in ffmpeg.stdout.split()] + [int(pids.read_text())]
    assert len(children) == 2 and not any(gone(p) for p in children)
    start = time.monotonic()
    source.close()
    assert time.monotonic() - start < 1.5
    assert not os.path.exists(f"/proc/{capture_pids[0]}")  # the program itself: reaped, no zombie
    deadline = time.monotonic() + 2
    while not all(gone(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(gone(p) for p in children)


def test_a_program_ignoring_sigterm_is_killed(monkeypatch, tmp_path):
    from edge_retrieval.camera import program

    monkeypatch.setattr(program, "TERM_GRACE", 0.3)
    frame = tmp_path / "frame.jpg"
    frame.write_bytes(jpeg("cat"))
    code = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"data = open({str(frame)!r}, 'rb').read()\n"
        "while True:\n    sys.stdout.buffer.write(data); sys.stdout.flush(); time.sleep(0.1)"
    )
    capture = ProgramCapture([sys.executable, "-c", code], "stubborn")
    assert capture.read()[0]
    start = time.monotonic()
    capture.release()
    assert 0.3 <= time.monotonic() - start < 2.0
    assert not os.path.exists(f"/proc/{capture.pid}")


@pytest.mark.slow
@needs_ffmpeg
def test_the_demo_through_an_ffmpeg_pipe_alerts_each_enrolled_item(tmp_path):
    """`edge-retrieval run --demo --source "exec:ffmpeg … the demo clip as Motion-JPEG"`: the demo
    gallery watching a live program at the clip's own 10 fps alerts each enrolled item once, in
    order; SIGTERM stops the service and the program with it."""
    clip = democlip.clip_path(0)  # the cache under tmp (conftest); the service inherits it
    uri = f"exec:{FFMPEG} -re -i {clip} -c copy -f mjpeg -"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_retrieval.cli", "run", "--demo", "--source", uri, "--set", "source.name=pipe"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    expected = [name for name in democlip.SEQUENCE if name not in democlip.HELD_OUT]
    alerts, lines = [], []
    try:
        deadline = time.monotonic() + democlip.DemoClip(0).duration + 60
        while alerts != expected and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "alert: " in line:
                alerts.append(line.split("alert: ")[1].split(" ")[0])
        ffmpeg = subprocess.run(["pgrep", "-P", str(proc.pid), "ffmpeg"], capture_output=True, text=True)
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=10)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert alerts == expected, "".join(lines)
    assert "from pipe" in "".join(lines) and "stopped:" in rest and proc.returncode == 0
    assert all(gone(int(pid)) for pid in ffmpeg.stdout.split())


def test_a_silent_program_is_killed_and_started_again_after_the_read_timeout():
    """A program that writes nothing (a camera stuck in its driver) holds the grabber in a read
    on the pipe: the source kills it after `read_timeout` and starts a new one."""
    pids = []

    def opened(uri):
        capture = ProgramCapture(program_argv(uri), "silent")
        pids.append(capture.pid)
        return capture

    config = SourceConfig(uri="exec:sleep 300", read_timeout=0.5, reconnect_initial=0.1, reconnect_max=0.1)
    with open_source(config, open_fn=opened) as source:
        deadline = time.monotonic() + 10
        while len(pids) < 2 and time.monotonic() < deadline:
            assert source.read(0.2) is None
        assert source.failures >= 1 and "no frame for" in source.last_error and not source.stuck
    assert len(pids) >= 2 and all(gone(pid) for pid in pids)


# -- picamera2 (not importable here: a stand-in module with Picamera2's calls, no hardware) --------


class StandInPicamera2:
    """What camera/picamera.py calls of picamera2.Picamera2 (its manual's video configuration and
    capture_array), handing over a photo at the size configured, at most `fps` a second."""

    cameras = ["imx708"]
    opened: list = []

    def __init__(self, camera_num=0):
        if camera_num >= len(self.cameras):
            raise IndexError("list index out of range")  # what Picamera2 raises for a camera not there
        self.num, self.calls, self.size, self.fps = camera_num, [], None, 30.0
        StandInPicamera2.opened.append(self)

    def create_video_configuration(self, main=None, controls=None):
        return {"main": main, "controls": controls or {}}

    def configure(self, config):
        self.calls.append(("configure", config))
        self.size, self.fps = config["main"]["size"], config["controls"].get("FrameRate", 30.0)

    def start(self):
        self.calls.append("start")

    def capture_array(self, name="main"):
        time.sleep(1 / self.fps)
        return cv2.resize(cv2.imread(str(photo("cat"))), self.size, interpolation=cv2.INTER_AREA)

    def stop(self):
        self.calls.append("stop")

    def close(self):
        self.calls.append("close")


@pytest.fixture
def picamera2(monkeypatch):
    import types

    module = types.ModuleType("picamera2")
    module.__spec__ = importlib.machinery.ModuleSpec("picamera2", None)
    module.Picamera2 = StandInPicamera2
    StandInPicamera2.opened = []
    monkeypatch.setitem(sys.modules, "picamera2", module)
    return StandInPicamera2


def test_without_the_picamera2_module_a_picamera2_source_is_a_one_line_error():
    if importlib.util.find_spec("picamera2") is not None:
        pytest.skip("picamera2 is installed here")
    with pytest.raises(SourceError, match="the picamera2 module is not installed"):
        open_source(SourceConfig(uri="picamera2:0"))


def test_a_picamera2_source_configures_the_camera_and_hands_over_its_frames(picamera2):
    assert kind_of("picamera2") == kind_of("picamera2:1") == "picamera2"
    config = SourceConfig(uri="picamera2:0", name="pi", width=320, height=240, fps=20)
    with open_source(config) as source:
        frames = read_frames(source, 3)
    [camera] = picamera2.opened
    assert camera.calls[0] == (
        "configure",
        {"main": {"size": (320, 240), "format": "RGB888"}, "controls": {"FrameRate": 20.0}},
    )
    assert camera.calls[1] == "start" and camera.calls[-2:] == ["stop", "close"]
    assert [f.image.shape for f in frames] == [(240, 320, 3)] * 3
    with pytest.raises(SourceError, match="must be a number"):
        open_source(SourceConfig(uri="picamera2:front"))
    with open_source(SourceConfig(uri="picamera2:1", reconnect_initial=5)) as missing:  # no second camera
        deadline = time.monotonic() + 5
        while not missing.failures and time.monotonic() < deadline:
            missing.read(0.1)
    assert missing.last_error == "picamera2:1: cannot start the camera (list index out of range)"


def test_a_camera_url_in_a_command_line_is_redacted_in_names_errors_and_stderr(caplog, tmp_path):
    from edge_retrieval.camera import source_name
    from edge_retrieval.config import Config, redacted

    uri = f"exec:{FFMPEG} -rtsp_transport tcp -i rtsp://user:Cam-pass-1@127.0.0.1:1/s?token=Cam-tok-2 -f mjpeg -"
    shown = f"exec:{FFMPEG} -rtsp_transport tcp -i rtsp://***@127.0.0.1:1/s?token=*** -f mjpeg -"
    assert source_name(SourceConfig(uri=uri)) == shown
    assert redacted(Config(source=SourceConfig(uri=uri))).source.uri == shown
    if shutil.which("ffmpeg") is None:
        return
    caplog.set_level(logging.INFO)
    with open_source(SourceConfig(uri=uri, reconnect_initial=5)) as source:  # ffmpeg names the URL it cannot open
        deadline = time.monotonic() + 20
        while not source.failures and time.monotonic() < deadline:
            source.read(0.2)
    assert "rtsp://***@127.0.0.1:1" in caplog.text + source.last_error
    assert "Cam-pass-1" not in caplog.text + source.last_error and "Cam-tok-2" not in caplog.text
