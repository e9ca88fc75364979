"""The kiosk's refusal of a request, with its HTTP status."""

from __future__ import annotations

from ..errors import EdgeRetrievalError


class KioskError(EdgeRetrievalError):
    """A request the kiosk refuses; `status` is its HTTP status code."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status
