"""Raw broker access for e2e tests: publish hand-made task messages, count what is queued."""

from __future__ import annotations

import json
from typing import Any

import redis
from kombu import Connection, Exchange, Queue

from tests.e2e.conftest import Broker


def publish_raw(
    broker: Broker,
    body: bytes | str | Any,
    headers: dict[str, Any] | Any,
    *,
    queue: str = "inbound",
    content_type: str = "application/json",
) -> None:
    """Publish ``body`` as is (JSON-encoded unless bytes/str) with these headers."""
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    target = Queue(queue, Exchange(queue), routing_key=queue)
    with Connection(broker.url) as connection:
        connection.Producer().publish(
            data,
            exchange=target.exchange,
            routing_key=queue,
            declare=[target],
            content_type=content_type,
            content_encoding="utf-8",
            headers=headers,
            retry=True,
        )


def queued(broker: Broker, queue: str) -> int:
    """Messages waiting in ``queue`` (not counting ones a consumer holds unacked)."""
    if broker.name == "redis":
        client = redis.Redis.from_url(broker.url)
        try:
            return int(client.llen(queue))
        finally:
            client.close()
    with Connection(broker.url) as connection:
        target = Queue(queue, Exchange(queue), routing_key=queue)
        channel: Any = connection.default_channel
        target(channel).declare()
        return int(channel.queue_declare(queue, passive=True).message_count)
