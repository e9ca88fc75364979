"""edge-retrieval: on-device image retrieval with an int8 MobileNet, a SQLite gallery and a NumPy scan."""
from .embedder import Embedder
from .errors import (BadImageError, ConfigError, EdgeRetrievalError, GalleryError, ModelError,
                     ModelMismatchError)
from .gallery import Gallery, Item, Matches
from .modelcard import DEFAULT_MODEL, ModelCard

__all__ = [
    "BadImageError", "ConfigError", "DEFAULT_MODEL", "EdgeRetrievalError", "Embedder", "Gallery", "GalleryError",
    "Item", "Matches", "ModelCard", "ModelError", "ModelMismatchError",
]
