"""A Raspberry Pi camera module through Picamera2 (`picamera2:` URIs, `picamera2:1` for the
second camera), where that module is importable: Raspberry Pi OS ships it (apt package
python3-picamera2; a venv sees it when made with --system-site-packages).

`Picamera2Capture` is a `Capture` (base.py) handing over the camera's BGR frames, so
`LiveSource` keeps the newest and `Reconnecting` reopens the camera after a failure, as for
any live source. Not run on a Pi here: written to the Picamera2 manual, tested against a
stand-in module only. `exec:rpicam-vid … --codec mjpeg -o -` (program.py) is the tested route.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from .base import SourceError

PREFIX = "picamera2:"
DEFAULT_SIZE = (640, 480)  # twice the model's input: decoded frames stay sharp after the resize


def camera_number(uri: str) -> int:
    """The camera a `picamera2:` URI names (0 when none); SourceError when it is not a number or the
    picamera2 module is absent."""
    number = uri.strip()[len(PREFIX) :] or "0"
    if not number.isdigit():
        raise SourceError(f"{uri}: the camera must be a number (picamera2:0, picamera2:1)")
    if importlib.util.find_spec("picamera2") is None:
        raise SourceError(
            f"{uri}: the picamera2 module is not installed (Raspberry Pi OS: apt install python3-picamera2, "
            "in a venv made with --system-site-packages); or use exec:rpicam-vid"
        )
    return int(number)


class Picamera2Capture:
    """The part of cv2.VideoCapture a `LiveSource` uses, over a started Picamera2 camera: `read`
    hands over its next frame, BGR (Picamera2's "RGB888" is stored B, G, R, as OpenCV wants)."""

    def __init__(self, camera: int = 0, width: int = 0, height: int = 0, fps: float = 0.0):
        size = (width or DEFAULT_SIZE[0], height or DEFAULT_SIZE[1])
        self._camera = None
        try:
            from picamera2 import Picamera2  # (its libcamera bindings may still fail to load)

            self._camera = Picamera2(camera)
            config = self._camera.create_video_configuration(
                main={"size": size, "format": "RGB888"}, controls={"FrameRate": float(fps)} if fps else {}
            )
            self._camera.configure(config)
            self._camera.start()
        except Exception as e:  # no such camera (IndexError), busy (RuntimeError), …
            self.release()
            raise SourceError(f"{PREFIX}{camera}: cannot start the camera ({e})") from None

    def isOpened(self) -> bool:
        return self._camera is not None

    def read(self) -> tuple[bool, np.ndarray | None]:
        return True, self._camera.capture_array("main")

    def get(self, prop: int) -> float:
        return 0.0  # (not Motion-JPEG: frames come decoded)

    def set(self, prop: int, value: float) -> bool:
        return False

    def release(self) -> None:
        if self._camera is not None:
            camera, self._camera = self._camera, None
            try:
                camera.stop()
            finally:
                camera.close()
