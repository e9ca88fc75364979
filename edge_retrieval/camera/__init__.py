"""Frame sources: V4L2 devices, video files, stream URLs, programs writing Motion-JPEG
(`exec:rpicam-vid … -o -`), Picamera2 cameras and folders of images.

Every source speaks the small `FrameSource` protocol: `read(timeout)` hands over the next
`Frame` to process, or None when none is due within `timeout`; a finite source raises
`SourceEnded` at its end and any source raises `SourceError` when it fails. A source's `alive`
says whether its None means "waiting, as designed" (a watched folder with no new file, a camera
being reconnected) rather than "no progress" (a decoder or a capture that stopped answering):
the daemon feeds the systemd watchdog while it waits, never while it is stuck.

A camera can hand over anything: `inspect_image` tells a frame to process from garbage
(None, empty, tiny, wrong shape or dtype), converts grey and BGRA frames to BGR, and notes
all-black and all-white ones.

Live sources (devices, URLs, programs, watched folders) always hand over their *newest* frame: a
`Grabber` thread drains the capture continuously and keeps only the latest frame, so latency
never builds up however slow the processing is. `Reconnecting` wraps a live source and
reopens it after a failure with a capped exponential backoff that waits on the stop event.
Files and folders play every frame (or, at a target fps, one frame per 1/fps of media time)
and give each frame its media time, so what follows (votes, cooldowns) does not depend on
how fast the machine is.

One idea a file: `base` (the `FrameSource` base, its errors, `open_capture`, `Pacer`), `frame`
(`Frame`, `inspect_image`, Motion-JPEG packets), `files`, `folder`, `live` (the sources) and
`program` (a program's stdout as the capture a `LiveSource` reads; `picamera`, Picamera2's).
This file opens the source a config names and re-exports what the rest of the code imports.
"""

from __future__ import annotations

import threading
from typing import Callable

from ..sinks import redact_url, redact_urls
from .base import Capture, FrameSource, Pacer, SourceEnded, SourceError, kind_of, open_capture
from .files import FileSource
from .folder import FolderSource
from .frame import DROPPED, NOTED, Frame, inspect_image
from .live import MAX_STUCK, Backoff, LiveSource, Reconnecting
from .picamera import Picamera2Capture, camera_number
from .program import ProgramCapture, program_argv

__all__ = [
    "DROPPED",
    "MAX_STUCK",
    "NOTED",
    "Backoff",
    "FileSource",
    "FolderSource",
    "Frame",
    "FrameSource",
    "LiveSource",
    "Pacer",
    "Picamera2Capture",
    "ProgramCapture",
    "Reconnecting",
    "SourceEnded",
    "SourceError",
    "inspect_image",
    "kind_of",
    "open_source",
    "program_argv",
    "source_name",
]


def source_name(config) -> str:
    """What logs, events, STATUS and the kiosk page call a `SourceConfig`'s source: its `name`,
    else its URI, a stream URL (also one in an `exec:` command line) without its password and query values."""
    uri, kind = config.uri.strip(), kind_of(config.uri)
    return config.name or (redact_url(uri) if kind == "url" else redact_urls(uri) if kind == "program" else uri)


def open_source(
    config,
    stop: threading.Event | None = None,
    open_fn: Callable[[str], Capture] | None = None,
    decode_size: tuple[int, int] | None = None,
    yield_to: threading.Event | None = None,
) -> FrameSource:
    """The source a `SourceConfig` describes. Live ones come wrapped in `Reconnecting`
    (and so open lazily, on the first read); files and folders open now (SourceError).
    `decode_size`: see `FileSource`; for stream URLs and programs, `LiveSource`. `yield_to`: see `FileSource`."""
    uri = config.uri.strip()
    if not uri:
        raise SourceError("no source configured (source.uri)")
    kind = kind_of(uri)
    name = source_name(config)
    if kind == "folder":
        return FolderSource(
            uri, fps=config.fps, loop=config.loop, watch=config.watch, realtime=config.realtime, name=name
        )
    if kind == "file":
        return FileSource(
            uri,
            fps=config.fps,
            loop=config.loop,
            realtime=config.realtime,
            name=name,
            open_fn=open_fn,
            decode_size=decode_size,
            yield_to=yield_to,
        )
    if kind == "program":
        argv = program_argv(uri)  # a program that is not there is a set-up error, not a camera to wait for
        opener = open_fn or (lambda u: ProgramCapture(argv, name))
    elif kind == "picamera2":
        number = camera_number(uri)  # (so is a missing picamera2 module)
        opener = open_fn or (lambda u: Picamera2Capture(number, config.width, config.height, config.fps))
    else:
        opener = open_fn or (lambda u: open_capture(u, config.width, config.height))
    # a device keeps OpenCV's own decoding: its V4L2 packet mode is untested here
    packets = decode_size if kind in ("url", "program") else None
    return Reconnecting(
        lambda: LiveSource(
            uri, fps=config.fps, read_timeout=config.read_timeout, name=name, open_fn=opener, decode_size=packets
        ),
        name,
        backoff=Backoff(config.reconnect_initial, config.reconnect_max),
        stop=stop,
    )
