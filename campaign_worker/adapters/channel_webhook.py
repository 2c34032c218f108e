"""The webhook channel: an HTTP POST of JSON, signed, with the message id as idempotency key.

Headers: ``Idempotency-Key: <message_id>``, ``X-Campaign-Timestamp: <unix seconds>`` and
``X-Campaign-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>" under WEBHOOK_SECRET>``
(README, "Webhook channel", has the receiver's verification snippet). A 2xx is sent; a
timeout, a connection error, a 5xx, 408 or 429 is transient (``Retry-After`` honoured);
any other status fails the message without retry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from campaign_worker.domain.delivery import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Outgoing,
    parse_retry_after,
    signature,
)
from campaign_worker.domain.errors import PermanentDeliveryError, TransientDeliveryError

_TRANSIENT_STATUS = frozenset({408, 425, 429})


class WebhookChannel:
    """POSTs each message to one URL; safe to call from several threads at once (one
    pool of up to ``max_in_flight`` kept-alive connections)."""

    name = "webhook"
    needs_attributes = False

    def __init__(
        self,
        url: str,
        secret: bytes,
        *,
        connect_timeout: float,
        read_timeout: float,
        transport: httpx.BaseTransport | None = None,
        max_in_flight: int = 32,
    ) -> None:
        self._url = url
        self._secret = secret
        self.max_in_flight = max_in_flight
        timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        # Connections kept alive between batches, as many as sends in flight; waiting for a
        # free one counts against the connect timeout (pool timeout).
        limits = httpx.Limits(
            max_connections=max_in_flight, max_keepalive_connections=max_in_flight
        )
        # No redirects: a signed POST is not replayed to wherever a 3xx points.
        self._client = httpx.Client(
            timeout=timeout, transport=transport, follow_redirects=False, limits=limits
        )

    def address(self, user_id: str, attributes: Mapping[str, Any]) -> str:
        """The receiver routes by user id."""
        return user_id

    def send(self, message: Outgoing) -> str | None:
        """POST the message; the provider's id (``X-Message-Id``) if it gave one."""
        body = json.dumps(message.payload(), separators=(",", ":"), sort_keys=True).encode()
        # Real time, not the campaign clock: receivers check it against their own.
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            IDEMPOTENCY_HEADER: message.message_id,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature(self._secret, timestamp, body),
        }
        try:
            response = self._client.post(self._url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise TransientDeliveryError(f"webhook timeout ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise TransientDeliveryError(f"webhook unreachable ({type(exc).__name__})") from None
        code = response.status_code
        if 200 <= code < 300:
            provider_id = response.headers.get("X-Message-Id")
            return str(provider_id) if provider_id else None
        reason = f"webhook answered HTTP {code}"
        if code >= 500 or code in _TRANSIENT_STATUS:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
            raise TransientDeliveryError(reason, retry_after)
        raise PermanentDeliveryError(reason)

    def close(self) -> None:
        self._client.close()


__all__ = ["WebhookChannel"]
