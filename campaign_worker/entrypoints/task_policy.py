"""The task policy, one for every public task, run alone (``CampaignTask``) or in batches
(``BatchedTask``, message by message): what becomes of a message whose run raised.

- invalid input (``InvalidInputError``, unknown ids included): a dead letter, no retry;
- a transient failure (``RETRYABLE``: the store or the broker unreachable, a lost
  compare-and-set race, out of time): retried with exponential backoff, full jitter and a
  cap, then a dead letter once the retries are spent;
- anything else (a bug): a dead letter at once, kept for replay once it is fixed.

A dead letter that cannot be stored is itself a transient failure: the message is retried
while retries are left, else it goes back to the broker after a pause. A worker never
acknowledges a message it could neither process nor store (``campaign-worker
dead-letters`` lists and replays them).
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ParamSpec, TypeVar

import structlog
from celery import Task, current_task
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval
from kombu.exceptions import OperationalError as BrokerOperationalError
from pydantic import BeforeValidator, ValidationError, validate_call
from pydantic_core import to_jsonable_python

from campaign_worker.domain.documents import describe_validation_error
from campaign_worker.domain.errors import (
    ConcurrencyConflictError,
    InvalidInputError,
    TransientError,
)
from campaign_worker.entrypoints import claims
from campaign_worker.entrypoints.celery_app import app
from campaign_worker.entrypoints.container import container
from campaign_worker.entrypoints.dead_lettering import dead_letter

log = structlog.get_logger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# Retried with backoff: the request was fine, the infrastructure was not (yet). MongoDB's
# errors are not listed: the adapters turn them into TransientError (adapters/mongo.py).
RETRYABLE: tuple[type[BaseException], ...] = (
    TransientError,
    ConcurrencyConflictError,
    BrokerOperationalError,
    ConnectionError,
    TimeoutError,
    # Out of time (a slow database, a short CELERY_TASK_SOFT_TIME_LIMIT): every task is
    # idempotent or resumes from its checkpoint, so it is retried, not dead-lettered at once.
    SoftTimeLimitExceeded,
)

INVALID_INPUT = "invalid_input"
RETRIES_EXHAUSTED = "retries_exhausted"
ERROR = "error"

# A message that can be neither settled nor retried goes back to the broker after this
# pause (the task process waits it out), so a store outage is no hot loop.
STORE_RETRY_PAUSE_SECONDS = 2.0


@dataclass(frozen=True)
class Ruling:
    """The policy's answer for one failed run: retry, or a dead letter for ``reason``."""

    retry: bool
    reason: str = ""


def rule(error: BaseException, retries: int, max_retries: int | None) -> Ruling:
    """What becomes of a message whose run raised ``error`` after ``retries`` retries."""
    if isinstance(error, InvalidInputError):
        return Ruling(False, INVALID_INPUT)
    if isinstance(error, RETRYABLE):
        if max_retries is None or retries < max_retries:
            return Ruling(True)
        return Ruling(False, RETRIES_EXHAUSTED)
    return Ruling(False, ERROR)


def retry_countdown(retries: int, maximum: int) -> int:
    """Seconds before retry number ``retries + 1``: 1, 2, 4... with full jitter, capped."""
    return int(
        get_exponential_backoff_interval(
            factor=1, retries=retries, maximum=maximum, full_jitter=True
        )
    )


def current_task_id() -> str | None:
    task = current_task
    if task is None or task.request is None:
        return None
    task_id = task.request.id
    return str(task_id) if task_id else None


def jsonable(value: Any) -> Any:
    """Task results are JSON: datetimes become ISO 8601 strings."""
    return to_jsonable_python(value)


class _FromConfig:
    """A task setting read from the app's configuration when used (not at import)."""

    def __init__(self, key: str, default: int) -> None:
        self.key, self.default = key, default

    def __get__(self, task: object, owner: type | None = None) -> int:
        return int(app.conf.get(self.key, self.default))


class CampaignTask(Task):  # type: ignore[type-arg]
    """Base of every public task: the policy above, and ETA copies claimed (claims.py)."""

    retry_backoff = True  # 1s, 2s, 4s, ... (full jitter), capped below
    retry_backoff_max = _FromConfig("campaign_retry_backoff_max", 300)
    retry_jitter = True
    max_retries = _FromConfig("campaign_max_retries", 10)
    dont_autoretry_for = (InvalidInputError,)
    # Expected failures: logged as one line, without a traceback.
    throws = (InvalidInputError,)
    # Argument reprs (logs, Flower, inspect) hold ids only, never message bodies.
    Request = "campaign_worker.entrypoints.requests:RedactedRequest"
    # Keep failed messages for replay. False for the periodic poller: the next beat
    # replaces a failed poll, and a dead letter per beat would bury the real ones (its
    # invalid input is kept all the same).
    dead_letter_failures = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task and settle its message as the policy says. A copy of a message
        with an ETA runs only if it claims its task id (``claims.py``): a copy of a task
        done or running elsewhere does not run."""
        request = self.request
        decision = claims.RUN
        if request is not None and request.eta and not request.called_directly:
            decision = claims.decide(container(), self.name, request.id, True)
        if decision.action == "skip":
            return None
        if decision.action == "defer":
            self._defer(args, kwargs, decision.defer_seconds)
            return None
        final = True
        try:
            return super().__call__(*args, **kwargs)
        except (Retry, Reject, Ignore):
            final = False  # runs again under the same task id
            raise
        except Exception as exc:
            final = False
            settled = self.settle_failure(exc, args, kwargs)
            final = settled is exc
            if settled is exc:
                raise
            raise settled from exc
        finally:
            if decision.held is not None:
                claims.settle(container(), decision.held, final=final)

    def settle_failure(self, exc: Exception, args: Any, kwargs: Any) -> BaseException:
        """The policy for a run that raised ``exc``: the exception to raise, ``exc`` once
        settled (dead-lettered, or not kept), ``Retry`` or ``Reject`` when not."""
        retries = int(self.request.retries or 0)
        ruling = rule(exc, retries, self.max_retries)
        if ruling.retry:
            return self._retried(exc, retries)
        if ruling.reason != INVALID_INPUT and not self.dead_letter_failures:
            return exc
        task_id = current_task_id() or uuid.uuid4().hex
        try:
            dead_letter(
                self.name,
                args,
                kwargs,
                exc,
                reason=ruling.reason,
                task_id=task_id,
                registered=self.app.tasks,
            )
        except Exception as store_error:  # the store may be what is down
            log.error(
                "dead_letter_not_stored",
                task_name=self.name,
                task_id=task_id,
                reason=ruling.reason,
                error=str(store_error),
            )
            if rule(store_error, retries, self.max_retries).retry:
                return self._retried(store_error, retries)
            time.sleep(STORE_RETRY_PAUSE_SECONDS)  # no hot loop while the store is down
            return Reject(reason=f"dead letter not stored: {store_error}", requeue=True)
        return exc

    def _retried(self, exc: Exception, retries: int) -> BaseException:
        countdown = retry_countdown(retries, self.retry_backoff_max)
        retried: BaseException = self.retry(exc=exc, countdown=countdown, throw=False)
        return retried

    def _defer(self, args: Any, kwargs: Any, seconds: float) -> None:
        """Publish this copy again (same task id) to be due in ``seconds``; then it is
        acknowledged. If it cannot be published it goes back to the broker."""
        try:
            self.apply_async(  # type: ignore[call-arg]  # retries: passed to send_task
                args,
                kwargs,
                task_id=self.request.id,
                countdown=seconds,
                retries=self.request.retries,
            )
        except Exception as exc:
            time.sleep(STORE_RETRY_PAUSE_SECONDS)
            raise Reject(reason=f"deferred copy not published: {exc}", requeue=True) from exc


def _iso_8601(value: Any) -> Any:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 date-time string")
    return value


IsoDatetime = Annotated[datetime, BeforeValidator(_iso_8601)]


def public_task(
    name: str,
    *,
    dead_letter_failures: bool = True,
    base: type[CampaignTask] = CampaignTask,
) -> Callable[[Callable[P, R]], CampaignTask]:
    """Register ``fn`` as the public task ``name`` with validated arguments: missing,
    unexpected or mistyped arguments raise ``InvalidInputError`` naming each argument
    (then the policy: a dead letter, no retry)."""

    def decorate(fn: Callable[P, R]) -> CampaignTask:
        validated = validate_call(fn)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return jsonable(validated(*args, **kwargs))
            except ValidationError as exc:
                if exc.title != fn.__name__:
                    raise  # a model deeper down: a bug, not the caller's payload
                reason = describe_validation_error(exc)
                raise InvalidInputError(f"invalid arguments for {name}: {reason}") from None

        return app.task(name=name, base=base, dead_letter_failures=dead_letter_failures)(run)

    return decorate


__all__ = [
    "ERROR",
    "INVALID_INPUT",
    "RETRIES_EXHAUSTED",
    "RETRYABLE",
    "STORE_RETRY_PAUSE_SECONDS",
    "CampaignTask",
    "IsoDatetime",
    "Ruling",
    "current_task_id",
    "jsonable",
    "public_task",
    "retry_countdown",
    "rule",
]
