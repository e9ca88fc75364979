"""The stdout sink: one JSON line per event (the journal keeps them under systemd)."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO


class StdoutSink:
    name = "stdout"

    def __init__(self, stream: TextIO | None = None):
        self._stream = stream  # None = whatever sys.stdout is at delivery

    def deliver(self, payload: dict[str, Any]) -> None:
        stream = self._stream or sys.stdout
        stream.write(json.dumps(payload, ensure_ascii=False) + "\n")
        stream.flush()

    def close(self) -> None:
        pass
