"""Uploaded bytes: request bodies read within the size limit, JSON bodies, and images checked by
their header (format, pixel count) before they are decoded."""

from __future__ import annotations

import json
from typing import Any

import cv2
import numpy as np

from .. import preprocess
from .errors import KioskError

MAX_PIXELS = 40_000_000  # larger uploads are refused before decoding (a 10 MB PNG can hold gigabytes)
DRAIN = 64_000_000  # bytes of a too-large request read and dropped before answering 413

KIOSK_FORMATS = ("jpeg", "png", "webp", "bmp")  # what a browser uploads


def image_header(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) from the header of a JPEG, PNG, WebP or BMP image; None otherwise
    (`preprocess.image_size`, which also checks the file's structure)."""
    if preprocess.image_format(data) not in KIOSK_FORMATS:
        return None
    try:
        return preprocess.image_size(data)
    except ValueError:
        return None


def decode_image(data: bytes, what: str = "the image") -> np.ndarray:
    """Uploaded bytes → BGR image; KioskError (4xx) naming `what` for anything else."""
    if not data:
        raise KioskError(f"{what} is empty")
    kind = preprocess.image_format(data)
    if kind not in KIOSK_FORMATS:
        raise KioskError(f"{what} is not a JPEG, PNG, WebP or BMP image", 415)
    try:
        _, width, height = preprocess.image_size(data)
    except ValueError as e:
        raise KioskError(f"{what} looks like a {kind.upper()} image but cannot be decoded ({e})") from None
    if width * height > MAX_PIXELS:
        raise KioskError(
            f"{what} has {width}×{height} pixels, more than the limit of {MAX_PIXELS / 1e6:g} megapixels", 413
        )
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise KioskError(f"{what} looks like a {kind.upper()} image but cannot be decoded (truncated or corrupt?)")
    return image


def encode_jpeg(image: np.ndarray, quality: int, max_side: int = 0) -> bytes:
    if max_side and max(image.shape[:2]) > max_side:
        s = max_side / max(image.shape[:2])
        image = cv2.resize(
            image, (max(1, round(image.shape[1] * s)), max(1, round(image.shape[0] * s))), interpolation=cv2.INTER_AREA
        )
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise KioskError("cannot encode the image as JPEG", 500)
    return buf.tobytes()


async def read_body(request, limit: int) -> bytes:
    """The request body, at most `limit` bytes (kiosk.max_upload_mb). A larger one is read to its end and
    dropped (up to DRAIN bytes) so that the client, still sending, gets the 413 and not a broken pipe."""
    length = request.headers.get("content-length")
    declared = int(length) if length and length.isascii() and length.isdigit() else 0  # (not "²")
    size_text = f" {declared / 1e6:.1f} MB," if declared > limit else ""
    too_big = KioskError(
        f"the request is{size_text} more than the limit of {limit / 1e6:g} MB (kiosk.max_upload_mb)", 413
    )
    if declared > max(limit, DRAIN):
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > max(limit, DRAIN):
            break
    if size > limit:
        raise too_big
    return b"".join(chunks)


async def read_json(request, limit: int) -> dict:
    """The request body as a JSON object (at most `limit` bytes)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise KioskError("send JSON with 'Content-Type: application/json'", 415)
    try:
        data = json.loads(await read_body(request, limit), parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError) as e:  # (NaN and Infinity are not JSON either)
        raise KioskError(f"the body is not valid JSON ({e})") from None
    except RecursionError:
        raise KioskError("the body is not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise KioskError("the body must be a JSON object")
    return data


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")
