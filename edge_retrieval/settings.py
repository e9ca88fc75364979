"""Settings as frozen, documented dataclasses: the generic part of the config.

Every field carries its documentation (`setting(default, doc, min=, max=, choices=)`).
`from_dict` walks any such dataclass — nested dataclasses, Optional fields, lists, tuples and
dicts — and rejects unknown keys and wrong types with a `ConfigError` that names the key path
(`decision.votes.m`); `to_toml` writes one back out with every option documented. The
schema itself is config.py.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
import tomllib
import types
import typing
from dataclasses import field
from typing import Any, Literal

from .errors import ConfigError


def setting(
    default: Any = dataclasses.MISSING, doc: str = "", *, default_factory: Any = dataclasses.MISSING, **checks: Any
) -> Any:
    """A documented config field; `checks` may hold min, max (inclusive) and choices."""
    meta = {"doc": doc, **checks}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def join_key(path: str, key: str | int) -> str:
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
        return [_convert(args[0], v, join_key(path, i)) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected an array, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, join_key(path, i)) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected an array of {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, join_key(path, i)) for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table, got {_describe(value)}")
        return {_convert(args[0], k, path): _convert(args[1], v, join_key(path, k)) for k, v in value.items()}
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
        raise ConfigError(f"{join_key(key_path, unknown[0])}: unknown key (known: {', '.join(fields)})")
    missing = [
        n
        for n, f in fields.items()
        if n not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{join_key(key_path, missing[0])}: required")
    kwargs = {}
    for name, value in data.items():
        path = join_key(key_path, name)
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

    return [prefix + line for line in textwrap.wrap(text, width - len(prefix))] or [prefix.rstrip()]


def to_toml(obj: Any, *, table: str = "", commented_optional: bool = True) -> str:
    """A settings dataclass as TOML with every field's documentation as comments."""
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
        name = join_key(table, f.name)
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


def documented_keys(cls: type, prefix: str = "") -> list[str]:
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
        path = join_key(prefix, f.name)
        keys += documented_keys(nested, path) if nested is not None else [path]
    return keys
