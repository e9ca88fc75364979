"""The webhook sink: POST the event as JSON; any 2xx answer is an acknowledgement.

Redirects are not followed (a redirected POST would turn into a GET and "succeed"): a 3xx is
a failure like a 5xx, and the outbox retries it. A 4xx other than 408 and 429 says this event
will never be taken (bad payload, wrong URL, no permission): it raises PermanentDeliveryError
and the outbox parks the event instead of blocking every later one behind it. The
`Idempotency-Key` header carries the event id, so a receiver can drop the rare duplicate (an
answer lost after it was sent).

Credentials never reach the log or the outbox: `user:password@` in the URL is sent as a Basic
`Authorization` header (urllib would take it for part of the host name), the configured headers
are never quoted, and errors name the URL without its password, query values or fragment.
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from . import DeliveryError, PermanentDeliveryError, WebhookSinkConfig, redact_url

_TRANSIENT_4XX = (408, 429)  # Request Timeout, Too Many Requests: worth trying again


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class WebhookSink:
    name = "webhook"

    def __init__(self, config: WebhookSinkConfig):
        config.validate("sinks.webhook")
        self.config = config
        url = urllib.parse.urlsplit(config.url)
        self._headers = {"Content-Type": "application/json", "User-Agent": "edge-retrieval"}
        if url.username is not None or url.password is not None:  # user:password@host → a Basic header
            userinfo = urllib.parse.unquote(url.username or "") + ":" + urllib.parse.unquote(url.password or "")
            self._headers["Authorization"] = "Basic " + base64.b64encode(userinfo.encode()).decode()
            url = url._replace(netloc=url.netloc.rpartition("@")[2])
        self._url = urllib.parse.urlunsplit(url._replace(fragment=""))
        self.where = redact_url(config.url)  # what errors and logs name
        self._opener = urllib.request.build_opener(_NoRedirect)

    def deliver(self, payload: dict[str, Any]) -> None:
        headers = dict(self._headers)
        if "event_id" in payload:
            headers["Idempotency-Key"] = str(payload["event_id"])
        headers.update(self.config.headers)
        request = urllib.request.Request(self._url, data=json.dumps(payload).encode(), headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.config.timeout_s) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as e:
            permanent = 400 <= e.code < 500 and e.code not in _TRANSIENT_4XX  # the receiver will never take it
            raise (PermanentDeliveryError if permanent else DeliveryError)(
                f"{self.where}: HTTP {e.code} {e.reason}"
            ) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:  # refused, timed out,
            reason = getattr(e, "reason", e)  # garbled
            raise DeliveryError(f"{self.where}: {reason}") from None
        if not 200 <= status < 300:
            raise DeliveryError(f"{self.where}: HTTP {status}")

    def close(self) -> None:
        pass
