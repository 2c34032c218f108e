"""The tokens of dispatched processing tasks: each one's metrics registration and Celery
task id at once. A token names its partition range (``range-<index>of<count>-<id>``),
which is how the poller sees that a range is being worked on, and how a task sees that
whoever enqueued it registered it (``metrics_ledger.MetricsLedger``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from campaign_worker.domain.partitions import PartitionRange

DISPATCH_PREFIX = "range-"


@dataclass(frozen=True)
class Dispatch:
    """A processing task to enqueue: its range, and its token (registration and task id)."""

    span: PartitionRange
    token: str


def dispatch_token(span: PartitionRange) -> str:
    """A fresh registration token (and Celery task id) for a task on ``span``."""
    return f"{DISPATCH_PREFIX}{span.key}-{uuid.uuid4().hex}"


def is_dispatch_token(token: str | None) -> bool:
    return bool(token) and str(token).startswith(DISPATCH_PREFIX)


__all__ = ["DISPATCH_PREFIX", "Dispatch", "dispatch_token", "is_dispatch_token"]
