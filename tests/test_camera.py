"""Frame sources: a real video file and image folder, fake captures for live ones (dying and coming back)."""

import threading
import time

import cv2
import numpy as np
import pytest
from fakes import FakeCapture, fake_frame, read_frames

from edge_retrieval.camera import (
    Backoff,
    FileSource,
    FolderSource,
    LiveSource,
    Pacer,
    Reconnecting,
    SourceEnded,
    SourceError,
    kind_of,
    open_source,
)
from edge_retrieval.config import SourceConfig

N_FRAMES = 12


def brightness(frame) -> int:
    return int(round(float(frame.image.mean()) / 20))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """12 frames at 10 fps; frame i has brightness 20·i."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for i in range(N_FRAMES):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    return path


def read_all(source, limit=100):
    frames = []
    with pytest.raises(SourceEnded):
        for _ in range(limit):
            frame = source.read()
            if frame is not None:
                frames.append(frame)
    return frames


def test_kind_of(tmp_path):
    assert kind_of("0") == kind_of("/dev/video2") == "device"
    assert kind_of("rtsp://cam/stream") == kind_of("http://cam:8080/video.mjpg") == "url"
    assert kind_of(str(tmp_path)) == "folder"
    assert kind_of("clip.mp4") == "file"


def test_pacer_keeps_a_grid_without_catch_up_bursts():
    p = Pacer(4.0)
    taken = []
    for t in np.arange(0, 2.0, 0.1).round(2):
        if p.due(t):
            taken.append(float(t))
            p.taken(t)
    assert taken == [0.0, 0.3, 0.5, 0.8, 1.0, 1.3, 1.5, 1.8]
    p.taken(10.0)  # fell far behind: the next is due one interval later, not at once
    assert not p.due(10.1) and p.due(10.25)
    assert Pacer(0).due(0) and Pacer(0).wait(5) == 0


def test_video_file_every_frame_with_media_time(video):
    source = FileSource(str(video))
    frames = read_all(source)
    source.close()
    assert [f.index for f in frames] == list(range(N_FRAMES))
    assert [brightness(f) for f in frames] == list(range(N_FRAMES))
    assert [f.time for f in frames] == pytest.approx([i / 10 for i in range(N_FRAMES)])


def test_a_source_is_a_context_manager_that_closes(video, tmp_path):
    with FileSource(str(video)) as source:
        assert source.read() is not None
    with pytest.raises(SourceEnded):  # closed
        source.read()
    (tmp_path / "a.png").write_bytes(cv2.imencode(".png", fake_frame(3))[1].tobytes())
    with FolderSource(str(tmp_path)) as folder:
        assert folder.read() is not None


def test_video_file_at_a_target_fps_and_looping(video):
    source = FileSource(str(video), fps=5)
    assert [f.index for f in read_all(source)] == list(range(0, N_FRAMES, 2))
    source = FileSource(str(video), loop=True)
    frames = [source.read() for _ in range(2 * N_FRAMES + 3)]
    assert [f.index for f in frames] == list(range(2 * N_FRAMES + 3))  # numbers keep counting
    assert frames[N_FRAMES].time == pytest.approx(1.2) and brightness(frames[N_FRAMES]) == 0
    assert np.all(np.diff([f.time for f in frames]) > 0)


def test_video_file_in_realtime_drops_what_a_slow_pipeline_missed(video):
    source = FileSource(str(video), realtime=True)
    first = source.read()
    time.sleep(0.35)  # a slow frame: 3 frames went by meanwhile
    second = source.read()
    assert first.index == 0 and second.index == 3
    assert source.frames_skipped == 2


@pytest.fixture(scope="module")
def photo_clip(tmp_path_factory):
    """A 640×480 Motion-JPEG clip of a real photo drifting right, 6 frames at 10 fps."""
    from edge_retrieval.demo import photo

    image = cv2.resize(cv2.imread(str(photo("cat"))), (640, 480), interpolation=cv2.INTER_AREA)
    path = tmp_path_factory.mktemp("photo_clip") / "cat.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (640, 480))
    for i in range(6):
        writer.write(np.roll(image, 8 * i, axis=1))
    writer.release()
    return path


def mean_difference(a, b) -> float:
    return float(np.abs(a.astype(np.int16) - b).mean())


def test_a_motion_jpeg_file_decodes_at_the_size_asked_and_keeps_the_full_frame(photo_clip):
    full = read_all(FileSource(str(photo_clip)))
    reduced = read_all(FileSource(str(photo_clip), decode_size=(320, 240)))
    assert [(f.index, f.time) for f in reduced] == [(f.index, f.time) for f in full]
    for small, big in zip(reduced, full):
        assert small.image.shape == (240, 320, 3) and small.size == (640, 480) and big.jpeg is None
        assert mean_difference(small.image, cv2.resize(big.image, (320, 240), interpolation=cv2.INTER_AREA)) < 1.5
        assert mean_difference(small.full(), big.image) < 1.5  # libjpeg, not FFmpeg: rounding apart
    # the largest reduction that keeps the size asked: 1/4 for 100×100; none for 400×300
    quarter, none = (FileSource(str(photo_clip), decode_size=size, prefetch=False) for size in ((100, 100), (400, 300)))
    assert quarter.read().image.shape == (120, 160, 3)
    frame = none.read()
    assert frame.image.shape == (480, 640, 3) and frame.jpeg is None
    quarter.close(), none.close()


@pytest.mark.parametrize("decode_size", [(320, 240), None])
def test_a_file_decoder_yields_to_the_model(photo_clip, decode_size):
    """With `yield_to` clear (the model running) the decoder thread starts no decode, reduced or
    full; once set, the frames come as they would without it, in order."""
    model_idle = threading.Event()
    source = FileSource(str(photo_clip), decode_size=decode_size, yield_to=model_idle)
    try:
        assert source.read(0.3) is None  # the decoder waits: nothing decoded
        assert source._pass_decoded == 0
        model_idle.set()
        frames = [source.read(2.0) for _ in range(6)]
    finally:
        source.close()
    expected = read_all(FileSource(str(photo_clip), decode_size=decode_size))
    assert [(f.index, f.image.shape) for f in frames] == [(f.index, f.image.shape) for f in expected]
    assert all(mean_difference(a.image, b.image) == 0 for a, b in zip(frames, expected))


def test_a_reduced_file_stays_reduced_when_it_loops(photo_clip):
    source = FileSource(str(photo_clip), loop=True, decode_size=(320, 240))
    frames = [source.read() for _ in range(9)]
    source.close()
    assert [f.index for f in frames] == list(range(9))
    assert all(f.image.shape == (240, 320, 3) for f in frames)
    assert mean_difference(frames[6].image, frames[0].image) == 0  # the same first frame again


def test_a_reduced_frame_ignores_an_exif_orientation_as_ffmpeg_does():
    """A JPEG packet may carry an EXIF orientation: FFmpeg does not apply it, so neither does
    the reduced decode nor `Frame.full`, and the header's size stays the image's."""
    import struct

    from edge_retrieval.camera.frame import Frame, _decode_reduced

    ok, encoded = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8))
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff  # orientation 6: shown turned a quarter
    data = encoded.tobytes()
    jpeg = np.frombuffer(data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:], np.uint8)
    assert cv2.imdecode(jpeg, cv2.IMREAD_COLOR).shape == (64, 48, 3)  # (the orientation is there)
    frame = Frame(_decode_reduced(jpeg, 2), 0.0, 0, jpeg=jpeg)
    assert frame.image.shape == (24, 32, 3) and frame.size == (64, 48) and frame.full().shape == (48, 64, 3)
    damaged = jpeg.copy()
    damaged[len(damaged) // 2 : len(damaged) // 2 + 4] = [0xFF, 0x31, 0xFF, 0x32]  # markers that cannot be there
    assert _decode_reduced(damaged, 2) is None


def test_other_codecs_decode_at_full_size(tmp_path):
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (128, 96))
    for i in range(3):
        writer.write(np.full((96, 128, 3), 40 * i, np.uint8))
    writer.release()
    frames = read_all(FileSource(str(path), decode_size=(32, 24)))
    assert len(frames) == 3 and all(f.image.shape == (96, 128, 3) and f.jpeg is None for f in frames)


def test_missing_file_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        open_source(SourceConfig(uri=str(tmp_path / "nope.mp4")))


def test_image_folder_plays_in_order_and_skips_bad_files(tmp_path):
    for i in (2, 0, 1):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), np.full((48, 64, 3), 20 * i, np.uint8))
    (tmp_path / "img1b.jpg").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    source = open_source(SourceConfig(uri=str(tmp_path), fps=2.0))
    assert isinstance(source, FolderSource) and not source.live
    frames = read_all(source)
    assert [brightness(f) for f in frames] == [0, 1, 2]
    assert [f.time for f in frames] == [0.0, 0.5, 1.5]  # the bad file took its slot


def test_watched_folder_hands_over_the_newest_new_image(tmp_path):
    cv2.imwrite(str(tmp_path / "old.png"), fake_frame(1))
    source = FolderSource(str(tmp_path), watch=True, poll=0.01)
    assert source.live and source.read(0.05) is None  # files present at start are not new
    for i, name in enumerate(("a.png", "b.png", "c.png")):
        cv2.imwrite(str(tmp_path / name), np.full((48, 64, 3), 20 * (i + 2), np.uint8))
        t = time.time() + i
        import os

        os.utime(tmp_path / name, (t, t))
    frame = source.read(1.0)
    assert brightness(frame) == 4  # c.png, the newest; a and b are dropped
    assert source.read(0.05) is None


def test_live_source_hands_over_the_newest_frame():
    cap = FakeCapture(interval=0.005)
    source = LiveSource("0", open_fn=lambda uri: cap)
    first = source.read(1.0)
    deadline = time.monotonic() + 5
    while cap.reads < first.index + 12 and time.monotonic() < deadline:  # the pipeline is busy meanwhile
        time.sleep(0.01)
    reads = cap.reads
    second = source.read(1.0)
    assert second.index >= reads - 1  # the newest (or one just after), not the next in a queue
    assert source.frames_dropped == second.index - first.index - 1 >= 10
    source.close()
    assert cap.released


def test_live_source_at_a_target_fps():
    source = LiveSource("0", fps=20, open_fn=lambda uri: FakeCapture(interval=0.002))
    start = time.monotonic()
    frames = [source.read(1.0) for _ in range(6)]
    elapsed = time.monotonic() - start
    source.close()
    assert all(frames) and 0.2 <= elapsed < 0.6


def test_backoff_doubles_up_to_the_cap_and_resets():
    b = Backoff(0.5, 4.0)
    assert [b.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next() == 0.5


def test_a_live_source_that_dies_mid_stream_comes_back():
    """The camera delivers 5 frames and dies; reopening fails twice; then it delivers again."""
    opened = []

    def open_fn(uri):
        opened.append(time.monotonic())
        n = len(opened)
        if n in (2, 3):
            raise SourceError(f"{uri}: cannot open device")
        return FakeCapture(codes=[n] * 1000, fail_after=5 if n == 1 else None, interval=0.002)

    stop = threading.Event()
    source = Reconnecting(
        lambda: LiveSource("0", open_fn=open_fn, read_timeout=1.0), "cam", backoff=Backoff(0.05, 0.2), stop=stop
    )
    got = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len([c for c in got if c == 4]) < 3:
        frame = source.read(0.1)
        if frame is not None:
            got.append(int(frame.image[0, 0, 0]) // 30)
    source.close()
    assert got[0] == 1 and got[-1] == 4 and set(got) == {1, 4}
    assert source.failures == 3 and source.attempts == 4  # died, 2 failed opens, then back
    waits = np.diff(opened)
    assert waits[1] == pytest.approx(0.1, abs=0.05) and waits[2] == pytest.approx(0.2, abs=0.05)  # backoff
    assert source.backoff.failures == 0  # reset by the frames after reconnecting


def test_reconnect_wait_ends_at_once_on_stop():
    stop = threading.Event()
    source = Reconnecting(lambda: (_ for _ in ()).throw(SourceError("down")), "cam", backoff=Backoff(30, 30), stop=stop)
    assert source.read(0.01) is None  # first attempt fails: next in 30 s
    threading.Timer(0.05, stop.set).start()
    start = time.monotonic()
    assert source.read(5.0) is None
    assert time.monotonic() - start < 0.5


def test_open_source_wraps_devices_and_urls_in_reconnecting():
    source = open_source(SourceConfig(uri="rtsp://127.0.0.1:1/none", reconnect_initial=0.1, reconnect_max=0.1))
    assert isinstance(source, Reconnecting) and source.live and not source.connected
    source.close()


def mjpeg_avi(path, code, frames=40):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for _ in range(frames):
        writer.write(fake_frame(code))
    writer.release()
    return path.read_bytes()


def test_a_real_http_stream_that_dies_mid_stream_comes_back(tmp_path):
    """Over real HTTP through OpenCV/FFmpeg: the first connection breaks off half-way, the
    second is refused (503), the third streams again."""
    import http.server
    import socketserver

    first, third = mjpeg_avi(tmp_path / "a.avi", 1), mjpeg_avi(tmp_path / "b.avi", 4)
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(time.monotonic())
            if len(requests) == 2:
                self.send_error(503)
                return
            body = first[: len(first) // 2] if len(requests) == 1 else third
            self.send_response(200)
            self.send_header("Content-Type", "video/x-msvideo")
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/stream.avi"
    source = open_source(SourceConfig(uri=url, reconnect_initial=0.05, reconnect_max=0.1, read_timeout=2.0))
    codes = []
    try:
        deadline = time.monotonic() + 20
        while 4 not in codes and time.monotonic() < deadline:
            frame = source.read(0.2)
            if frame is not None:
                codes.append(round(float(frame.image.mean()) / 30))
    finally:
        source.close()
        server.shutdown()
        server.server_close()
    assert codes[0] == 1 and codes[-1] == 4
    assert len(requests) >= 3 and source.failures >= 2


class MjpegServer:
    """A real HTTP Motion-JPEG camera, as an ESP32-CAM or mjpg-streamer serves one: each GET gets
    `jpegs` as multipart/x-mixed-replace parts, `interval` s apart, then the connection ends."""

    def __init__(self, jpegs: list[bytes], interval: float = 0.05):
        import http.server
        import socketserver

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    for jpeg in jpegs:
                        self.wfile.write(
                            b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                            + jpeg
                            + b"\r\n"
                        )
                        time.sleep(interval)
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_http_mjpeg_camera_decodes_only_what_it_hands_over_at_the_size_asked(tmp_path):
    """A stream URL whose codec is Motion-JPEG hands over packets: the frame handed over is
    decoded at 1/2 (320×240 for a 640×480 camera), keeps its JPEG for the full picture and
    its size for boxes; the frames dropped as stale are never decoded."""
    from edge_retrieval.demo import photo

    image = cv2.resize(cv2.imread(str(photo("cat"))), (640, 480), interpolation=cv2.INTER_AREA)
    jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    full = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    server = MjpegServer([jpeg] * 400, interval=0.01)
    try:
        source = open_source(SourceConfig(uri=server.url, fps=20), decode_size=(320, 240))
        try:
            frames = read_frames(source, 4)
        finally:
            source.close()
        plain = open_source(SourceConfig(uri=server.url))
        try:
            [whole] = read_frames(plain, 1)
        finally:
            plain.close()
    finally:
        server.close()
    assert len(frames) == 4
    for frame in frames:
        assert frame.image.shape == (240, 320, 3) and frame.size == (640, 480)
        assert mean_difference(frame.image, cv2.resize(full, (320, 240), interpolation=cv2.INTER_AREA)) < 1.5
        assert frame.full().shape == (480, 640, 3) and mean_difference(frame.full(), full) < 1.5
    assert [f.index for f in frames] == sorted({f.index for f in frames})  # newest each time, in order
    assert frames[-1].index - frames[0].index > 3  # 100 frames/s served, 20 taken: the rest were dropped
    assert whole.image.shape == (480, 640, 3) and whole.jpeg is None  # not asked: decoded by the capture


def test_a_damaged_packet_of_an_http_mjpeg_camera_is_dropped_and_counted(caplog):
    good = cv2.imencode(".jpg", np.full((480, 640, 3), 90, np.uint8))[1].tobytes()
    damaged = good[: len(good) // 2]  # cut in its image data: no end-of-image marker
    server = MjpegServer([good, damaged, good, damaged, good], interval=0.3)
    source = LiveSource(server.url, decode_size=(320, 240), read_timeout=5.0)
    try:
        frames = read_frames(source, 3, seconds=10)
    finally:
        source.close()
        server.close()
    assert [f.image.shape for f in frames] == [(240, 320, 3)] * 3
    assert source.frames_damaged == 2 and [f.index for f in frames] == [0, 2, 4]
    assert caplog.text.count("damaged frame(s) skipped") == 1  # logged once, then counted


@pytest.mark.parametrize(
    "image, kind, converted",
    [
        (fake_frame(1), None, False),
        (np.full((48, 64), 30, np.uint8), "grey", True),
        (np.full((48, 64, 1), 30, np.uint8), "grey", True),
        (np.full((48, 64, 4), 30, np.uint8), "bgra", True),
        (np.zeros((48, 64, 3), np.uint8), "black", False),
        (np.full((48, 64, 3), 253, np.uint8), "white", False),
        (None, "none", None),
        ([[1, 2]], "not an array", None),
        (np.zeros((0, 0, 3), np.uint8), "empty", None),
        (np.zeros((2, 48, 64, 3), np.uint8), "bad shape", None),
        (np.zeros((48, 64, 2), np.uint8), "bad channels", None),
        (np.zeros((48, 64, 3), np.float32), "bad dtype", None),
        (np.zeros((48, 8, 3), np.uint8), "too small", None),
    ],
)
def test_inspect_image_drops_garbage_and_converts_grey_and_bgra(image, kind, converted):
    from edge_retrieval.camera import DROPPED, NOTED, inspect_image

    out, got, detail = inspect_image(image)
    assert got == kind and bool(detail) == (kind is not None)
    if isinstance(image, np.ndarray) and kind is not None:
        assert detail == f"{image.dtype} {tuple(image.shape)}"  # the frame as handed over
    if converted is None:
        assert out is None and kind in DROPPED
    else:
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and out.shape[:2] == (48, 64)
        assert (out is image) != converted and (kind is None or kind in NOTED)
