"""Size limits on what callers send, so no document can outgrow MongoDB's 16 MiB.

A conversation holds at most ``MAX_HISTORY_MESSAGES`` messages, each with content of at
most ``MAX_CONTENT_BYTES`` and metadata of at most ``MAX_METADATA_BYTES``, plus recipient
attributes of at most ``MAX_ATTRIBUTES_BYTES``: about 11 MiB in the worst case, whatever
how long the conversation runs. Sizes are of the JSON encoding (UTF-8), close to BSON's.
"""

from __future__ import annotations

import json
from typing import Any

from campaign_worker.domain.errors import LimitExceededError

MAX_CONTENT_BYTES = 16_384
MAX_METADATA_BYTES = 4_096
MAX_ATTRIBUTES_BYTES = 8_192
MAX_HISTORY_MESSAGES = 500
# BSON integers are signed 64-bit; a larger one fails the whole write.
_INT64 = (-(2**63), 2**63 - 1)
_MAX_DEPTH = 20


def encoded_size(value: Any) -> int:
    return len(json.dumps(value, default=str, ensure_ascii=False).encode())


def check_size(value: Any, limit: int, what: str) -> None:
    """Raise LimitExceededError when ``value`` encodes larger than ``limit`` bytes, or
    holds what MongoDB cannot store (an integer beyond 64 bits, a ``$`` or dotted key)."""
    _check_storable(value, what, 0)
    size = encoded_size(value)
    if size > limit:
        raise LimitExceededError(f"{what}: {size} bytes exceed the limit of {limit}")


def _check_storable(value: Any, what: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise LimitExceededError(f"{what}: nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, bool):
        return
    if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
        raise LimitExceededError(f"{what}: integer {value} does not fit in 64 bits")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or key.startswith("$") or "." in key or "\0" in key:
                raise LimitExceededError(f"{what}: key {str(key)[:40]!r} cannot be stored")
            _check_storable(item, f"{what}.{key}", depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_storable(item, what, depth + 1)


def truncate_utf8(text: str, limit: int) -> tuple[str, int]:
    """``text`` cut to at most ``limit`` UTF-8 bytes (on a character boundary), and its
    original size in bytes."""
    raw = text.encode()
    if len(raw) <= limit:
        return text, len(raw)
    return raw[:limit].decode(errors="ignore"), len(raw)


__all__ = [
    "MAX_ATTRIBUTES_BYTES",
    "MAX_CONTENT_BYTES",
    "MAX_HISTORY_MESSAGES",
    "MAX_METADATA_BYTES",
    "check_size",
    "encoded_size",
    "truncate_utf8",
]
