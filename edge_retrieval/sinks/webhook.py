"""The webhook sink: POST the event as JSON; any 2xx answer is an acknowledgement.

Redirects are not followed (a redirected POST would turn into a GET and "succeed"): a 3xx is
a failure like a 4xx or 5xx, and the outbox retries it. The `Idempotency-Key` header carries
the event id, so a receiver can drop the rare duplicate (an answer lost after it was sent).
"""
from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ..errors import ConfigError
from . import DeliveryError, WebhookSinkConfig


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class WebhookSink:
    name = "webhook"

    def __init__(self, config: WebhookSinkConfig):
        url = urllib.parse.urlsplit(config.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"sinks.webhook.url: {config.url!r} is not an http(s) URL")
        if not config.timeout_s > 0:
            raise ConfigError(f"sinks.webhook.timeout_s: must be positive, not {config.timeout_s}")
        self.config = config
        self._opener = urllib.request.build_opener(_NoRedirect)

    def deliver(self, payload: dict[str, Any]) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": "edge-retrieval"}
        if "event_id" in payload:
            headers["Idempotency-Key"] = str(payload["event_id"])
        headers.update(self.config.headers)
        request = urllib.request.Request(self.config.url, data=json.dumps(payload).encode(), headers=headers,
                                         method="POST")
        try:
            with self._opener.open(request, timeout=self.config.timeout_s) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as e:
            raise DeliveryError(f"{self.config.url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:  # refused, timed out, garbled
            reason = getattr(e, "reason", e)
            raise DeliveryError(f"{self.config.url}: {reason}") from None
        if not 200 <= status < 300:
            raise DeliveryError(f"{self.config.url}: HTTP {status}")

    def close(self) -> None:
        pass
