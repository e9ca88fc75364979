"""BGR frames → the model's quantized input tensor, as the model card says.

`read_image` is the one way image files come in (enrolment, search, folder sources,
calibration). It reads the size from the file's header and checks the file's structure
*before* decoding, so a truncated or corrupt file and a decompression bomb (a small file whose
header claims gigapixels) are a BadImageError naming the file, never a crash, a partial image or
gigabytes of memory. Accepted: JPEG, PNG, BMP, WebP and TIFF (what `IMAGE_SUFFIXES` names),
recognised by their content, at most `MAX_PIXELS` pixels and `MAX_FILE_BYTES` bytes.
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

from .errors import BadImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}  # what counts as an image file
# Images with more pixels are refused before decoding: 50 MP (8160×6120, the largest phone
# cameras) decodes to 150 MB of BGR; a 1 MB PNG can claim 1.6 GB. `edge_retrieval/__init__.py`
# also sets OpenCV's own OPENCV_IO_MAX_IMAGE_PIXELS to this, for decoders outside read_image.
MAX_PIXELS = 50_000_000
MAX_FILE_BYTES = 256 * 1024 * 1024  # larger files are refused before they are read


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as a BGR uint8 (H, W, 3) array; BadImageError names the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise BadImageError(str(path), "not a regular file" if path.exists() else "no such file")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise BadImageError(str(path), f"file of {size} bytes is larger than the limit of {MAX_FILE_BYTES} bytes")
        data = path.read_bytes()
    except OSError as e:
        raise BadImageError(str(path), f"cannot be read ({e.strerror or e})") from None
    return decode_image(data, str(path))


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Encoded image bytes → a BGR uint8 (H, W, 3) array; BadImageError naming `name` otherwise.

    The header is checked first (format, size ≤ MAX_PIXELS, JPEG markers up to the end-of-image
    marker, PNG chunks and their CRCs up to IEND), so nothing is decoded that cannot be."""
    if not data:
        raise BadImageError(name, "empty file")
    try:
        kind, width, height = image_size(data)
    except ValueError as e:
        raise BadImageError(name, str(e)) from None
    if width * height > MAX_PIXELS:
        raise BadImageError(
            name, f"{width}×{height} {kind.upper()} has more pixels than the limit of {MAX_PIXELS / 1e6:g} megapixels"
        )
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:
        raise BadImageError(name, f"{kind.upper()} cannot be decoded ({' '.join(str(e).split())})") from None
    if img is None or img.size == 0:
        raise BadImageError(name, f"{kind.upper()} cannot be decoded (corrupt or unsupported variant)")
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:  # IMREAD_COLOR promises 8-bit BGR
        raise BadImageError(name, f"{kind.upper()} decoded to {img.dtype} {img.shape}, not 8-bit BGR")
    return img


# -- headers: (format, width, height) without decoding ------------------------------------------
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# In JPEG entropy-coded data 0xFF is followed by 0x00 (a stuffed byte), RST0-7 or another 0xFF
# (fill): anything else is a marker.
_JPEG_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_SOF = {m for m in range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}


def image_format(data: bytes) -> str | None:
    """ "jpeg", "png", "bmp", "webp" or "tiff" by the file's signature; None for anything else."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == _PNG_SIGNATURE:
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    return None


def image_size(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) of a JPEG, PNG, BMP, WebP or TIFF image from its header, with the
    structure checked where that is cheap (JPEG markers, PNG chunks); ValueError saying what is wrong."""
    kind = image_format(data)
    if kind is None:
        raise ValueError("not an image (not JPEG, PNG, BMP, WebP or TIFF)")
    try:
        width, height = _SIZE_READERS[kind](data)
    except (struct.error, IndexError, OverflowError):  # a field past the end, an offset beyond any file
        raise ValueError("truncated or corrupt image header") from None
    if width <= 0 or height <= 0:
        raise ValueError(f"{kind.upper()} header gives no size ({width}×{height})")
    return kind, width, height


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Walk the markers from SOI to EOI: the frame size, and ValueError for a truncated file
    (no end-of-image marker) or a marker that cannot be there."""
    n, i, size = len(data), 2, None
    while True:
        if i + 2 > n:
            raise ValueError("truncated JPEG (ends before its end-of-image marker)")
        if data[i] != 0xFF:
            raise ValueError(f"corrupt JPEG (no marker at byte {i})")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:  # EOI
            raise ValueError("corrupt JPEG (end-of-image marker before any image data)")
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length
            i += 2
            continue
        if marker == 0xD8 or 0x02 <= marker <= 0xBF:
            raise ValueError(f"corrupt JPEG (marker 0xFF{marker:02X} at byte {i})")
        if i + 4 > n:
            raise ValueError("truncated JPEG (ends before its end-of-image marker)")
        length = struct.unpack_from(">H", data, i + 2)[0]
        if length < 2 or i + 2 + length > n:
            raise ValueError("truncated JPEG (ends inside a header segment)")
        if marker in _JPEG_SOF and size is None:
            if length < 8:
                raise ValueError("corrupt JPEG (short frame header)")
            height, width = struct.unpack_from(">HH", data, i + 5)
            size = (width, height)
        i += 2 + length
        if marker == 0xDA:  # SOS: entropy-coded data up to the next real marker
            if size is None:
                raise ValueError("corrupt JPEG (image data before the frame header)")
            found = _JPEG_MARKER_IN_SCAN.search(data, i)
            if found is None:
                raise ValueError("truncated JPEG (ends before its end-of-image marker)")
            i = found.start()
            if data[i + 1] == 0xD9:  # EOI: anything after it is ignored, as decoders do
                return size


def _png_size(data: bytes) -> tuple[int, int]:
    """Walk the chunks from IHDR to IEND checking each CRC: the size, and ValueError for a
    truncated or corrupt file."""
    n, i, size, seen_idat = len(data), 8, None, False
    while True:
        if i + 12 > n:
            raise ValueError("truncated PNG (ends before its IEND chunk)")
        length, kind = struct.unpack_from(">I4s", data, i)
        end = i + 12 + length
        if length > 0x7FFFFFFF or end > n:
            raise ValueError("truncated PNG (ends inside a chunk)")
        if zlib.crc32(data[i + 4 : i + 8 + length]) != struct.unpack_from(">I", data, i + 8 + length)[0]:
            raise ValueError(f"corrupt PNG (CRC error in chunk {kind!r} at byte {i})")
        if size is None:
            if kind != b"IHDR" or length != 13:
                raise ValueError("corrupt PNG (does not start with its IHDR chunk)")
            size = struct.unpack_from(">II", data, i + 8)
        elif kind == b"IDAT":
            seen_idat = True
        elif kind == b"IEND":
            if not seen_idat:
                raise ValueError("corrupt PNG (no image data)")
            return size
        i = end


def _bmp_size(data: bytes) -> tuple[int, int]:
    offset, header = struct.unpack_from("<II", data, 10)
    if header == 12:  # OS/2 BITMAPCOREHEADER
        width, height, _, bpp = struct.unpack_from("<HHHH", data, 18)
        compression = 0
    elif header >= 16:
        width, height, _, bpp = struct.unpack_from("<iiHH", data, 18)
        compression = struct.unpack_from("<I", data, 30)[0] if header >= 20 else 0
    else:
        raise ValueError(f"corrupt BMP (header of {header} bytes)")
    height = abs(height)  # negative: rows stored top-down
    if bpp not in (1, 4, 8, 16, 24, 32) or compression > 3:  # what decoders read: RGB, RLE8, RLE4, bit fields
        raise ValueError(f"unsupported BMP ({bpp} bits a pixel, compression {compression})")
    if compression == 0 and bpp in (1, 4, 8, 16, 24, 32) and width > 0:
        stride = (width * bpp + 31) // 32 * 4
        if offset + stride * height > len(data):
            raise ValueError("truncated BMP (less pixel data than its header says)")
    return width, height


def _webp_size(data: bytes) -> tuple[int, int]:
    if struct.unpack_from("<I", data, 4)[0] + 8 > len(data):
        raise ValueError("truncated WebP (shorter than its RIFF header says)")
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise ValueError("corrupt WebP (no VP8 start code)")
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            raise ValueError("corrupt WebP (no VP8L signature)")
        bits = struct.unpack_from("<I", data, 21)[0]
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8X":
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    raise ValueError(f"corrupt WebP (unknown first chunk {chunk!r})")


def _tiff_size(data: bytes) -> tuple[int, int]:
    """Width and length of the first image (IFD) of a classic or Big TIFF."""
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    if big:
        ifd = struct.unpack_from(order + "Q", data, 8)[0]
        count = struct.unpack_from(order + "Q", data, ifd)[0]
        entry, first, value_at = 20, ifd + 8, 12
    else:
        ifd = struct.unpack_from(order + "I", data, 4)[0]
        count = struct.unpack_from(order + "H", data, ifd)[0]
        entry, first, value_at = 12, ifd + 2, 8
    if first + count * entry > len(data):
        raise ValueError("truncated TIFF (its first directory is cut off)")
    found = {}
    for k in range(count):
        at = first + k * entry
        tag, kind = struct.unpack_from(order + "HH", data, at)
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT, LONG or LONG8, held in the entry
            fmt = {3: "H", 4: "I", 16: "Q"}.get(kind)
            if fmt is None:
                raise ValueError(f"corrupt TIFF (size tag of type {kind})")
            found[tag] = struct.unpack_from(order + fmt, data, at + value_at)[0]
    if 256 not in found or 257 not in found:
        raise ValueError("corrupt TIFF (no image size in its first directory)")
    return found[256], found[257]


_SIZE_READERS = {"jpeg": _jpeg_size, "png": _png_size, "bmp": _bmp_size, "webp": _webp_size, "tiff": _tiff_size}


def input_lut(scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    """Pixel value 0..255 → quantized input value, from the model's own input quantization."""
    info = np.iinfo(dtype)
    levels = np.arange(256, dtype=np.float64)
    if scale == 0:  # a float-valued integer input (no quantization): pixels as they are
        q = levels
    else:
        q = np.rint(levels / scale + zero_point)
    lut = q.clip(info.min, info.max).astype(dtype)
    return _SHIFT_128 if np.array_equal(lut, _SHIFT_128) else lut  # (recognized by identity in to_input)


def resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Stretch a 3-channel (or grey / 4-channel, converted) uint8 image to width×height, as the converter does."""
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    elif frame.shape[2] == 4:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    h, w = frame.shape[:2]
    if (w, h) == (width, height):  # e.g. a video decoded at the model's input size (camera.FileSource)
        return frame
    if w > 2 * width and h > 2 * height:
        # INTER_AREA at a fractional ratio costs ~1.3 ms for 640×480 → 224²; a bilinear step to
        # exactly twice the size and then INTER_AREA's fast 2:1 path gives the same pixels
        # (mean difference 0.15 grey levels) in ~0.35 ms.
        frame = cv2.resize(frame, (2 * width, 2 * height), interpolation=cv2.INTER_LINEAR)
    interp = cv2.INTER_AREA if (w > width or h > height) else cv2.INTER_LINEAR
    return cv2.resize(frame, (width, height), interpolation=interp)


def to_input(frame: np.ndarray, width: int, height: int, color_order: str, lut: np.ndarray) -> np.ndarray:
    """One BGR uint8 frame → an (H, W, 3) tensor in the model's dtype (stretch-resize)."""
    img = resize(frame, width, height)  # (the frame itself when it has that size already)
    if color_order == "RGB":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if lut is _SHIFT_128 or (lut.dtype == np.int8 and np.array_equal(lut, _SHIFT_128)):
        # the usual int8 input (scale 1, zero point -128): value - 128 is the top bit flipped,
        # ≈ 10× faster than the table lookup; in place when img is a copy already
        return np.bitwise_xor(img, np.uint8(0x80), out=None if img is frame else img).view(np.int8)
    return cv2.LUT(img, lut)


_SHIFT_128 = (np.arange(256) - 128).astype(np.int8)
_SHIFT_128.flags.writeable = False  # shared by every Embedder of such a model
