"""Typed errors. The library raises these; only `cli.py` turns them into messages."""

from __future__ import annotations


def one_line(error: BaseException) -> str:
    """An error's text on one line (SQLite and LiteRT messages may quote schema text, end in
    newlines or span lines), at most 300 characters: for the one-line messages of this package."""
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "…"


class EdgeRetrievalError(Exception):
    """Base class of every error this package raises on purpose."""


class BadImageError(EdgeRetrievalError):
    """An image file is missing, unreadable or not an image."""

    def __init__(self, path: str, reason: str = "cannot be read as an image"):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ModelError(EdgeRetrievalError):
    """A model file or its card is missing, malformed or inconsistent."""


class ModelMismatchError(EdgeRetrievalError):
    """Vectors from one model offered to a gallery that belongs to another."""


class GalleryError(EdgeRetrievalError):
    """A gallery file, item or import file is wrong."""


class DamagedGalleryError(GalleryError):
    """SQLite found the gallery file damaged on a read ("database disk image is malformed");
    the message names the file and the check to run."""


class ConfigError(EdgeRetrievalError):
    """A configuration value is wrong; the message names the key path."""


class EventError(EdgeRetrievalError):
    """An event is malformed, or it or its snapshot cannot be stored."""


class DeliveryError(EdgeRetrievalError):
    """A sink did not acknowledge an event (the outbox will try again)."""


class PermanentDeliveryError(DeliveryError):
    """A sink refused an event for good (sending it again cannot help): the outbox parks it
    and goes on with the next event; `edge-retrieval events retry` sends it again."""
