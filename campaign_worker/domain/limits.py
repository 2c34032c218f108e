"""Size limits on what callers send, so no document can outgrow MongoDB's 16 MiB.

A conversation holds at most ``MAX_HISTORY_MESSAGES`` messages, each with content of at
most ``MAX_CONTENT_BYTES``, metadata of at most ``MAX_METADATA_BYTES`` and, for a reply whose
own words differ from its content, those words cut at ``MAX_EXTRACTED_BYTES``, plus recipient
attributes of at most ``MAX_ATTRIBUTES_BYTES``: about 12 MiB in the worst case, whatever
how long the conversation runs. A size is the larger of the JSON (UTF-8) and the BSON
encodings: JSON alone let 4 KiB of metadata take 19 KiB in the document (an array of
zeros), and 500 such replies outgrow 16 MiB (tests/integration/test_document_limit_wire.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from campaign_worker.domain.errors import LimitExceededError

MAX_CONTENT_BYTES = 16_384
MAX_METADATA_BYTES = 4_096
# The author's own words are stored beside the content only when they differ from it; a
# second full copy of a 16 KiB reply would let 500 of them outgrow 16 MiB.
MAX_EXTRACTED_BYTES = 4_096
MAX_ATTRIBUTES_BYTES = 8_192
MAX_HISTORY_MESSAGES = 500
# BSON integers are signed 64-bit; a larger one fails the whole write.
_INT64 = (-(2**63), 2**63 - 1)
_MAX_DEPTH = 20


def encoded_size(value: Any) -> int:
    """The larger of ``value``'s JSON (UTF-8) and BSON sizes: JSON is what a caller sees,
    BSON what the document holds, and BSON can be several times larger (an array of
    small integers or of empty objects: each element also stores its index as a key)."""
    return max(len(json.dumps(value, default=str, ensure_ascii=False).encode()), bson_size(value))


def bson_size(value: Any) -> int:
    """Bytes ``value`` takes as a BSON value (a dict: the whole embedded document).
    Computed, not encoded: the domain stays free of the driver."""
    if isinstance(value, dict):
        return _document_size((str(k), v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return _document_size((str(i), v) for i, v in enumerate(value))
    if isinstance(value, bool):
        return 1
    if value is None:
        return 0
    if isinstance(value, int):
        return 4 if -(2**31) <= value < 2**31 else 8
    if isinstance(value, float | datetime):
        return 8
    text = value if isinstance(value, str) else str(value)
    return 4 + len(text.encode()) + 1  # int32 length, bytes, NUL


def _document_size(items: Iterable[tuple[str, Any]]) -> int:
    # int32 length, then per element: type byte, key as a C string, value; then NUL.
    return 4 + sum(1 + len(key.encode()) + 1 + bson_size(v) for key, v in items) + 1


def check_size(value: Any, limit: int, what: str) -> None:
    """Raise LimitExceededError when ``value`` encodes larger than ``limit`` bytes (JSON or
    BSON, whichever is larger), or holds what MongoDB cannot store (an integer beyond 64
    bits, a ``$`` or dotted key)."""
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
    "MAX_EXTRACTED_BYTES",
    "MAX_HISTORY_MESSAGES",
    "MAX_METADATA_BYTES",
    "bson_size",
    "check_size",
    "encoded_size",
    "truncate_utf8",
]
