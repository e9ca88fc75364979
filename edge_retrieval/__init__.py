"""edge-retrieval: on-device image retrieval with an int8 MobileNet, a SQLite gallery and a NumPy scan."""

import os

# The interpreter owns the cores: OpenBLAS threads spinning beside it made the small matrix
# products of the query path (whitening, scan) 10× slower on 2 cores (55 → 13 ms a frame,
# measured). Only effective if numpy is not imported yet; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# OpenCV refuses to decode images above this many pixels (its default is 1 GP): a backstop for
# decoders outside preprocess.read_image, which refuses them before decoding. Read when cv2 is
# first imported; the same figure as preprocess.MAX_PIXELS.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", "50000000")
from .embedder import Embedder
from .errors import BadImageError, ConfigError, EdgeRetrievalError, GalleryError, ModelError, ModelMismatchError
from .modelcard import DEFAULT_MODEL, ModelCard
from .storage.gallery import Gallery, Item, Matches

__all__ = [
    "BadImageError",
    "ConfigError",
    "DEFAULT_MODEL",
    "EdgeRetrievalError",
    "Embedder",
    "Gallery",
    "GalleryError",
    "Item",
    "Matches",
    "ModelCard",
    "ModelError",
    "ModelMismatchError",
]
