"""``BatchedTask``: a public task whose worker runs its messages in batches.

Called directly (``apply``, eager, ``run``) it is an ordinary ``CampaignTask`` of one
request. In a worker its messages are buffered and run as one batch (``batching.py``);
``run_batch`` settles each message by the same policy (``task_policy.rule``): a result,
a dead letter (invalid input, retries exhausted, unexpected error) or a retry published
with backoff, and reports which messages it could not settle (their dead letter could not
be stored nor their retry published): those go back to the broker.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from celery import signals
from celery.app.task import Context
from celery.app.trace import LOG_SUCCESS

from campaign_worker.adapters.logs import scrub, secrets_of
from campaign_worker.entrypoints import claims
from campaign_worker.entrypoints import observability as hooks
from campaign_worker.entrypoints.batching import BatchItem, ItemOutcome
from campaign_worker.entrypoints.container import container
from campaign_worker.entrypoints.dead_lettering import dead_letter
from campaign_worker.entrypoints.requests import argument_reprs, parameter_names
from campaign_worker.entrypoints.task_policy import (
    ERROR,
    INVALID_INPUT,
    CampaignTask,
    retry_countdown,
    rule,
)
from campaign_worker.settings import get_settings

log = structlog.get_logger(__name__)
_trace_log = logging.getLogger("celery.app.trace")  # where Celery logs a task's outcome

#: One value per item, in order: the task's JSON result, or the exception that failed it.
BatchHandler = Callable[[Sequence[BatchItem]], list[Any]]
_HANDLERS: dict[str, BatchHandler] = {}


def batch_handler(task_name: str) -> Callable[[BatchHandler], BatchHandler]:
    """Register the function that runs a batch of ``task_name``'s messages."""

    def register(handler: BatchHandler) -> BatchHandler:
        _HANDLERS[task_name] = handler
        return handler

    return register


class BatchedTask(CampaignTask):
    """A ``CampaignTask`` whose worker-side messages are run in batches."""

    Strategy = "campaign_worker.entrypoints.batching:strategy"

    @property
    def batch_size(self) -> int:
        return get_settings().inbound_batch_size

    @property
    def batch_interval(self) -> float:
        return get_settings().inbound_batch_interval

    def run_batch(self, items: Sequence[BatchItem]) -> list[ItemOutcome]:
        """Run the batch and settle each message (pool side). One run of the task as far
        as ``task_prerun``/``task_postrun`` go (log context, body scrubbing), with every
        message's arguments; the duration metric counts one run per message."""
        arguments = [[item.args, item.kwargs] for item in items]
        run: dict[str, Any] = {
            "sender": self,
            "task_id": None,
            "task": self,
            "args": arguments,
            "kwargs": {},
        }
        signals.task_prerun.send(**run)
        batch_id = f"batch-{uuid.uuid4().hex[:12]}"
        structlog.contextvars.bind_contextvars(batch_id=batch_id, batch_size=len(items))
        started = time.perf_counter()
        outcomes: list[ItemOutcome] = []
        try:
            decisions = self._claim(items)
            runnable = [i for i, d in zip(items, decisions, strict=True) if d.action == "run"]
            try:
                values = iter(_HANDLERS[self.name](runnable) if runnable else [])
            except Exception as exc:  # the whole batch failed (say, MongoDB unreachable)
                values = iter([exc] * len(runnable))
            outcomes = [
                self._settle(item, next(values)) if d.action == "run" else self._copy(item, d)
                for item, d in zip(items, decisions, strict=True)
            ]
            outcomes = _with_copies(items, decisions, outcomes)
            self._settle_claims(decisions, outcomes)
            states = [o.state if o.settled else "UNSETTLED" for o in outcomes]
            log.info("batch_settled", **{s.lower(): states.count(s) for s in set(states)})
            return outcomes
        finally:
            hooks.batch_ran(self.name, len(items), time.perf_counter() - started)
            signals.task_postrun.send(**run, retval=None, state="SUCCESS" if outcomes else None)

    def _claim(self, items: Sequence[BatchItem]) -> list[claims.ClaimDecision]:
        """Copies of messages with an ETA claim their task id (``claims.py``)."""
        if not any(item.delayed for item in items):
            return [claims.RUN] * len(items)
        c = container()
        decisions: list[claims.ClaimDecision] = []
        ours: set[str] = set()
        for item in items:
            if item.delayed and item.id in ours:
                # A copy in the same batch as the one that runs: settled with it
                # (``_with_copies``), after the run, so nothing is acknowledged early.
                log.info("task_copy_skipped", task_id=item.id, reason="same batch")
                decisions.append(SAME_BATCH)
                continue
            decision = claims.decide(c, self.name, item.id, item.delayed)
            if decision.held is not None:
                ours.add(item.id)
            decisions.append(decision)
        return decisions

    def _copy(self, item: BatchItem, decision: claims.ClaimDecision) -> ItemOutcome:
        """A copy that does not run: done elsewhere (acknowledged), or put off until the
        runner's lease ends (published again under its task id, then acknowledged)."""
        if decision.action == "skip":
            return ItemOutcome(True, "SUCCESS")
        try:
            self.apply_async(
                tuple(item.args),
                item.kwargs,
                task_id=item.id,
                countdown=decision.defer_seconds,
                retries=item.retries,  # type: ignore[call-arg]  # passed to send_task
            )
        except Exception as exc:
            log.error("deferred_copy_not_published", task_id=item.id, error=str(exc))
            return ItemOutcome(False)
        return ItemOutcome(True, "RETRY", error="deferred: another copy is running")

    @staticmethod
    def _settle_claims(decisions: list[claims.ClaimDecision], outcomes: list[ItemOutcome]) -> None:
        held = [(d.held, o) for d, o in zip(decisions, outcomes, strict=True) if d.held]
        if not held:
            return
        c = container()
        for claim, outcome in held:
            claims.settle(c, claim, final=outcome.settled and outcome.state != "RETRY")

    def _settle(self, item: BatchItem, value: Any) -> ItemOutcome:
        if not isinstance(value, Exception):
            self._store(item, lambda ctx: self.backend.mark_as_done(item.id, value, request=ctx))
            self._log_success(item, value)
            return ItemOutcome(True, "SUCCESS", result=value)
        ruling = rule(value, item.retries, self.max_retries)
        if ruling.retry:
            return self._retry(item, value)
        if ruling.reason == ERROR:
            log.error("batch_item_failed", task_id=item.id, error_type=type(value).__name__)
        if ruling.reason != INVALID_INPUT and not self.dead_letter_failures:
            return self._failed(item, value)
        return self._dead_letter(item, value, ruling.reason)

    def _log_success(self, item: BatchItem, result: Any) -> None:
        """Celery's "succeeded" line for one message, in that message's log context."""
        if not _trace_log.isEnabledFor(logging.INFO):
            return
        names = parameter_names(self.run)
        context = hooks.task_context(item.id, self.name, item.args, item.kwargs, names)
        argsrepr, kwargsrepr = argument_reprs(self.run, item.args, item.kwargs)
        data = {"id": item.id, "name": self.name, "return_value": repr(result), "runtime": 0.0}
        data.update(args=argsrepr, kwargs=kwargsrepr)
        with structlog.contextvars.bound_contextvars(**context):
            _trace_log.info(LOG_SUCCESS, data, extra={"data": data})

    def _retry(self, item: BatchItem, error: Exception) -> ItemOutcome:
        """Publish the message again with a backoff, as ``Task.retry`` does."""
        countdown = retry_countdown(item.retries, self.retry_backoff_max)
        try:
            self.apply_async(
                tuple(item.args),
                item.kwargs,
                task_id=item.id,
                countdown=countdown,
                retries=item.retries + 1,  # type: ignore[call-arg]  # passed to send_task
            )
        except Exception as exc:
            log.error("retry_not_published", task_id=item.id, error=str(exc))
            return ItemOutcome(False)
        signals.task_retry.send(sender=self, request=None, reason=error, einfo=None)
        return ItemOutcome(True, "RETRY", error=self._text(item, error))

    def _dead_letter(self, item: BatchItem, error: Exception, reason: str) -> ItemOutcome:
        """Store the dead letter first. One that cannot be stored is a transient failure
        (retried while retries are left); a message neither stored nor retried is
        unsettled."""
        try:
            dead_letter(
                self.name,
                item.args,
                item.kwargs,
                error,
                reason=reason,
                task_id=item.id,
                registered=self.app.tasks,
            )
        except Exception as exc:  # the store may be what is down
            log.error("dead_letter_not_stored", task_id=item.id, reason=reason, error=str(exc))
            if rule(exc, item.retries, self.max_retries).retry:
                return self._retry(item, exc)
            return ItemOutcome(False)
        return self._failed(item, error)

    def _failed(self, item: BatchItem, error: Exception) -> ItemOutcome:
        """The message failed for good (kept as a dead letter, or not kept)."""
        self._store(item, lambda ctx: self.backend.mark_as_failure(item.id, error, request=ctx))
        signals.task_failure.send(
            sender=self,
            task_id=item.id,
            exception=error,
            args=item.args,
            kwargs=item.kwargs,
            traceback=None,
            einfo=None,
        )
        return ItemOutcome(True, "FAILURE", error=self._text(item, error))

    def _store(self, item: BatchItem, store: Callable[[Context], Any]) -> None:
        """The message's result for a client that waits on it (if results are kept)."""
        if self.ignore_result:
            return
        try:
            context = Context(
                id=item.id,
                task=self.name,
                ignore_result=False,
                reply_to=item.reply_to,
                correlation_id=item.correlation_id,
            )
            store(context)
        except Exception as exc:  # the effect happened; only the result is missing
            log.warning("result_not_stored", task_id=item.id, error=str(exc))

    @staticmethod
    def _text(item: BatchItem, error: Exception) -> str:
        return scrub(f"{type(error).__name__}({str(error)!r})", secrets_of(item.args, item.kwargs))


#: The decision for a copy of a delayed message whose task id this batch runs.
SAME_BATCH = claims.ClaimDecision("skip", defer_seconds=-1.0)


def _with_copies(
    items: Sequence[BatchItem], decisions: list[claims.ClaimDecision], outcomes: list[ItemOutcome]
) -> list[ItemOutcome]:
    """A same-batch copy shares its delivery tag (on Redis) with the copy that ran: if that
    one goes back to the broker unsettled, so does the copy, else its ack would drop the
    message's unacked entry before the requeue reads it."""
    ran = {
        item.id: outcome
        for item, d, outcome in zip(items, decisions, outcomes, strict=True)
        if d.held is not None
    }
    return [
        ItemOutcome(False) if d is SAME_BATCH and not ran[item.id].settled else outcome
        for item, d, outcome in zip(items, decisions, outcomes, strict=True)
    ]


__all__ = ["BatchHandler", "BatchedTask", "batch_handler"]
