"""Contact sheets: a grid of thumbnails, each with a caption (label, time, score), as one JPEG.

`events export --contact-sheet` puts event snapshots in it, `search --contact-sheet` the query
and the enrolled photos of its ranking. Captions are drawn with OpenCV's Hershey font, which
has ASCII only: other characters show as '?'.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .errors import EdgeRetrievalError
from .preprocess import read_image

TILE = (240, 180)  # thumbnail width, height in pixels
COLUMNS = 5
LINE = 18  # caption line height, pixels
PAD = 6
FONT, SCALE = cv2.FONT_HERSHEY_SIMPLEX, 0.45
BACKGROUND, MISSING, INK = (32, 32, 32), (70, 70, 70), (235, 235, 235)


class ContactSheetError(EdgeRetrievalError):
    """The sheet cannot be written (its path named)."""


def thumbnail(image: np.ndarray | None, size: tuple[int, int] = TILE) -> np.ndarray:
    """The image scaled to fit `size` (width, height), centred on the background; a grey tile for None."""
    w, h = size
    tile = np.full((h, w, 3), BACKGROUND if image is not None else MISSING, np.uint8)
    if image is None:
        return tile
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    ih, iw = image.shape[:2]
    s = min(w / iw, h / ih)
    tw, th = max(1, round(iw * s)), max(1, round(ih * s))
    small = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    y, x = (h - th) // 2, (w - tw) // 2
    tile[y : y + th, x : x + tw] = small
    return tile


def read_or_none(path: str | Path | None) -> np.ndarray | None:
    """An image file for a tile, None if it is gone or unreadable (the tile says so, the sheet goes on)."""
    if not path:
        return None
    try:
        return read_image(path)
    except EdgeRetrievalError:
        return None


def _fit(text: str, width: int) -> str:
    """ASCII (what the font has), cut to the tile's width."""
    text = text.encode("ascii", "replace").decode("ascii")
    while text and cv2.getTextSize(text, FONT, SCALE, 1)[0][0] > width:
        text = text[:-1]
    return text


def sheet(tiles: Sequence[tuple[np.ndarray | None, Sequence[str]]], columns: int = COLUMNS) -> np.ndarray:
    """A BGR image of the tiles (image or None, caption lines) in rows of `columns`."""
    if not tiles:
        raise ContactSheetError("a contact sheet needs at least one picture")
    columns = max(1, min(columns, len(tiles)))
    lines = max(len(caption) for _, caption in tiles)
    w, h = TILE
    cell_w, cell_h = w + 2 * PAD, h + lines * LINE + 2 * PAD
    rows = math.ceil(len(tiles) / columns)
    out = np.full((rows * cell_h, columns * cell_w, 3), BACKGROUND, np.uint8)
    for n, (image, caption) in enumerate(tiles):
        y, x = (n // columns) * cell_h + PAD, (n % columns) * cell_w + PAD
        out[y : y + h, x : x + w] = thumbnail(image)
        if image is None:
            cv2.putText(out, "no picture", (x + 8, y + h // 2), FONT, SCALE, INK, 1, cv2.LINE_AA)
        for i, text in enumerate(caption):
            baseline = y + h + (i + 1) * LINE - 5
            cv2.putText(out, _fit(text, w), (x, baseline), FONT, SCALE, INK, 1, cv2.LINE_AA)
    return out


def write(path: str | Path, image: np.ndarray, quality: int = 88) -> Path:
    """Write the sheet as a JPEG, atomically (a temporary file beside it, then renamed)."""
    path = Path(path)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ContactSheetError(f"{path}: cannot encode the contact sheet as JPEG")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data.tobytes())
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise ContactSheetError(f"{path}: cannot write the contact sheet ({e.strerror or e})") from None
    return path


# -- what the commands put in a sheet ----------------------------------------------------------
def enrolled_photo(gallery, item_id: int) -> Path | None:
    """The item's first enrolled photo that is still on this machine (the gallery keeps the paths
    enrolled from, `Gallery.sources`; augmented views are not files)."""
    for source in gallery.sources(int(item_id)):
        path = Path(source)
        if path.is_file():
            return path
    return None


def ranking_tiles(query: np.ndarray, name: str, ranking, gallery, k: int) -> list:
    """The query, then the enrolled photos of its ranking's top k with their scores."""
    verdict = f"match: {ranking.label}" if ranking.label else "unknown"
    tiles = [(query, [f"query {name}", verdict])]
    for rank, c in enumerate(ranking.candidates[:k], 1):
        photo = enrolled_photo(gallery, c.item_id)
        mark = " (match)" if ranking.match is not None and c.item_id == ranking.match.item_id else ""
        tiles.append((read_or_none(photo), [f"{rank}. {c.label}{mark}", f"score {c.score:.3f}"]))
    return tiles


def event_tiles(rows: Sequence[tuple[object, float | None]]) -> list:
    """(event, similarity or None) → tiles of their snapshots: id, label and score, time, source."""
    from datetime import datetime

    tiles = []
    for event, similarity in rows:
        when = datetime.fromtimestamp(event.time).strftime("%Y-%m-%d %H:%M:%S")
        first = f"#{event.id} {event.label or event.kind} {event.score:.2f}"
        if similarity is not None:
            first += f"  sim {similarity:.3f}"
        tiles.append((read_or_none(event.snapshot), [first, when, event.source]))
    return tiles
