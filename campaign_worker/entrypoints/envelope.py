"""Task message envelopes: check one before Celery sees it, normalise or reject it.

Celery drops (unknown task name, protocol mistakes) or crashes on (a JSON object where the
``[args, kwargs, embed]`` list belongs) messages it cannot turn into a request. ``check``
decides first: a message Celery can run (``None``; ``args: null`` and ``kwargs: null``,
what celery-node sends for an omitted argument, are rewritten to ``[]`` / ``{}``), or a
``Rejection`` with a reason, to be stored as a dead letter with the raw message.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

from kombu.serialization import dumps

from campaign_worker.adapters.broker import INVALID_HEADERS

UNKNOWN_TASK = "unknown_task"
MALFORMED_ENVELOPE = "malformed_envelope"
UNDECODABLE_BODY = "undecodable_body"

#: Raw bodies up to this size are stored whole; bigger ones are cut (MongoDB's document
#: limit is 16 MiB) and their parsed arguments are not kept a second time.
BODY_LIMIT = 4 * 1024 * 1024


class BrokerMessage(Protocol):
    """What ``check`` needs of a kombu message."""

    headers: Any
    body: Any
    content_type: str | None
    content_encoding: str | None
    properties: Any
    delivery_info: Any
    _decoded_cache: Any

    def decode(self) -> Any: ...


class MalformedError(ValueError):
    """The envelope does not follow Celery's task message protocol."""


@dataclass
class Rejection:
    """A message to dead-letter instead of running."""

    reason: str
    error: str
    task_id: str | None = None
    task_name: str | None = None
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    envelope: dict[str, Any] = field(default_factory=dict)

    @property
    def dead_letter_id(self) -> str:
        """The task id when there is one, else a hash of the raw body: a redelivered
        poison message is stored once."""
        return self.task_id or "sha256:" + self.envelope.get("body_sha256", "")


def check(message: BrokerMessage, registered: Collection[str]) -> Rejection | None:
    """``None`` if Celery can take ``message`` (normalised in place), else why not."""
    headers = message.headers
    if not isinstance(headers, dict):
        return _reject(message, MALFORMED_ENVELOPE, "headers are not a mapping")
    if INVALID_HEADERS in headers:  # a raw item kombu could not take (adapters/broker.py)
        invalid = headers[INVALID_HEADERS]
        error = invalid.get("error") if isinstance(invalid, dict) else None
        return _reject(message, MALFORMED_ENVELOPE, str(error or "not a task message"))
    try:
        payload = message.decode()
    except Exception as exc:  # kombu's DecodeError, ContentDisallowed, or worse
        error = f"cannot decode body: {type(exc).__name__}"
        return _reject(message, UNDECODABLE_BODY, error, headers.get("id"), headers.get("task"))
    v1 = "task" not in headers  # protocol 1: name and id are in the body
    source = (payload if isinstance(payload, dict) else {}) if v1 else headers
    name, task_id = source.get("task"), source.get("id")
    try:
        args, kwargs = _arguments(payload, v1)
        if not isinstance(name, str) or not name:
            raise MalformedError("no task name (header 'task' or protocol 1 body 'task')")
        if not isinstance(task_id, str) or not task_id:
            raise MalformedError("no task id (header 'id' or protocol 1 body 'id')")
    except MalformedError as exc:
        return _reject(message, MALFORMED_ENVELOPE, str(exc), task_id, name, payload=payload)
    if name not in registered:
        return _reject(
            message, UNKNOWN_TASK, f"task {name!r} is not registered", task_id, name, args, kwargs
        )
    _normalise(message, payload, args, kwargs)
    return None


def _arguments(payload: Any, v1: bool) -> tuple[list[Any], dict[str, Any]]:
    """Positional and keyword arguments of a protocol 2 list or a protocol 1 mapping."""
    if isinstance(payload, dict):
        if not v1 and "args" not in payload:  # Celery would unpack the mapping: a crash
            raise MalformedError("body is a JSON object, expected [args, kwargs, embed]")
        args, kwargs, embed = payload.get("args"), payload.get("kwargs"), None
    elif isinstance(payload, list | tuple) and len(payload) == 3 and not v1:
        args, kwargs, embed = payload
    else:
        expected = "a mapping with 'task' and 'id'" if v1 else "[args, kwargs, embed]"
        raise MalformedError(f"body is a JSON {_json_type(payload)}, expected {expected}")
    if not isinstance(args, list | tuple | None):
        raise MalformedError(f"args is a JSON {_json_type(args)}, expected an array")
    if not isinstance(kwargs, dict | None):
        raise MalformedError(f"kwargs is a JSON {_json_type(kwargs)}, expected an object")
    if not isinstance(embed, dict | None):
        raise MalformedError(f"embed is a JSON {_json_type(embed)}, expected an object")
    return list(args or []), dict(kwargs or {})


def _normalise(
    message: BrokerMessage, payload: Any, args: list[Any], kwargs: dict[str, Any]
) -> None:
    """Rewrite ``null`` args/kwargs/embed so Celery's tracer can call the task."""
    if isinstance(payload, dict):
        if payload.get("args") is not None and payload.get("kwargs") is not None:
            return
        fixed: Any = {**payload, "args": args, "kwargs": kwargs}
    else:
        if all(part is not None for part in payload):
            return
        fixed = [args, kwargs, payload[2] or {}]
    _content_type, _encoding, data = dumps(fixed, serializer="json")
    message.body = data if isinstance(message.body, str) else data.encode()
    message._decoded_cache = fixed


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", tuple: "array", str: "string", bool: "boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "number" if isinstance(value, int | float) else "value")


def _reject(
    message: BrokerMessage,
    reason: str,
    error: str,
    task_id: Any = None,
    name: Any = None,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    *,
    payload: Any = None,
) -> Rejection:
    envelope = envelope_of(message)
    if envelope["body_bytes"] > BODY_LIMIT:
        args = kwargs = None  # the raw body holds them; twice would not fit a document
    return Rejection(
        reason,
        error,
        task_id if isinstance(task_id, str) and task_id else None,
        name if isinstance(name, str) and name else None,
        args,
        kwargs,
        envelope,
    )


def envelope_of(message: BrokerMessage) -> dict[str, Any]:
    """The raw message as a document: body (text, or base64 if not UTF-8), its size and
    hash, headers and the useful properties."""
    raw = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    try:
        text, encoding = raw[:BODY_LIMIT].decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(raw[:BODY_LIMIT]).decode("ascii"), "base64"
    delivery = message.delivery_info if isinstance(message.delivery_info, dict) else {}
    properties = message.properties if isinstance(message.properties, dict) else {}
    return {
        "body": text,
        "body_encoding": encoding,
        "body_bytes": len(raw),
        "body_sha256": hashlib.sha256(raw).hexdigest(),
        "body_truncated": len(raw) > BODY_LIMIT,
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "headers": _jsonable(message.headers),
        "exchange": delivery.get("exchange"),
        "routing_key": delivery.get("routing_key"),
        "correlation_id": properties.get("correlation_id"),
        "reply_to": properties.get("reply_to"),
    }


def _jsonable(value: Any) -> Any:
    """Headers as JSON text when they are not a plain mapping BSON can hold."""
    if isinstance(value, dict):
        return json.loads(json.dumps(value, default=repr))
    return repr(value)


__all__ = [
    "BODY_LIMIT",
    "MALFORMED_ENVELOPE",
    "UNDECODABLE_BODY",
    "UNKNOWN_TASK",
    "MalformedError",
    "Rejection",
    "check",
    "envelope_of",
]
