"""A guard for kombu's Redis transport: a worker survives a Redis restart.

The failure it prevents (reproduced by ``tests/e2e/test_broker_restart_e2e.py``, seen on
kombu 5.7.0 / celery 5.7.0): Redis goes away while a late-acked task runs and another pool
slot is free, so the channel is blocked in ``BRPOP`` (``_in_poll``). Celery's consumer then

1. calls ``Connection.collect()``, which closes the channel: ``Channel.close()`` first reads
   the pending ``BRPOP`` reply, gets ``ConnectionError`` and stops there (the channel is not
   marked closed, its unacked messages are not restored); ``Connection`` swallows that
   error and detaches the transport (``transport.client = None``);
2. calls ``Connection.close()``, which closes the same channel again: now it reaches
   ``restore_unacked_once()``, which needs a new Redis client, whose connection parameters
   come from ``transport.client`` - ``None`` - so ``AttributeError: 'NoneType' object has
   no attribute 'hostname'``. Only connection errors are ignored there, so the
   AttributeError ends the worker ("Unrecoverable error").

The same detached-transport AttributeError in other close paths: celery/kombu#582 (gossip
restart) and celery/kombu#970 (warm shutdown). The guard lets ``Channel.close()`` absorb a
connection error from that last ``BRPOP`` read (as it already absorbs ``Empty``), so the
first close completes: the channel is marked closed, the restore of unacked messages is
attempted while the transport is still attached (if Redis is still down it fails with a
connection error, which is ignored, and the messages stay in Redis's unacked set until the
task acks them or the visibility timeout returns them), and the second close is a no-op.
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections.abc import Callable
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base as kombu_virtual

_GUARD_FLAG = "_campaign_worker_guarded"
# Set in place of headers that are not a mapping (their repr, cut): the message is then
# built, and the intake check (entrypoints/envelope.py) dead-letters it.
INVALID_HEADERS = "x-campaign-worker-invalid-headers"


def install_redis_close_guard() -> None:
    """Patch ``kombu.transport.redis.Channel.close`` once per process (idempotent)."""
    channel_cls: Any = kombu_redis.Channel
    original: Callable[[Any], Any] = channel_cls.close
    if getattr(original, _GUARD_FLAG, False):
        return

    def close(self: Any) -> Any:
        if getattr(self, "_in_poll", None) and not self.closed:
            # The broker vanished mid-BRPOP: drop the pending reply and go on closing.
            with contextlib.suppress(Empty, *self.connection_errors):
                self._brpop_read()
        return original(self)

    setattr(close, _GUARD_FLAG, True)
    close.__doc__ = original.__doc__
    channel_cls.close = close


def install_payload_guard() -> None:
    """Patch kombu's Redis transport once per process (idempotent) so that no raw item in
    a queue can end the worker. Celery ended it ("Unrecoverable error") when the consumer
    loop met a message whose ``headers`` are not a mapping (``Message.__init__`` calls
    ``headers.get``), an item that is not JSON (``loads`` in ``_brpop_read``), or JSON that
    is not a kombu payload (a list; no ``properties``): any client can push such items to
    Redis. Each becomes a message whose headers hold ``INVALID_HEADERS`` (the reason and
    the original headers), so the intake check dead-letters it with its raw body
    (``tests/e2e/test_bad_input_e2e.py``)."""
    message_cls: Any = kombu_virtual.Message
    original_init: Callable[..., None] = message_cls.__init__
    if getattr(original_init, _GUARD_FLAG, False):
        return
    redis_module: Any = kombu_redis  # kombu's stubs do not list the names it imports
    original_loads: Callable[[Any], Any] = redis_module.loads

    def loads(text: Any) -> Any:
        try:
            return original_loads(text)
        except ValueError:  # JSONDecodeError: not a kombu payload at all
            return _stand_in(text, "the raw item is not JSON")

    def __init__(self: Any, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        original_init(self, _checked(payload), channel, **kwargs)

    setattr(__init__, _GUARD_FLAG, True)
    message_cls.__init__ = __init__
    redis_module.loads = loads


def _checked(payload: Any) -> Any:
    """``payload`` if kombu can build a message of it, else a stand-in that it can."""
    if not isinstance(payload, dict):
        return _stand_in(json.dumps(payload, default=repr), "the raw item is not a JSON object")
    properties = payload.get("properties")
    if not isinstance(properties, dict) or "delivery_tag" not in properties:
        return _stand_in(json.dumps(payload, default=repr), "the raw item has no properties")
    headers = payload.get("headers")
    if headers is not None and not isinstance(headers, dict):
        invalid = {"error": "headers are not a mapping", "headers": repr(headers)[:1000]}
        return {**payload, "headers": {INVALID_HEADERS: invalid}}
    return payload


def _stand_in(raw: Any, error: str) -> dict[str, Any]:
    """A kombu payload carrying ``raw`` as its body (base64) and the reason in headers."""
    data = raw if isinstance(raw, bytes) else str(raw).encode("utf-8", "surrogateescape")
    return {
        "body": base64.b64encode(data).decode("ascii"),
        "content-type": "application/x-invalid",
        "content-encoding": "binary",
        "headers": {INVALID_HEADERS: {"error": error}},
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": uuid.uuid4().hex,
            "delivery_info": {"exchange": "", "routing_key": ""},
        },
    }


__all__ = ["INVALID_HEADERS", "install_payload_guard", "install_redis_close_guard"]
