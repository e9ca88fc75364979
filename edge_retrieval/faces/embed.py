"""The face embedder: aligned 112×112 BGR crops → L2-normalized descriptors (MobileFaceNet: 192-d).

The bundled model is full-integer int8 with its normalization inside ((x − 127.5) / 128, the
card's `normalization` starts with "baked"): the runtime's `Embedder` runs it as it runs the
items' model — RGB pixels − 128 by the input quantization read from the model, the int8 output
dequantized by the model's own scale and zero point, then L2-normalized. This adds only what a
face model must be: an aligned-crop input, a vector output, no preprocessing left to do.
"""

from __future__ import annotations

from pathlib import Path

from ..embedder import Embedder
from ..errors import ModelError
from . import MODELS
from .align import SIZE

EMBEDDER = MODELS / "mobilefacenet_int8.tflite"  # the bundled face embedder (card: mobilefacenet_int8.json)


class FaceEmbedder(Embedder):
    """Aligned face crops → unit vectors.

    >>> with FaceEmbedder() as emb:
    ...     vecs = emb.embed([align(frame, face_landmarks)])   # (1, 192) float32
    """

    def __init__(self, model_path: str | Path | None = None, num_threads: int = 2):
        super().__init__(model_path or EMBEDDER, num_threads)
        card = self.card
        if self.input_size != (SIZE, SIZE):
            raise ModelError(
                f"{self.model_path}: input {card.input_height}×{card.input_width}, faces are {SIZE}×{SIZE}"
            )
        if card.output_kind != "vector" or self.whitening is not None:
            raise ModelError(f"{self.model_path}: a face model outputs a plain vector, the card says otherwise")
        if not card.normalization.startswith("baked"):
            raise ModelError(
                f"{self.model_path}: normalization {card.normalization!r}: a face model takes pixels, "
                "its normalization baked in (tools/convert_faces.py)"
            )
