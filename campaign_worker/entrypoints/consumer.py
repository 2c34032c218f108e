"""The worker's message intake (``worker_consumer``): nothing lost, no worker killed.

Every task message is checked before Celery turns it into a request (``envelope.check``).
A message Celery would drop (unknown task name, malformed envelope, undecodable body) or
choke on (a JSON object body, which kills Celery's consumer) is stored as a dead letter
with its raw body and headers, then acknowledged. If storing fails, the message is not
acknowledged: it goes back to the broker after ``REQUEUE_DELAY`` seconds, to be tried
again (by this or another worker) once the store is back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from celery.exceptions import NotRegistered
from celery.utils.log import get_logger
from celery.utils.objects import Bunch
from celery.worker.consumer.consumer import Consumer
from vine import promise

from campaign_worker.entrypoints import envelope
from campaign_worker.entrypoints.dead_lettering import dead_letter_rejection
from campaign_worker.entrypoints.envelope import Rejection

log = structlog.get_logger(__name__)
celery_log = get_logger(__name__)  # what kombu's ack/reject helpers log through

REQUEUE_DELAY = 2.0  # seconds: an unstored message returns to the broker, not in a hot loop


class GuardedConsumer(Consumer):
    """Celery's consumer with a check in front of every task message."""

    connection_errors: tuple[type[BaseException], ...]  # set by Consumer (not in the stubs)

    def create_task_handler(self, promise: Any = promise) -> Callable[[Any], Any]:
        handle = super().create_task_handler(promise)

        def on_task_received(message: Any) -> Any:
            rejection = envelope.check(message, self.app.tasks)
            if rejection is not None:
                return self.dead_letter_message(message, rejection)
            try:
                return handle(message)
            except self.connection_errors:
                raise  # the consumer restarts; the unacked message is redelivered
            except Exception as exc:  # Celery could not make a request of it
                return self.dead_letter_message(
                    message, _rejection(message, envelope.MALFORMED_ENVELOPE, exc)
                )

        return on_task_received

    # Celery's own handlers log the whole body and drop the message; with the check in
    # front they are not reached, but if they are, they keep the message too.
    def on_unknown_message(self, body: Any, message: Any) -> None:
        self.dead_letter_message(message, _rejection(message, envelope.MALFORMED_ENVELOPE))

    def on_unknown_task(self, body: Any, message: Any, exc: BaseException) -> None:
        self.dead_letter_message(message, _rejection(message, envelope.UNKNOWN_TASK, exc))

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        self.dead_letter_message(message, _rejection(message, envelope.MALFORMED_ENVELOPE, exc))

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        self.dead_letter_message(message, _rejection(message, envelope.UNDECODABLE_BODY, exc))

    def dead_letter_message(self, message: Any, rejection: Rejection) -> None:
        """Store, then acknowledge; if storing fails, give the message back later."""
        try:
            dead_letter_rejection(rejection, self.app.tasks)
        except Exception as exc:  # whatever failed, the message must survive
            log.error(
                "dead_letter_not_stored",
                reason=rejection.reason,
                task_id=rejection.task_id,
                task_name=rejection.task_name,
                error=f"{type(exc).__name__}: {exc}",
                requeue_in=REQUEUE_DELAY,
            )
            self.timer.call_after(REQUEUE_DELAY, self._requeue, (message,))
            return
        message.ack_log_error(celery_log, self.connection_errors)
        if rejection.reason == envelope.UNKNOWN_TASK:
            self._fail_result(rejection, message)

    def _requeue(self, message: Any) -> None:
        message.reject_log_error(celery_log, self.connection_errors, requeue=True)

    def _fail_result(self, rejection: Rejection, message: Any) -> None:
        """A client waiting on the result learns the name is wrong (as with Celery)."""
        if rejection.task_id is None or rejection.task_name is None:
            return
        properties = message.properties if isinstance(message.properties, dict) else {}
        request = Bunch(
            name=rejection.task_name,
            chord=None,
            root_id=None,
            correlation_id=properties.get("correlation_id"),
            reply_to=properties.get("reply_to"),
            errbacks=None,
        )
        try:
            self.app.backend.mark_as_failure(
                rejection.task_id, NotRegistered(rejection.task_name), request=request
            )
        except Exception as exc:  # the dead letter is stored; that is what counts
            log.warning("unknown_task_result_not_stored", error=str(exc))


def _rejection(message: Any, reason: str, exc: BaseException | None = None) -> Rejection:
    """A rejection for a message Celery refused after the check let it through."""
    found = envelope.check(message, ())  # re-reads ids and the raw envelope
    rejection = found or Rejection(reason, "", envelope=envelope.envelope_of(message))
    rejection.reason = reason
    if exc is not None:
        rejection.error = f"{type(exc).__name__}: {exc}"[:500]
    return rejection


__all__ = ["REQUEUE_DELAY", "GuardedConsumer"]
