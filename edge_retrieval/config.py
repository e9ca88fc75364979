"""The service's configuration: frozen, documented dataclasses loaded from TOML.

Every field carries its documentation (`field(metadata={"doc": ...})`) and optional
checks (`min`, `max`, `choices`). `from_dict` walks any such dataclass generically —
nested dataclasses, Optional fields, lists, tuples and dicts — and rejects unknown keys
and wrong types with a `ConfigError` that names the key path (`decision.votes.m`).
`to_toml` writes a config back out with every option documented.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from .errors import ConfigError
from .sinks import SinksConfig, SnapshotConfig, redact_url


def setting(
    default: Any = dataclasses.MISSING, doc: str = "", *, default_factory: Any = dataclasses.MISSING, **checks: Any
) -> Any:
    """A documented config field; `checks` may hold min, max (inclusive) and choices."""
    meta = {"doc": doc, **checks}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


# -- the sections -------------------------------------------------------------


@dataclass(frozen=True)
class SourceConfig:
    """Where frames come from."""

    uri: str = setting(
        "",
        "A V4L2 device index (\"0\") or path (/dev/video0), a video file, an rtsp://, "
        "http(s):// or other stream URL, or a folder of images. Empty: none configured "
        "(with no gallery either, `run` plays the built-in demo).",
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
                f"{_join(path, 'reconnect_max')}: {self.reconnect_max} is less than "
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
                raise ConfigError(f"{_join(path, name)}: the region ends at {start + size:g}, beyond the frame (1)")


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
            raise ConfigError(f"{_join(path, 'm')}: {self.m} is more than n ({self.n})")


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
            raise ConfigError(f"{_join(path, 'token')}: too short (at least 8 characters)")


@dataclass(frozen=True)
class Config:
    """Everything `edge-retrieval run` needs; `edge-retrieval check-config` validates a file of it."""

    source: SourceConfig = setting(default_factory=SourceConfig, doc="Where frames come from.")
    model: ModelConfig = setting(default_factory=ModelConfig, doc="The embedding model.")
    gallery: GalleryConfig = setting(default_factory=GalleryConfig, doc="The watchlist.")
    roi: Optional[RoiConfig] = setting(None, "Only look at this part of the frame (absent = the whole frame).")
    motion: MotionConfig = setting(default_factory=MotionConfig, doc="The motion gate.")
    decision: DecisionConfig = setting(default_factory=DecisionConfig, doc="When a match becomes an alert.")
    sinks: SinksConfig = setting(default_factory=SinksConfig, doc="Where events go.")
    snapshot: SnapshotConfig = setting(default_factory=SnapshotConfig, doc="Snapshots saved with events.")
    events: EventsConfig = setting(default_factory=EventsConfig, doc="How much event history is kept.")
    service: ServiceConfig = setting(default_factory=ServiceConfig, doc="The service's own reporting.")
    kiosk: KioskConfig = setting(default_factory=KioskConfig, doc="The kiosk web page (`edge-retrieval kiosk`).")


# -- loading ------------------------------------------------------------------


def _join(path: str, key: str | int) -> str:
    """A key path as TOML would write it: `a.b`, `a."my key"` (quoted when not bare), `a[0]`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    key = _toml_key(key) if isinstance(key, str) else repr(key)
    return f"{path}.{key}" if path else key


def _number(value: int | float) -> str:
    """A number for a message: `0.5`, `1e+30`; never an OverflowError for a huge TOML integer."""
    try:
        return f"{value:g}"
    except OverflowError:
        return _short(value)


def _type_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return "a table"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    if origin in (list, tuple):
        return "an array"
    if origin is dict:
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if value is None and len(options) < len(args):
            return None
        errors = []
        for option in options:
            try:
                return _convert(option, value, path)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{path}: expected " + " or ".join(_type_name(o) for o in options))
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not {_type_name(tp)}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected an array, got {_describe(value)}")
        return [_convert(args[0], v, _join(path, i)) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected an array, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, _join(path, i)) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected an array of {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, _join(path, i)) for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table, got {_describe(value)}")
        return {_convert(args[0], k, path): _convert(args[1], v, _join(path, k)) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {_describe(value)}")
        try:
            number = float(value)
        except OverflowError:  # a TOML integer beyond the range of a float
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{path}: expected a finite number, got {_describe(value)}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {_describe(value)}")
        if "\0" in value:  # no path, URL, name or token holds one; the OS would refuse it later
            raise ConfigError(f"{path}: a NUL character is not allowed")
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{path}: cannot read a {tp!r} from {_describe(value)}")


def _describe(value: Any) -> str:
    kind = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)
    return f"{kind} ({_short(value)})"


def _short(value: Any) -> str:
    """repr(value), at most 40 characters (a huge integer too)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check(f: dataclasses.Field, value: Any, path: str) -> None:
    meta = f.metadata
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{path}: {value!r} is not one of " + ", ".join(repr(c) for c in meta["choices"]))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "min" in meta and value < meta["min"]:
            raise ConfigError(f"{path}: {_number(value)} is below the minimum {_number(meta['min'])}")
        if "max" in meta and value > meta["max"]:
            raise ConfigError(f"{path}: {_number(value)} is above the maximum {_number(meta['max'])}")


T = typing.TypeVar("T")


def from_dict(cls: type[T], data: Any, key_path: str = "") -> T:
    """Build the dataclass `cls` from plain data (parsed TOML); ConfigError names the key path."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{key_path or 'config'}: expected a table, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(f"{_join(key_path, unknown[0])}: unknown key (known: {', '.join(fields)})")
    missing = [
        n
        for n, f in fields.items()
        if n not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{_join(key_path, missing[0])}: required")
    kwargs = {}
    for name, value in data.items():
        path = _join(key_path, name)
        kwargs[name] = _convert(hints[name], value, path)
        _check(fields[name], kwargs[name], path)
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key_path or 'config'}: {e}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(key_path)
    return obj


def to_dict(obj: Any) -> Any:
    """A config dataclass → plain data (None fields left out), the inverse of from_dict."""
    if dataclasses.is_dataclass(obj):
        return {
            f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if getattr(obj, f.name) is not None
        }
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


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


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """data["a"]["b"]["c"] = value for "a.b.c", creating tables on the way."""
    *parents, last = dotted.split(".")
    node = data
    for i, key in enumerate(parents):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(parents[: i + 1])}: expected a table, got {_describe(node)}")
    node[last] = value


def parse_assignment(text: str) -> tuple[str, Any]:
    """ "decision.votes.m=4" → ("decision.votes.m", 4); the value is read as TOML, else as a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{text!r}: expected KEY=VALUE")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except ValueError:  # TOMLDecodeError, or an integer of more than 4300 digits
        value = raw.strip()
    return key, value


# -- writing ------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return (
            '"'
            + "".join(
                _TOML_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c) for c in value
            )
            + '"'
        )
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _example(cls: type) -> Any:
    """An instance of cls with placeholder values for its required fields (for commented examples)."""
    hints = typing.get_type_hints(cls)
    placeholders = {str: "", int: 0, float: 0.0, bool: False}
    required = {}
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            tp = hints[f.name]
            origin = typing.get_origin(tp)
            required[f.name] = [] if origin is list else {} if origin is dict else placeholders.get(tp, "")
    return cls(**required)


def _toml_key(key: str) -> str:
    import re

    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def _wrap(text: str, prefix: str = "# ", width: int = 100) -> list[str]:
    import textwrap

    return [prefix + line for line in textwrap.wrap(text, width - len(prefix))] or [prefix.rstrip()]


def to_toml(obj: Any = None, *, table: str = "", commented_optional: bool = True) -> str:
    """The config as TOML with every field's documentation as comments (defaults when obj is None)."""
    obj = Config() if obj is None else obj
    cls = type(obj)
    hints = typing.get_type_hints(cls)
    scalars, tables = [], []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        nested = (
            tp
            if dataclasses.is_dataclass(tp)
            else (inner[0] if len(inner) == 1 and dataclasses.is_dataclass(inner[0]) else None)
        )
        if nested is not None:
            tables.append((f, nested, value))
        else:
            scalars.append((f, value))
    lines: list[str] = []
    for f, value in scalars:
        lines += _wrap(f.metadata.get("doc", ""))
        if value is None:
            lines.append(f"# {f.name} = ")
        else:
            lines.append(f"{f.name} = {_toml_value(to_dict(value))}")
    for f, nested, value in tables:
        name = _join(table, f.name)
        lines.append("")
        lines += _wrap(f.metadata.get("doc", "") or (nested.__doc__ or ""))
        if value is None:
            if commented_optional:
                body = to_toml(_example(nested), table=name)
                lines.append(f"# [{name}]")
                lines += ["# " + line if line and not line.startswith("#") else line for line in body.splitlines()]
            continue
        body = to_toml(value, table=name)
        lines.append(f"[{name}]")
        lines += [line for line in body.splitlines()]
    text = "\n".join(lines)
    if not table:
        text = text.lstrip("\n") + "\n"
    return text


SECRET = "***"


def redacted(config: Config) -> Config:
    """The config with its secrets replaced by `SECRET`, for printing: the MQTT password, the
    kiosk token, webhook header values, and the credentials and query values of the source and
    webhook URLs (as logs show them). A command sink's argv is shown as it is."""
    replace = dataclasses.replace
    source = config.source
    if "://" in source.uri:  # a stream URL (camera.kind_of); devices, files and folders hold no secret
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
    return replace(config, source=source, sinks=sinks, kiosk=kiosk)


def documented_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every leaf key path of a config dataclass ("decision.votes.m", ...)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        nested = (
            tp
            if dataclasses.is_dataclass(tp)
            else (inner[0] if len(inner) == 1 and dataclasses.is_dataclass(inner[0]) else None)
        )
        path = _join(prefix, f.name)
        keys += documented_keys(nested, path) if nested is not None else [path]
    return keys


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
