"""The checks every value of an import file passes before it enters a gallery (`transfer.import_into`),
and the label and metadata rules enrolment shares with them: type, range and length, so that a
hostile file cannot hold a value the gallery would not have written itself. Each raises ValueError
with a one-line reason naming the value."""

from __future__ import annotations

import json
import math
import unicodedata
from typing import Any, Mapping, Sequence

import numpy as np

MAX_DIM = 1 << 16
MAX_LABEL_CHARS = 1000
MAX_METADATA_BYTES = 1 << 20
MAX_TEXT_CHARS = 4096  # sources, feature kinds, model names
MAX_DESCRIPTOR_BYTES = 256  # per local feature (ORB: 32)
MAX_IMAGE_SIDE = 1 << 16  # width and height of the image local features were found in


def no_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# -- values ---------------------------------------------------------------------------------------
def _text(value: Any, what: str, limit: int = MAX_TEXT_CHARS) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} is {_kind(value)}, not text")
    if len(value) > limit:
        raise ValueError(f"{what} has {len(value)} characters, more than {limit}")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} is {_kind(value)}, not a finite number")
    return value


def _integer(value: Any, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{what} is {_kind(value)}, not a whole number from {low} to {high}")
    return value


def _kind(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"a blob of {len(value)} bytes"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "…"


def has_control(text: str) -> bool:
    """Control characters (newlines, escapes, …): they would break one-line messages and terminals."""
    return any(unicodedata.category(c) == "Cc" for c in text)


def check_model(model: Mapping[str, Any]) -> tuple[str, str, int]:
    """(model sha256, name, dim) of an import file's meta rows; ValueError otherwise."""
    sha = _text(model.get("model_sha256"), "model_sha256")
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError(f"model_sha256 {_kind(sha)} is not a sha256")
    name = _text(model.get("model_name", ""), "model_name", 200)
    if has_control(name):
        raise ValueError(f"model_name {name!r} holds control characters")
    dim = parse_dim(model.get("dim"))
    if dim is None:
        raise ValueError(f"dim is {_kind(model.get('dim'))}, not a number of dimensions from 1 to {MAX_DIM}")
    return sha, name, dim


def parse_dim(value: Any) -> int | None:
    """The `dim` meta value (decimal text) as a number from 1 to MAX_DIM, or None."""
    if not isinstance(value, str) or not value.isascii() or not value.isdigit() or len(value) > 9:
        return None
    dim = int(value)
    return dim if 1 <= dim <= MAX_DIM else None


def check_label(value: Any) -> str:
    """A label as a gallery stores it (stripped): text of at most MAX_LABEL_CHARS characters, not
    empty, without control characters; ValueError otherwise. Enrolment and import share it."""
    label = _text(value, "label", MAX_LABEL_CHARS).strip()
    if not label:
        raise ValueError("label is empty")
    if has_control(label):
        raise ValueError(f"label {label[:40]!r} holds control characters")
    return label


def check_item(row: Sequence[Any]) -> tuple[int, str, str, float]:
    """(id, label, metadata text, created) of an items row, the label stripped; ValueError otherwise.
    Labels and metadata are data, stored as they are (SQL or HTML in them does nothing)."""
    item_id, label, metadata, created = row
    _integer(item_id, "id", -(1 << 63), (1 << 63) - 1)
    label = check_label(label)
    _text(metadata, f"metadata of {label!r}", MAX_METADATA_BYTES)
    if len(metadata.encode("utf-8", "surrogatepass")) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata of {label!r} is larger than {MAX_METADATA_BYTES} bytes")
    try:
        parsed = json.loads(metadata, parse_constant=no_json_constant)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"metadata of {label!r} is not JSON ({type(e).__name__})") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"metadata of {label!r} is not a JSON object")
    return item_id, label, metadata, _number(created, "created")


def check_vectors(rows: Sequence[Sequence[Any]], dim: int, table: str) -> None:
    """embeddings / negatives rows (item_id, vector, scale, source, created): int8 vectors of `dim`
    bytes, one finite scale in (0, 1] each, and no longer than a unit vector's codes can be (so no
    imported vector can outscore a real match); ValueError otherwise."""
    for item_id, vector, scale, source, created in rows:
        _integer(item_id, f"{table}.item_id", -(1 << 63), (1 << 63) - 1)
        if not isinstance(vector, bytes) or len(vector) != dim:
            raise ValueError(f"{table} vector of item {item_id} is {_kind(vector)}, expected {dim} bytes")
        if not 0 < _number(scale, f"{table} scale of item {item_id}") <= 1:
            raise ValueError(f"{table} scale of item {item_id} is {scale!r}, not in (0, 1]")
        _text(source, f"{table} source of item {item_id}")
        _number(created, f"{table} created")
    codes = np.frombuffer(b"".join(r[1] for r in rows), np.int8).reshape(len(rows), dim).astype(np.float32)
    scales = np.array([r[2] for r in rows], np.float64)
    norms = np.linalg.norm(codes, axis=1) * scales
    # |q·s − x| ≤ √dim · s/2 for the codes q of a unit vector x (quantize.py)
    too_long = np.flatnonzero(norms > 1 + 0.5 * math.sqrt(dim) * scales + 1e-3)
    if len(too_long):
        row = rows[int(too_long[0])]
        raise ValueError(f"{table} vector of item {row[0]} has length {norms[too_long[0]]:.3g}, not a unit vector's")


def check_features(rows: Sequence[Sequence[Any]]) -> None:
    """features rows (item_id, kind, width, height, keypoints, descriptors, source, created):
    finite float32 (x, y) points and as many descriptors, or no points and an image's width ×
    height grey pixels (the dense verifier's); ValueError otherwise."""
    for item_id, kind, width, height, keypoints, descriptors, source, created in rows:
        _integer(item_id, "features.item_id", -(1 << 63), (1 << 63) - 1)
        _text(kind, "features.kind", 32)
        _integer(width, "features.width", 1, MAX_IMAGE_SIDE)
        _integer(height, "features.height", 1, MAX_IMAGE_SIDE)
        if not isinstance(keypoints, bytes) or len(keypoints) % 8:
            raise ValueError(f"keypoints of item {item_id} are {_kind(keypoints)}, not (x, y) float32 pairs")
        n = len(keypoints) // 8
        if not isinstance(descriptors, bytes) or (
            len(descriptors) not in (0, width * height)
            if n == 0
            else (len(descriptors) % n or not 0 < len(descriptors) // n <= MAX_DESCRIPTOR_BYTES)
        ):
            raise ValueError(f"descriptors of item {item_id} are {_kind(descriptors)} for {n} keypoints")
        if not np.isfinite(np.frombuffer(keypoints, "<f4")).all():
            raise ValueError(f"keypoints of item {item_id} hold NaN or infinity")
        _text(source, "features.source")
        _number(created, "features.created")
