"""The follower: one device's side of the fleet (the service starts it when `[fleet] group` is set).

Two threads: paho's network thread verifies heads and chunks as they arrive and writes the
chunks into a download file beside the gallery (memory stays small whatever the size); the
follower's own thread applies a complete download (layer.py) and publishes the state. The
follower has its own connection to the gallery file: the service's connection sees the new
version at its next generation check.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt

from ..errors import ConfigError, EdgeRetrievalError, one_line
from . import FleetConfig, Topics, layer, load_key
from .wire import Refused, read_head, where
from .wire import client as make_client

log = logging.getLogger(__name__)
READ_BLOCK = 1 << 20


class Follower:
    """Follows `config.group`'s watchlist into the gallery file at `gallery_path`, for a device
    whose model is `model_sha256`.

    >>> with Follower(config.fleet, "gallery.db", embedder.sha256).start() as follower: ...
    """

    def __init__(
        self,
        config: FleetConfig,
        gallery_path: str | Path,
        model_sha256: str,
        model_name: str = "",
        *,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ):
        config.validate("fleet")
        if not config.group:
            raise ConfigError("fleet.group: not set")
        if str(gallery_path) == ":memory:":
            raise ConfigError("fleet.group: a fleet needs a gallery file (gallery.path), not an in-memory gallery")
        self.config, self.model_sha256, self.model_name, self.on_event = config, model_sha256, model_name, on_event
        self.key = load_key(config.key_file)  # kept in memory only, never logged
        self.device = config.device
        self.topics = Topics(config.topic_prefix, config.group, self.device)
        self.gallery_path = Path(gallery_path)
        self.download = Path(f"{gallery_path}.fleet-download")
        self.applied: dict[str, Any] = {}
        self.last_error = ""
        self.fps: float | None = None
        self._gallery = None
        self._lock = threading.Lock()
        self._wake, self._stop = threading.Event(), threading.Event()
        self._target: dict[str, Any] | None = None  # the head being downloaded
        self._have: set[int] = set()
        self._fd: int | None = None
        self._complete: dict[str, Any] | None = None
        self._said: set[str] = set()  # refusals already logged (a retained head comes back at every reconnect)
        self._state_due = True
        self._thread: threading.Thread | None = None
        self._client = make_client(
            config, f"edge-retrieval-fleet-{self.device}-{uuid.uuid4().hex[:8]}", (self.topics.availability, "offline")
        )
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = lambda client, userdata: self._fail_once(
            f"broker {where(config)} does not answer; retrying (the gallery stays as it is meanwhile)"
        )
        self._client.on_message = self._on_message

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "Follower":
        self._gallery = layer.open_gallery(self.gallery_path)
        applied = layer.applied(self._gallery)
        self.applied = applied if applied.get("group") == self.config.group else {}
        self.download.unlink(missing_ok=True)  # a download a previous run did not finish
        log.info(
            "fleet %s: following as %s on %s (version applied: %s)",
            self.config.group,
            self.device,
            where(self.config),
            self.applied.get("version", "none"),
        )
        self._thread = threading.Thread(target=self._run, name="fleet", daemon=True)
        self._thread.start()
        try:
            self._client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
        except (OSError, ValueError) as e:
            self.close()
            raise ConfigError(f"fleet.host: {where(self.config)}: {one_line(e)}") from None
        self._client.loop_start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._client.is_connected():
            try:
                self._publish_state()
                self._client.publish(self.topics.availability, "offline", qos=1, retain=True).wait_for_publish(1)
            except (RuntimeError, ValueError, EdgeRetrievalError):
                pass
        self._client.disconnect()
        self._client.loop_stop()
        with self._lock:
            self._drop_target()
        self.download.unlink(missing_ok=True)
        if self._gallery is not None:
            self._gallery.close()
            self._gallery = None

    def __enter__(self) -> "Follower":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_for(self, version: int, timeout: float) -> bool:
        """Whether `version` (or a newer one) got applied within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.applied.get("version", 0) < version:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    # -- the network thread: heads and chunks ------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._fail_once(f"broker {where(self.config)} refused the connection ({reason_code})")
            return
        subscriptions = [(self.topics.head, 1)]
        with self._lock:
            if self._target is not None:
                subscriptions.append((self.topics.chunk(self._target["version"], "+"), 1))
        client.subscribe(subscriptions)
        client.publish(self.topics.availability, "online", qos=1, retain=True)
        self._state_due = True
        self._wake.set()

    def _on_message(self, client, userdata, message) -> None:
        if not message.payload:  # a retained message being cleared
            return
        if message.topic == self.topics.head:
            self._on_head(message.payload)
        elif message.topic.startswith(self.topics.head + "/"):
            self._on_chunk(message.topic[len(self.topics.head) + 1 :], message.payload)

    def _on_head(self, payload: bytes) -> None:
        said = hashlib.sha256(payload).hexdigest()
        try:
            head = read_head(payload, self.key, self.config.group)
            version, applied = head["version"], self.applied
            if applied and version == applied["version"] and head["sha256"] == applied["sha256"]:
                return  # the version in place (a retained head, again)
            if applied and version <= applied["version"]:
                raise Refused(f"version {version}: not newer than the version applied ({applied['version']})")
            model = head["model"]["model_sha256"]
            if model != self.model_sha256:
                raise Refused(
                    f"version {version}: for model {head['model'].get('model_name') or '?'} ({model[:12]}…), "
                    f"this device runs {self.model_name or '?'} ({self.model_sha256[:12]}…)"
                )
            if head["size"] > self.config.max_payload_bytes:
                raise Refused(
                    f"version {version}: {head['size']} bytes, more than max_payload_mb ({self.config.max_payload_mb:g})"
                )
        except Refused as e:
            self._refuse(str(e), said, head=None)
            return
        with self._lock:
            if head["signature"] in self._said or (self._target and self._target["signature"] == head["signature"]):
                return  # refused once already (a bad chunk, a failed import), or downloading
            self._drop_target()
            try:
                fd = os.open(self.download, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.ftruncate(fd, head["size"])
            except OSError as e:
                self._fail_once(f"version {version}: cannot write {self.download} ({e.strerror})")
                return
            self._fd, self._target, self._have = fd, head, set()
            self._client.subscribe(self.topics.chunk(version, "+"), qos=1)
        log.info(
            "fleet %s: downloading version %d (%d bytes, %d chunks)",
            self.config.group,
            version,
            head["size"],
            len(head["chunks"]),
        )

    def _on_chunk(self, rest: str, payload: bytes) -> None:
        with self._lock:
            head = self._target
            version, _, index = rest.partition("/")
            if head is None or version != str(head["version"]) or not index.isdigit():
                return
            i, n = int(index), len(head["chunks"])
            if i >= n or i in self._have:
                return
            expected = min(head["chunk_size"], head["size"] - i * head["chunk_size"])
            if len(payload) != expected or hashlib.sha256(payload).hexdigest() != head["chunks"][i]:
                self._drop_target()
                refusal = f"version {head['version']}: chunk {i} differs from the signed digest (tampered)"
            else:
                refusal = None
                os.pwrite(self._fd, payload, i * head["chunk_size"])
                self._have.add(i)
                if len(self._have) == n:
                    os.close(self._fd)
                    self._fd = None
                    self._complete, self._target = head, None
                    self._client.unsubscribe(self.topics.chunk(head["version"], "+"))
                    self._wake.set()
        if refusal:
            self._refuse(refusal, head["signature"], head=head)

    def _drop_target(self) -> None:
        """Forget the download under way (the lock held)."""
        if self._target is not None:
            self._client.unsubscribe(self.topics.chunk(self._target["version"], "+"))
        if self._fd is not None:
            os.close(self._fd)
        self._target, self._fd, self._have = None, None, set()

    # -- the follower's thread: apply, state ---------------------------------------------------
    def _run(self) -> None:
        next_state = 0.0
        while not self._stop.is_set():
            self._wake.wait(max(0.0, next_state - time.monotonic()))
            self._wake.clear()
            with self._lock:
                head, self._complete = self._complete, None
            if head is not None:
                self._apply(head)
            if self._state_due or time.monotonic() >= next_state:
                self._state_due = False
                if self._client.is_connected():
                    self._publish_state()
                next_state = time.monotonic() + self.config.state_interval

    def _apply(self, head: dict[str, Any]) -> None:
        version = head["version"]
        try:
            digest = hashlib.sha256()
            with open(self.download, "rb") as f:
                while block := f.read(READ_BLOCK):
                    digest.update(block)
            if digest.hexdigest() != head["sha256"]:
                raise Refused(f"version {version}: the file differs from the signed sha256 (tampered)")
            result = layer.apply(
                self._gallery, self.download, group=self.config.group, version=version, sha256=head["sha256"]
            )
        except (EdgeRetrievalError, OSError) as e:
            self._refuse(f"version {version}: {one_line(e)}", head["signature"], head=head)
            return
        finally:
            self.download.unlink(missing_ok=True)
        self.applied = layer.applied(self._gallery)
        log.info(
            "fleet %s: version %d applied: %d item(s)%s",
            self.config.group,
            version,
            result["items"],
            f", {result['replaced']} local item(s) of the same label replaced" if result["replaced"] else "",
        )
        self._event("applied", version, "")
        self._state_due = True

    def _refuse(self, reason: str, said: str, head: dict[str, Any] | None) -> None:
        """One log line, one event and the state's last_error per refused payload; the gallery is unchanged."""
        if said in self._said:
            return
        self._said.add(said)
        self.last_error = reason
        log.warning("fleet %s: refused %s; the gallery is unchanged", self.config.group, reason)
        self._event("refused", head["version"] if head else None, reason)
        self._state_due = True
        self._wake.set()

    def _fail_once(self, reason: str) -> None:
        if reason not in self._said:
            self._said.add(reason)
            self.last_error = reason
            log.warning("fleet %s: %s", self.config.group, reason)

    def _event(self, kind: str, version: int | None, reason: str) -> None:
        event = {
            "kind": kind,
            "device": self.device,
            "group": self.config.group,
            "version": version,
            "reason": reason,
            "time": time.time(),
        }
        self._client.publish(self.topics.event, json.dumps(event), qos=1)
        if self.on_event is not None:
            self.on_event(event)

    def state(self) -> dict[str, Any]:
        items, local = layer.counts(self._gallery) if self._gallery is not None else (0, 0)
        applied = self.applied
        return {
            "device": self.device,
            "group": self.config.group,
            "version": applied.get("version"),
            "sha256": applied.get("sha256"),
            "applied": applied.get("applied"),
            "items": items,
            "local_items": local,
            "model": {"model_sha256": self.model_sha256, "model_name": self.model_name},
            "last_error": self.last_error,
            "fps": None if self.fps is None else round(self.fps, 2),
            "time": time.time(),
        }

    def _publish_state(self) -> None:
        try:
            state = self.state()
        except EdgeRetrievalError as e:
            state = {"device": self.device, "group": self.config.group, "last_error": one_line(e), "time": time.time()}
        info = self._client.publish(self.topics.state, json.dumps(state), qos=1, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.debug("fleet state not sent: %s", mqtt.error_string(info.rc))
