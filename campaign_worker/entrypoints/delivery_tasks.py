"""Delivery's tasks: the dispatcher (queue ``delivery``, sent by beat and by itself while
batches come full) and ``record_delivery_status`` (queue ``inbound``), the public task
providers' delivery events come back through."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from typing import Any, Literal

import structlog
from celery import current_task

from campaign_worker.adapters import metrics
from campaign_worker.delivery_wiring import Delivery, build_delivery
from campaign_worker.domain.delivery import DeliveryStatus
from campaign_worker.entrypoints.container import container
from campaign_worker.entrypoints.task_policy import (
    RETRYABLE,
    IsoDatetime,
    current_task_id,
    public_task,
)
from campaign_worker.entrypoints.tasks import Id
from campaign_worker.service.delivery import DispatchResult
from campaign_worker.service.delivery_status import StatusRecorded

log = structlog.get_logger(__name__)

_lock = threading.Lock()
_delivery: tuple[int, Delivery] | None = None

ReportedStatus = Literal["delivered", "bounced", "failed", "complained"]


def delivery() -> Delivery:
    """This process's dispatcher and status recorder (built after the fork, on first use)."""
    global _delivery
    with _lock:
        if _delivery is None or _delivery[0] != os.getpid():
            c = container()
            _delivery = (os.getpid(), build_delivery(c.db, c.manager, c.settings))
        return _delivery[1]


def _node() -> str:
    request = current_task.request if current_task else None
    return str(getattr(request, "hostname", None) or socket.gethostname())


def _count(statuses: list[StatusRecorded]) -> None:
    for recorded in statuses:
        if recorded.counted:  # once per (message, status), as in the metrics document
            metrics.delivery_counted(recorded.channel, recorded.status)


def _record(result: DispatchResult) -> None:
    for (channel, outcome), count in result.outcomes.items():
        metrics.delivery_attempts(channel, outcome, count)
    _count(result.statuses)


@public_task("campaign_worker.dispatch_deliveries", dead_letter_failures=False)
def dispatch_deliveries() -> dict[str, Any]:
    """Claim one batch of deliverable outbox rows and send each through its channel."""
    # Who sent a row stays on it (``attempted_by``): worker node, process, task.
    owner = f"{_node()}:{os.getpid()}:{current_task_id() or 'direct'}:{uuid.uuid4().hex[:6]}"
    dispatcher = delivery().dispatcher
    result = dispatcher.dispatch(owner)
    _record(result)
    if result.claimed >= dispatcher.policy.batch_size:
        try:  # more may be waiting: another worker takes the next batch meanwhile
            dispatch_deliveries.apply_async()
        except RETRYABLE as exc:
            log.warning("dispatch_fan_out_failed", error=str(exc))
    return result.as_dict()


@public_task("campaign_worker.record_delivery_status")
def record_delivery_status(
    message_id: Id,
    status: ReportedStatus,
    detail: str | dict[str, Any] | None = None,
    timestamp: IsoDatetime | None = None,
) -> dict[str, Any]:
    """A provider's delivery event for one message (idempotent per message and status)."""
    recorded = delivery().statuses.record(message_id, DeliveryStatus(status), detail, timestamp)
    _count([recorded])
    return recorded.as_dict()


__all__ = ["delivery", "dispatch_deliveries", "record_delivery_status"]
