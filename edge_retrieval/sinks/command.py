"""The command sink: run a program per event, without a shell; exit status 0 is an ack.

The event JSON is the program's standard input and, flattened, its environment:
EDGE_EVENT_ID, _TIME, _SOURCE, _KIND, _LABEL, _ITEM_ID, _SCORE, _SNAPSHOT (empty when
absent) and EDGE_EVENT_JSON (the whole payload). An exit status listed in
`permanent_exit_codes` refuses the event for good (the outbox parks it); any other non-zero
status is retried. On timeout the program's whole process
group is killed, so a script's children cannot keep the pipe (and the outbox) waiting. The
program does not inherit the kiosk's staff token (EDGE_RETRIEVAL_KIOSK_TOKEN).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Any

from . import CommandSinkConfig, DeliveryError, PermanentDeliveryError

_ENV_FIELDS = ("event_id", "time", "source", "kind", "label", "item_id", "score", "snapshot")
_PRIVATE_ENV = ("EDGE_RETRIEVAL_KIOSK_TOKEN",)  # secrets of this process that a sink's program has no use for


def event_env(payload: dict[str, Any]) -> dict[str, str]:
    """The EDGE_EVENT_* variables for one payload."""
    env = {}
    for key in _ENV_FIELDS:
        value = payload.get(key)
        name = "EDGE_EVENT_ID" if key == "event_id" else "EDGE_EVENT_" + key.upper()
        env[name] = "" if value is None else str(value)
    env["EDGE_EVENT_JSON"] = json.dumps(payload, ensure_ascii=False)
    return env


class CommandSink:
    name = "command"

    def __init__(self, config: CommandSinkConfig):
        config.validate("sinks.command")
        self.config = config

    def deliver(self, payload: dict[str, Any]) -> None:
        argv = list(self.config.argv)
        env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**env, **event_env(payload)},
                start_new_session=True,
                shell=False,
            )
        except OSError as e:
            raise DeliveryError(f"{argv[0]}: cannot run ({e.strerror or e})") from None
        try:
            _, stderr = process.communicate(json.dumps(payload).encode() + b"\n", timeout=self.config.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            raise DeliveryError(f"{argv[0]}: no exit within {self.config.timeout_s:g} s (killed)") from None
        if process.returncode != 0:
            tail = stderr.decode(errors="replace").strip().splitlines()[-1:] if stderr else []
            error = PermanentDeliveryError if process.returncode in self.config.permanent_exit_codes else DeliveryError
            raise error(f"{argv[0]}: exit status {process.returncode}" + (f": {tail[0]}" if tail else ""))

    def close(self) -> None:
        pass


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    try:
        process.communicate(timeout=1)
    except subprocess.TimeoutExpired:
        pass
