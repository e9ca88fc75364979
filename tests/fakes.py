"""Fakes of the hardware (camera, interpreter, systemd's notify socket) for tests of the service
loop: they follow the same small protocols as the real parts (`FrameSource`, the embedder's
prepare/invoke/describe), which the real-part tests exercise separately."""

from __future__ import annotations

import json
import threading
import time

import numpy as np

FAKE_DIM = 8
BACKGROUND = 7  # the fake embedder's "nothing": never enrolled


def fake_frame(code: int, shape=(48, 64)) -> np.ndarray:
    """A BGR frame the FakeEmbedder reads as `code` (0..FAKE_DIM-1; BACKGROUND = empty scene)."""
    return np.full((*shape, 3), code * 30, np.uint8)


def fake_vector(code: int) -> np.ndarray:
    v = np.zeros(FAKE_DIM, np.float32)
    v[code] = 1.0
    return v


class FakeEmbedder:
    """Embedder protocol (prepare/invoke/describe/embed) without a model: a frame's pixel value
    names a one-hot vector (plus a little of the next one), so scores are known exactly."""

    sha256 = "f" * 64
    card = None
    dim = FAKE_DIM

    def __init__(self):
        self.invocations = 0

    def prepare(self, frame):
        return np.array([int(frame[0, 0, 0]) // 30], np.int64)

    def invoke(self, tensor):
        self.invocations += 1
        code = int(tensor[0]) % FAKE_DIM
        out = fake_vector(code)
        out[(code + 1) % FAKE_DIM] = 0.1
        return out

    def describe(self, output):
        return output / np.linalg.norm(output)

    def embed(self, frames):
        if isinstance(frames, np.ndarray) and frames.ndim == 3:
            frames = [frames]
        return np.stack([self.describe(self.invoke(self.prepare(f))) for f in frames])

    def close(self):
        pass


class FakeCapture:
    """cv2.VideoCapture stand-in: `frames` codes, one per `interval` s; fails after `fail_after` reads."""

    def __init__(self, codes=None, *, interval=0.0, fail_after=None, fps=10.0, shape=(48, 64)):
        self.codes = list(codes) if codes is not None else None
        self.interval, self.fail_after, self.fps, self.shape = interval, fail_after, fps, shape
        self.reads = 0
        self.released = False
        self._pending = None

    def isOpened(self):
        return not self.released

    def _next(self):
        if self.fail_after is not None and self.reads >= self.fail_after:
            return None
        if self.codes is not None and self.reads >= len(self.codes):
            return None
        if self.interval:
            time.sleep(self.interval)
        code = self.codes[self.reads] if self.codes is not None else self.reads % 5
        self.reads += 1
        return fake_frame(code, self.shape)

    def read(self):
        frame = self._next()
        return (frame is not None, frame)

    def grab(self):
        self._pending = self._next()
        return self._pending is not None

    def retrieve(self):
        return (self._pending is not None, self._pending)

    def get(self, prop):
        import cv2

        return self.fps if prop == cv2.CAP_PROP_FPS else 0.0

    def set(self, prop, value):
        return True

    def release(self):
        self.released = True


class FakeSource:
    """FrameSource from a list of codes (finite) or endless (`live`, a code from `code_fn`)."""

    def __init__(self, codes=(), *, live=False, code_fn=None, interval=0.0, name="fake"):
        from edge_retrieval.camera import Frame

        self._Frame = Frame
        self.codes, self.live, self.code_fn, self.interval, self.name = list(codes), live, code_fn, interval, name
        self.index = 0
        self.closed = False

    def read(self, timeout=0.5):
        from edge_retrieval.camera import SourceEnded

        if not self.live and self.index >= len(self.codes):
            raise SourceEnded(self.name)
        if self.interval:
            time.sleep(self.interval)
        code = self.code_fn(self.index) if self.code_fn else self.codes[self.index]
        frame = self._Frame(fake_frame(code), self.index * 0.1 if not self.live else time.monotonic(), self.index)
        self.index += 1
        return frame

    def close(self):
        self.closed = True


class NotifyListener:
    """A NOTIFY_SOCKET of our own: collects the sd_notify datagrams sent to it."""

    def __init__(self, path):
        import socket

        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except OSError:
                continue

    def wait_for(self, text, timeout=10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in m for m in list(self.messages)):
                return True
            time.sleep(0.01)
        return False

    def close(self):
        self._stop.set()
        self._thread.join(1)
        self.sock.close()


def read_frames(source, n: int, seconds: float = 20.0) -> list:
    """Up to n frames a source gives within `seconds`."""
    frames, deadline = [], time.monotonic() + seconds
    while len(frames) < n and time.monotonic() < deadline:
        frame = source.read(0.2)
        if frame is not None:
            frames.append(frame)
    return frames


class Webhook:
    """A local webhook receiver on a free loopback port: keeps (path, event) of each POST, answers 200."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.received: list[tuple[str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.received.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def events(self, path: str | None = None) -> list[dict]:
        return [event for p, event in self.received if path is None or p == path]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


SMALL_QUAD = np.float32([[380, 150], [560, 165], [555, 330], [390, 345]])


def pasted(photos, name: str, quad: np.ndarray, sigma: float, background: str = "gravel") -> np.ndarray:
    """A bundled photo warped onto `quad` of a 640×480 frame of another (the background), blurred σ `sigma`."""
    import cv2

    from edge_retrieval.preprocess import read_image

    frame = cv2.resize(read_image(photos / f"{background}.jpg"), (640, 480))
    item = read_image(photos / f"{name}.jpg")
    h, w = item.shape[:2]
    H = cv2.getPerspectiveTransform(np.float32([[0, 0], [w, 0], [w, h], [0, h]]), quad)
    mask = cv2.warpPerspective(np.full((h, w), 255, np.uint8), H, (640, 480)) > 0
    frame[mask] = cv2.warpPerspective(item, H, (640, 480))[mask]
    return cv2.GaussianBlur(frame, (0, 0), sigma)


def small_blurred_coins(photos) -> np.ndarray:
    """The bundled coins photo small and tilted (SMALL_QUAD) in the gravel, blurred σ 3: ORB finds
    no inliers left for it, SIFT (the second verifier) does."""
    return pasted(photos, "coins", SMALL_QUAD, 3)


# a large item, tilted: blurred σ 6, neither ORB nor SIFT verifies it, the dense verifier does
LARGE_QUAD = np.float32([[200, 90], [470, 110], [460, 420], [215, 400]])
