"""Batched task execution in the worker: many messages of one task, one run in the pool.

A task whose class sets ``Strategy = "campaign_worker.entrypoints.batching:strategy"``
(``BatchedTask`` in ``batch_task.py``) has its messages buffered by the consumer, as
celery-batches does (whose 0.11 requires celery < 5.7, hence this module), and flushed
to the pool as one job once ``size`` messages wait or ``interval`` seconds after the
first one: each message keeps its own request (events, ``inspect``, result, dead letter).

Acknowledgement, which celery-batches gets wrong for us (it acks a whole batch whose run
raised): a message is acknowledged only after the pool returned *its* outcome (done, or
failed and stored as a dead letter, or re-published as a retry); one the run could not
settle is rejected back to the broker after a pause; if the pool process dies (killed,
hard time limit), the whole batch is rejected back. Messages buffered when the worker
stops are unacknowledged, so the broker delivers them again: nothing is lost.

Prefetch: a buffered message holds a prefetch slot of its own (QoS incremented, as Celery
does for a message with an ETA), up to ``2 * size`` messages, so batches fill up with the
default prefetch multiplier of 1; a new buffer is granted room for a whole batch in one
QoS update, and a slot is released when its message is settled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic, time
from typing import Any

from celery import signals
from celery.app.trace import LOG_RECEIVED
from celery.utils.imports import symbol_by_name
from celery.utils.log import get_logger
from celery.utils.time import timezone
from celery.worker.request import create_request_cls  # type: ignore[attr-defined]
from celery.worker.state import revoked as revoked_tasks
from celery.worker.state import (  # type: ignore[attr-defined]
    task_accepted,
    task_ready,
    task_reserved,
    task_scheduled,
)
from celery.worker.strategy import (  # type: ignore[attr-defined]
    hybrid_to_proto2,
    proto1_to_proto2,
)
from kombu.asynchronous.timer import to_timestamp

from campaign_worker.entrypoints.celery_app import app

logger = get_logger(__name__)
_strategy_log = get_logger("celery.worker.strategy")  # where Celery logs "received"

#: A batch whose outcome is unknown goes back to the broker after this pause, so an
#: outage is no hot loop (the same pause as ``task_policy.STORE_RETRY_PAUSE_SECONDS``).
REQUEUE_PAUSE_SECONDS = 2.0


@dataclass(frozen=True)
class BatchItem:
    """One message of a batch, as the pool process gets it (picklable)."""

    id: str
    args: list[Any]
    kwargs: dict[str, Any]
    retries: int = 0
    reply_to: str | None = None  # where an RPC result backend sends the result
    correlation_id: str | None = None
    delayed: bool = False  # sent with an ETA: claims its task id before running


@dataclass(frozen=True)
class ItemOutcome:
    """What became of one message: ``state`` is a Celery state (SUCCESS, FAILURE, RETRY);
    ``settled`` False means neither done nor stored, so it goes back to the broker."""

    settled: bool
    state: str = "SUCCESS"
    result: Any = None
    error: str = ""


def run_batch(task_name: str, items: list[BatchItem]) -> list[ItemOutcome] | None:
    """Pool side: run one batch through the task's ``run_batch``. Never raises: None
    (nothing settled) sends every message back to the broker."""
    try:
        task: Any = app.tasks[task_name]
        outcomes: list[ItemOutcome] = task.run_batch(items)
        return outcomes
    except Exception:
        logger.exception("batch of %s (%d messages) failed unsettled", task_name, len(items))
        return None


class Buffer:
    """Consumer side: buffers one task's requests and flushes them to the pool."""

    def __init__(self, task: Any, app: Any, consumer: Any, size: int, interval: float) -> None:
        self.task, self.app, self.consumer = task, app, consumer
        self.size, self.interval = size, interval
        self.max_held = 2 * size
        self.held = 0  # extra prefetch slots granted: to buffered or running messages, or room
        self.room = 0  # slots granted to the buffer that no message uses yet
        self.pending: list[Any] = []
        self.flush_entry: Any = None
        self.Request = create_request_cls(
            symbol_by_name(task.Request),
            task,
            consumer.pool,
            consumer.hostname,
            consumer.event_dispatcher,
            app=app,
        )

    # ------------------------------------------------------------------ intake
    def on_message(
        self, message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **_: Any
    ) -> None:
        """Celery's task message handler for this task (see ``strategy.default``)."""
        req = self._request(message, body, ack, reject)
        if _strategy_log.isEnabledFor(logging.INFO):  # Celery's "received" line, redacted
            context = {"id": req.id, "name": req.name, "args": req.argsrepr}
            context.update(kwargs=req.kwargsrepr, eta=req.eta)
            _strategy_log.info(LOG_RECEIVED, context, extra={"data": context})
        if (req.expires or req.id in revoked_tasks) and req.revoked():
            return
        signals.task_received.send(sender=self.consumer, request=req)
        self._received_event(req)
        eta = self._eta(req)
        if eta is False:
            return
        self._hold(req, eta is not None)
        if eta is not None:
            task_scheduled(req)
            self.consumer.timer.call_at(eta, self.add, (req,), priority=6)
            return
        self.add(req)

    def _hold(self, req: Any, delayed: bool) -> None:
        """Held here, not in a pool slot: give the message a prefetch slot of its own, so
        the broker keeps sending. A new buffer is granted room for a whole batch at once
        (one QoS update instead of one per message), within ``max_held``."""
        if delayed:  # as Celery does for a message it holds until its ETA
            req._batch_held = True
            self.held += 1
            self.consumer.qos.increment_eventually()
            return
        if self.room == 0 and self.held < self.max_held:
            self.room = min(self.size, self.max_held - self.held)
            self.held += self.room
            self.consumer.qos.increment_eventually(self.room)
        req._batch_held = self.room > 0
        if req._batch_held:
            self.room -= 1

    def _request(self, message: Any, body: Any, ack: Any, reject: Any) -> Any:
        app = self.app
        if body is None and "args" not in message.payload:
            body, headers, decoded, utc = (
                message.body,
                message.headers,
                False,
                app.uses_utc_timezone(),
            )
        elif "args" in message.payload:
            body, headers, decoded, utc = hybrid_to_proto2(message, message.payload)
        else:
            body, headers, decoded, utc = proto1_to_proto2(message, body)
        return self.Request(
            message,
            on_ack=ack,
            on_reject=reject,
            app=app,
            hostname=self.consumer.hostname,
            eventer=self.consumer.event_dispatcher,
            task=self.task,
            connection_errors=self.consumer.connection_errors,
            body=body,
            headers=headers,
            decoded=decoded,
            utc=utc,
        )

    def _received_event(self, req: Any) -> None:
        eventer = self.consumer.event_dispatcher
        if not (eventer and eventer.enabled and self.task.send_events):
            return
        eventer.send(
            "task-received",
            uuid=req.id,
            name=req.name,
            args=req.argsrepr,
            kwargs=req.kwargsrepr,
            root_id=req.root_id,
            parent_id=req.parent_id,
            retries=req.request_dict.get("retries", 0),
            eta=req.eta and req.eta.isoformat(),
            expires=req.expires and req.expires.isoformat(),
        )

    def _eta(self, req: Any) -> float | bool | None:
        """The ETA as a timestamp, None without one, False if it is unusable (the
        request was then failed and rejected, as Celery's default strategy does)."""
        if not req.eta:
            return None
        try:
            if req.utc:
                return float(to_timestamp(timezone.to_system(req.eta)))
            return float(to_timestamp(req.eta, self.app.timezone))
        except (OverflowError, ValueError) as exc:
            logger.error("Couldn't convert ETA of %s: %r", req.id, exc)
            self.task.backend.mark_as_failure(
                req.id, exc, request=req._context, store_result=req.store_errors
            )
            req.reject(requeue=False)
            return False

    def add(self, req: Any) -> None:
        task_reserved(req)
        self.pending.append(req)
        if len(self.pending) >= self.size:
            self.flush()
        elif self.flush_entry is None:
            self.flush_entry = self.consumer.timer.call_after(self.interval, self.flush)

    # ------------------------------------------------------------------ execution
    def flush(self) -> None:
        if self.flush_entry is not None:
            self.flush_entry.cancel()
            self.flush_entry = None
        batch, self.pending = self.pending, []
        if self.room:  # what the flushed buffer did not use goes back
            self.held -= self.room
            self.consumer.qos.decrement_eventually(self.room)
            self.room = 0
        revoked = [req for req in batch if req.revoked()]  # acknowledged by revoked()
        for req in revoked:
            self._release(req)
        batch = [req for req in batch if req not in revoked]
        if not batch:
            return
        items = [_item(req) for req in batch]
        self.consumer.pool.apply_async(
            run_batch,
            args=(self.task.name, items),
            accept_callback=lambda pid, accepted: self._accepted(batch, pid, accepted),
            callback=lambda outcomes: self._done(batch, outcomes),
            error_callback=lambda exc_info: self._lost(batch, exc_info),
            soft_timeout=self.task.soft_time_limit or self.app.conf.task_soft_time_limit,
            timeout=self.task.time_limit or self.app.conf.task_time_limit,
        )

    def _accepted(self, batch: list[Any], pid: int, accepted: float) -> None:
        started = time() - (monotonic() - accepted)
        for req in batch:
            req.worker_pid, req.time_start = pid, started
            task_accepted(req)
            req.send_event("task-started")

    def _done(self, batch: list[Any], outcomes: list[ItemOutcome] | None) -> None:
        if outcomes is None or len(outcomes) != len(batch):
            self._lost(batch, "the batch run settled nothing")
            return
        for req, outcome in zip(batch, outcomes, strict=True):
            if not outcome.settled:
                self._requeue_later(req)
                continue
            task_ready(req, successful=outcome.state == "SUCCESS")
            req.acknowledge()
            self._release(req)
            runtime = time() - req.time_start if req.time_start else 0.0
            if outcome.state == "SUCCESS":
                req.send_event("task-succeeded", result=repr(outcome.result), runtime=runtime)
            elif outcome.state == "RETRY":
                req.send_event("task-retried", exception=outcome.error, traceback="")
            else:
                req.send_event("task-failed", exception=outcome.error, traceback="")

    def _lost(self, batch: list[Any], why: Any) -> None:
        """The pool process died (or settled nothing): every message goes back."""
        logger.error("batch of %s lost (%s): %d messages requeued", self.task.name, why, len(batch))
        for req in batch:
            self._requeue_later(req)

    def _requeue_later(self, req: Any) -> None:
        task_ready(req)

        def requeue() -> None:
            req.reject(requeue=True)
            self._release(req)

        self.consumer.timer.call_after(REQUEUE_PAUSE_SECONDS, requeue)

    def _release(self, req: Any) -> None:
        if getattr(req, "_batch_held", False):
            req._batch_held = False
            self.held -= 1
            self.consumer.qos.decrement_eventually()


def _item(req: Any) -> BatchItem:
    return BatchItem(
        req.id,
        list(req.args),
        dict(req.kwargs),
        retries=int(req.request_dict.get("retries") or 0),
        reply_to=req.reply_to,
        correlation_id=req.correlation_id,
        delayed=bool(getattr(req, "eta", None)),
    )


def strategy(task: Any, app: Any, consumer: Any, **_: Any) -> Callable[..., None]:
    """``Task.Strategy`` of a batched task: its messages go to a ``Buffer``."""
    buffer = Buffer(task, app, consumer, size=task.batch_size, interval=task.batch_interval)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("batching %s: up to %d every %.2fs", task.name, buffer.size, buffer.interval)
    return buffer.on_message


__all__ = ["REQUEUE_PAUSE_SECONDS", "BatchItem", "Buffer", "ItemOutcome", "run_batch", "strategy"]
