"""The face embedder: aligned 112×112 BGR crops → L2-normalized descriptors (MobileFaceNet: 192-d).

The one place the face model's path, preprocessing and quantization live. The card beside the
model says the input size, colour order and normalization ("(x - 127.5) / 128", or "baked"
when the model takes pixels 0..255); the input and output quantization are read from the
model itself, so the float model and an int8 one run through the same code. The model's
batch size is its own (the float file is fixed at 2): crops go in chunks of it, the last
one padded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ..descriptors import l2_normalize
from ..embedder import TensorQuantization, load_interpreter
from ..errors import ModelError, one_line
from ..modelcard import ModelCard, sha256_file
from . import MODELS
from .align import SIZE

EMBEDDER = MODELS / "mobilefacenet_112_float.tflite"  # the bundled face embedder
_NORMALIZATION = re.compile(r"\(x - ([0-9.]+)\) / ([0-9.]+)")


def pixel_table(normalization: str, quant: TensorQuantization) -> np.ndarray:
    """The model input for each pixel value 0..255: normalized as the card says, then quantized
    as the model's input tensor says (a lookup table: one `take` a crop)."""
    if normalization == "baked":
        mean, std = 0.0, 1.0
    else:
        m = _NORMALIZATION.fullmatch(normalization.strip())
        if not m:
            raise ModelError(f"model card: normalization must be 'baked' or '(x - MEAN) / STD', not {normalization!r}")
        mean, std = float(m[1]), float(m[2])
    x = (np.arange(256, dtype=np.float64) - mean) / std
    if np.issubdtype(quant.dtype, np.integer):
        info = np.iinfo(quant.dtype)
        return np.clip(np.round(x / quant.scale) + quant.zero_point, info.min, info.max).astype(quant.dtype)
    return x.astype(quant.dtype)


class FaceEmbedder:
    """Aligned face crops → unit vectors.

    >>> with FaceEmbedder() as emb:
    ...     vecs = emb.embed([align(frame, face_landmarks)])   # (1, 192) float32
    """

    def __init__(self, model_path: str | Path | None = None, num_threads: int = 2):
        self.model_path = Path(model_path or EMBEDDER)
        if not self.model_path.is_file():
            raise ModelError(f"{self.model_path}: face model file not found")
        self.card = ModelCard.load(ModelCard.path_for(self.model_path))
        try:
            self.sha256 = sha256_file(self.model_path)
        except OSError as e:
            raise ModelError(f"{self.model_path}: cannot be read ({e.strerror or e})") from None
        if self.card.sha256 != self.sha256:
            raise ModelError(
                f"{self.model_path}: sha256 {self.sha256[:12]}… does not match its card ({self.card.sha256[:12]}…)"
            )
        if (self.card.input_height, self.card.input_width) != (SIZE, SIZE):
            raise ModelError(
                f"{self.model_path}: input {self.card.input_height}×{self.card.input_width}, faces are aligned to {SIZE}×{SIZE}"
            )
        self._interp = load_interpreter(str(self.model_path), num_threads)
        try:
            inputs, outputs = self._interp.get_input_details(), self._interp.get_output_details()
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"{self.model_path}: not a usable TFLite model ({one_line(e)})") from None
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(
                f"{self.model_path}: {len(inputs)} input(s) and {len(outputs)} output(s), expected one of each"
            )
        inp, out = inputs[0], outputs[0]
        if (
            list(inp["shape"][1:]) != [SIZE, SIZE, 3]
            or len(out["shape"]) != 2
            or out["shape"][1] != self.card.output_dim
        ):
            raise ModelError(
                f"{self.model_path}: input {list(inp['shape'])} and output {list(out['shape'])}, expected "
                f"[batch, {SIZE}, {SIZE}, 3] and [batch, {self.card.output_dim}]"
            )
        self.batch = int(inp["shape"][0])
        self._in_index, self._out_index = inp["index"], out["index"]
        self.input_quant, self.output_quant = TensorQuantization.of(inp), TensorQuantization.of(out)
        self._table = pixel_table(self.card.normalization, self.input_quant)
        self._swap = self.card.color_order == "RGB"  # crops are BGR

    @property
    def dim(self) -> int:
        return self.card.output_dim

    def embed(self, crops: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Aligned BGR uint8 crops (n, 112, 112, 3) → (n, dim) float32 unit vectors."""
        crops = np.asarray(crops, np.uint8).reshape(-1, SIZE, SIZE, 3)
        if self._swap:
            crops = crops[..., ::-1]
        n = len(crops)
        out = np.empty((n, self.dim), np.float32)
        for start in range(0, n, self.batch):
            chunk = crops[start : start + self.batch]
            tensor = np.zeros((self.batch, SIZE, SIZE, 3), self._table.dtype)
            tensor[: len(chunk)] = self._table.take(chunk)
            self._interp.set_tensor(self._in_index, tensor)
            self._interp.invoke()
            raw = self._interp.get_tensor(self._out_index)[: len(chunk)].astype(np.float32)
            q = self.output_quant
            if q.scale:
                raw = (raw - q.zero_point) * q.scale
            out[start : start + len(chunk)] = raw
        return l2_normalize(out) if n else out

    def close(self) -> None:
        self._interp = None

    def __enter__(self) -> "FaceEmbedder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
