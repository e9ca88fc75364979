"""The service's configuration: the schema, frozen documented dataclasses loaded from TOML.

The generic part (documented fields, `from_dict` with key-path errors, `to_toml`) is
settings.py; unknown keys and wrong values are errors naming the key path.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError
from .fleet import FleetConfig
from .settings import documented_keys as _documented_keys
from .settings import from_dict, join_key, parse_assignment, set_path, setting, to_dict  # noqa: F401 (the config's API)
from .settings import to_toml as _to_toml
from .sinks import SinksConfig, SnapshotConfig, redact_url, redact_urls

# -- the sections -------------------------------------------------------------


@dataclass(frozen=True)
class SourceConfig:
    """Where frames come from."""

    uri: str = setting(
        "",
        "A V4L2 device index (\"0\") or path (/dev/video0), a video file, an rtsp://, "
        "http(s):// or other stream URL, a folder of images, or exec:COMMAND, a program "
        "writing Motion-JPEG to stdout (a Pi camera: exec:rpicam-vid -t 0 -n --codec mjpeg "
        "-o -). Empty: none configured (with no gallery either, `run` plays the built-in demo).",
    )
    name: str = setting("", "The source's name in events and cooldown keys (default: the uri).")
    fps: float = setting(
        0.0,
        "Target rate of processed frames; 0 = as fast as frames come. Live sources "
        "always hand over their newest frame; files skip frames by media time.",
        min=0,
    )
    width: int = setting(0, "Capture width to ask a device for (0 = the driver's default).", min=0)
    height: int = setting(0, "Capture height to ask a device for (0 = the driver's default).", min=0)
    loop: bool = setting(False, "Files and folders: start again at the end instead of finishing.")
    realtime: bool = setting(
        False,
        "Files and folders: play at the media's own speed, dropping frames when "
        "processing falls behind (as a camera would), instead of every frame "
        "as fast as possible.",
    )
    watch: bool = setting(
        False,
        "Folders: a slow camera that drops image files; hand over the newest new file "
        "and wait for more instead of finishing.",
    )
    read_timeout: float = setting(
        5.0, "Live sources: seconds without a new frame before the source counts as failed and is reopened.", min=0.1
    )
    reconnect_initial: float = setting(
        0.5,
        "Live sources: first wait before reopening a failed source, in seconds; doubled after each failed attempt.",
        min=0.01,
    )
    reconnect_max: float = setting(30.0, "Live sources: the cap of the reconnect wait, in seconds.", min=0.01)

    def validate(self, path: str) -> None:
        if self.reconnect_max < self.reconnect_initial:
            raise ConfigError(
                f"{join_key(path, 'reconnect_max')}: {self.reconnect_max} is less than "
                f"reconnect_initial ({self.reconnect_initial})"
            )


@dataclass(frozen=True)
class ModelConfig:
    """The embedding model."""

    path: str = setting(
        "",
        "The .tflite model (its .json card beside it); empty = the default model "
        "edge_retrieval/data/models/mobilenet_v2_240x320_int8.tflite.",
    )
    threads: int = setting(2, "Interpreter threads.", min=1, max=64)


@dataclass(frozen=True)
class GalleryConfig:
    """The watchlist."""

    path: str = setting(
        "",
        "The gallery SQLite file (enrol with `edge-retrieval enroll`). Changes made while "
        "the service runs take effect within a second. Events are stored in the same file.",
    )


@dataclass(frozen=True)
class RoiConfig:
    """A region of interest, as fractions of the frame's width and height."""

    x: float = setting(0.0, "Left edge, 0..1 of the frame width.", min=0, max=1)
    y: float = setting(0.0, "Top edge, 0..1 of the frame height.", min=0, max=1)
    width: float = setting(1.0, "Width, 0..1 of the frame width.", min=0.01, max=1)
    height: float = setting(1.0, "Height, 0..1 of the frame height.", min=0.01, max=1)

    def validate(self, path: str) -> None:
        for name, start, size in (("width", self.x, self.width), ("height", self.y, self.height)):
            if start + size > 1 + 1e-9:
                raise ConfigError(f"{join_key(path, name)}: the region ends at {start + size:g}, beyond the frame (1)")


@dataclass(frozen=True)
class MotionConfig:
    """The motion gate: skip the model while the scene does not change."""

    enabled: bool = setting(
        True,
        "Skip embedding frames that look like the last embedded one (the last "
        "descriptor is searched again instead, so gallery changes still apply).",
    )
    width: int = setting(64, "Width of the grey thumbnail compared, in pixels.", min=8, max=1024)
    pixel_threshold: int = setting(
        12, "A thumbnail pixel counts as changed when it differs by more than this (0..255).", min=0, max=255
    )
    min_changed: float = setting(
        0.02, "The scene counts as changed when at least this fraction of the thumbnail changed.", min=0, max=1
    )
    refresh: float = setting(
        10.0, "Embed at least this often (seconds of source time) even without motion; 0 = never.", min=0
    )


@dataclass(frozen=True)
class VotesConfig:
    """Temporal voting: a label must win M of the last N processed frames."""

    m: int = setting(3, "Frames out of the last `n` that must agree.", min=1)
    n: int = setting(5, "The voting window, in processed frames.", min=1)

    def validate(self, path: str) -> None:
        if self.m > self.n:
            raise ConfigError(f"{join_key(path, 'm')}: {self.m} is more than n ({self.n})")


@dataclass(frozen=True)
class DecisionConfig:
    """How a frame is recognised, and when a match becomes an alert."""

    preset: str = setting(
        "default",
        "How a frame is matched (the same for `search`, the service and the kiosk). "
        "default: regions of the frame and of the motion, ORB votes over the "
        "gallery and geometric verification: finds items anywhere in a scene "
        "(≈ 25 ms a 640×480 frame on 2 cores); quick: the same with half the ORB "
        "features (≈ 20 % faster, a little less recall); fast: CNN regions only; "
        "whole: the whole-frame descriptor (≈ 5 ms; only items that fill much "
        "of the frame). Scores and thresholds are the preset's, set by "
        "`edge-retrieval calibrate`; README: Finding items in scenes.",
        choices=("default", "quick", "fast", "whole"),
    )
    threshold: Optional[float] = setting(
        None,
        "Global threshold on the preset's score, over the gallery's "
        "calibrated one (absent: calibrated, else the preset's own; an "
        "item's calibrated threshold wins over both).",
        min=-1,
        max=10,
    )
    margin: Optional[float] = setting(
        None,
        "Minimum lead of the top score over the best score of a different "
        "label (absent: the preset's: 0.2 for whole, none for the others).",
        min=0,
        max=10,
    )
    votes: VotesConfig = setting(default_factory=VotesConfig, doc="Temporal voting.")
    cooldown: float = setting(
        30.0,
        "Seconds per (label, source): a label alerts again only after it has not "
        "been confirmed for this long, so one standing in view alerts once.",
        min=0,
    )
    unknown: bool = setting(
        False,
        "Also raise \"unknown\" events: the scene moved in M of the last N frames and nothing in the gallery passed.",
    )


@dataclass(frozen=True)
class PeopleConfig:
    """Watch for people on the same camera: each face found, aligned and identified against a
    people gallery. Votes and the per-person cooldown are [decision]'s."""

    gallery: str = setting(
        "",
        "The people gallery SQLite file (`edge-retrieval enroll --faces -g people.db DIR`); empty = "
        "people are not watched. With [gallery] path empty, only people are watched (events are then "
        "stored in this file); with both, items and people on the same frames, behind one motion gate.",
    )
    threshold: Optional[float] = setting(
        None,
        "Cosine a face must reach to be taken for an enrolled person (absent: the gallery's, set by "
        "`edge-retrieval calibrate --faces`, else the faces preset's).",
        min=-1,
        max=1,
    )
    min_face: int = setting(40, "Smallest face looked for, in pixels wide (smaller: slower, less sure).", min=20)
    unknown: bool = setting(
        False,
        "Also raise \"unknown\" events (label null): a face was seen in M of the last N frames, no one identified.",
    )
    unknown_cooldown: float = setting(
        60.0, "Seconds an unknown-person event waits after the last frame confirming one, before another.", min=0
    )


@dataclass(frozen=True)
class EventsConfig:
    """The event history in the gallery file (one row per decision, ≈ 430 bytes with three sinks)."""

    max_count: int = setting(
        100_000,
        "Keep at most this many events (the oldest go, with their delivery "
        "records); 0 = no limit. An event a sink has not acknowledged yet is "
        "always kept (one a sink refused for good, parked, until max_age_days).",
        min=0,
    )
    max_age_days: float = setting(
        365.0,
        "Delete events older than this (by their time); 0 = no limit. Snapshots have their own retention ([snapshot]).",
        min=0,
    )


@dataclass(frozen=True)
class ServiceConfig:
    """The service's own reporting."""

    status_interval: float = setting(
        2.0,
        "Seconds between STATUS updates to systemd (fps, stages, last match); sent after a processed frame.",
        min=0.1,
    )
    log_interval: float = setting(60.0, "Seconds between per-stage timing lines in the log; 0 = never.", min=0)
    log_level: str = setting("INFO", "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


@dataclass(frozen=True)
class KioskConfig:
    """The kiosk web page (`edge-retrieval kiosk`). It runs the service's pipeline and decision rules;
    a video file or image folder as the source plays at its own speed, over and over."""

    host: str = setting(
        "127.0.0.1",
        "Address to serve the page on; \"0.0.0.0\" opens it to the network (every write still needs the token).",
    )
    port: int = setting(8080, "TCP port of the page; 0 = any free port (printed at start).", min=0, max=65535)
    token: str = setting(
        "",
        "The staff token for /admin and every write (env EDGE_RETRIEVAL_KIOSK_TOKEN); "
        "empty = a random token kept in <gallery>.kiosk-token (mode 600; delete the file for "
        "a new one). Printed only on a terminal, never to a log.",
    )
    photos: str = setting(
        "",
        "Folder for the photos enrolled from the staff page; empty = a folder named "
        "after the gallery with \"-photos\" beside it.",
    )
    hold: float = setting(
        3.0,
        "Seconds a record (or \"unknown item\") stays on screen after its item was last "
        "confirmed (M of the last N frames, as for alerts).",
        min=0,
        max=600,
    )
    stream_fps: float = setting(10.0, "Frame rate of the live view sent to the page.", min=0.5, max=60)
    jpeg_quality: int = setting(75, "JPEG quality of the live view (10..100).", min=10, max=100)
    max_upload_mb: float = setting(
        10.0,
        "Largest accepted request body (a searched image, an enrolment), in megabytes; bigger ones get 413.",
        min=0.01,
        max=1000,
    )

    def validate(self, path: str) -> None:
        if self.token and len(self.token) < 8:
            raise ConfigError(f"{join_key(path, 'token')}: too short (at least 8 characters)")


@dataclass(frozen=True)
class Config:
    """Everything `edge-retrieval run` needs; `edge-retrieval check-config` validates a file of it."""

    source: SourceConfig = setting(default_factory=SourceConfig, doc="Where frames come from.")
    model: ModelConfig = setting(default_factory=ModelConfig, doc="The embedding model.")
    gallery: GalleryConfig = setting(default_factory=GalleryConfig, doc="The watchlist.")
    roi: Optional[RoiConfig] = setting(None, "Only look at this part of the frame (absent = the whole frame).")
    motion: MotionConfig = setting(default_factory=MotionConfig, doc="The motion gate.")
    decision: DecisionConfig = setting(default_factory=DecisionConfig, doc="When a match becomes an alert.")
    people: PeopleConfig = setting(default_factory=PeopleConfig, doc="Watch for people (faces) too, or instead.")
    sinks: SinksConfig = setting(default_factory=SinksConfig, doc="Where events go.")
    snapshot: SnapshotConfig = setting(default_factory=SnapshotConfig, doc="Snapshots saved with events.")
    events: EventsConfig = setting(default_factory=EventsConfig, doc="How much event history is kept.")
    service: ServiceConfig = setting(default_factory=ServiceConfig, doc="The service's own reporting.")
    kiosk: KioskConfig = setting(default_factory=KioskConfig, doc="The kiosk web page (`edge-retrieval kiosk`).")
    fleet: FleetConfig = setting(default_factory=FleetConfig, doc="Follow a watchlist published to a group of devices.")


# -- loading ------------------------------------------------------------------


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read a TOML file (None: the defaults), apply dotted-key `overrides` (CLI flags), validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read ({e})") from None
        except ValueError as e:  # TOMLDecodeError, or an integer of more than 4300 digits
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
    for dotted, value in (overrides or {}).items():
        set_path(data, dotted, value)
    try:
        return from_dict(Config, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None


def to_toml(obj: Any = None, **kw) -> str:
    """The config as TOML with every option documented (the defaults when obj is None)."""
    return _to_toml(Config() if obj is None else obj, **kw)


def documented_keys(cls: type | None = None, prefix: str = "") -> list[str]:
    """Every leaf key path of the config ("decision.votes.m", ...)."""
    return _documented_keys(Config if cls is None else cls, prefix)


SECRET = "***"


def redacted(config: Config) -> Config:
    """The config with its secrets replaced by `SECRET`, for printing: the MQTT passwords, the
    kiosk token, webhook header values, and the credentials and query values of the source and
    webhook URLs (as logs show them). A command sink's argv is shown as it is."""
    replace = dataclasses.replace
    source = config.source
    if source.uri.strip().startswith("exec:"):  # a command line may hold a stream URL
        source = replace(source, uri=redact_urls(source.uri))
    elif "://" in source.uri:  # a stream URL (camera.kind_of); devices, files and folders hold no secret
        source = replace(source, uri=redact_url(source.uri))
    sinks = config.sinks
    if sinks.webhook is not None:
        sinks = replace(
            sinks,
            webhook=replace(
                sinks.webhook, url=redact_url(sinks.webhook.url), headers={k: SECRET for k in sinks.webhook.headers}
            ),
        )
    if sinks.mqtt is not None and sinks.mqtt.password:
        sinks = replace(sinks, mqtt=replace(sinks.mqtt, password=SECRET))
    kiosk = replace(config.kiosk, token=SECRET) if config.kiosk.token else config.kiosk
    fleet = replace(config.fleet, password=SECRET) if config.fleet.password else config.fleet  # (the key is in a file)
    return replace(config, source=source, sinks=sinks, kiosk=kiosk, fleet=fleet)


EXAMPLE_HEADER = """\
# edge-retrieval service configuration: every option, with its documentation and default.
# Check it with `edge-retrieval check-config FILE`; flags of `edge-retrieval run` override it.
# Regenerate: python -c "from edge_retrieval.config import example_toml; print(example_toml(), end='')"
"""


def example_config() -> Config:
    """The example config shipped as systemd/edge-retrieval.toml: the defaults, pointed at a
    camera and the service's data dir."""
    data = "/var/lib/edge-retrieval"
    return Config(
        source=SourceConfig(uri="0", name="camera0", fps=5.0),
        gallery=GalleryConfig(path=f"{data}/gallery.db"),
        snapshot=dataclasses.replace(SnapshotConfig(), enabled=True, folder=f"{data}/snapshots"),
    )


def example_toml() -> str:
    return EXAMPLE_HEADER + "\n" + to_toml(example_config())
