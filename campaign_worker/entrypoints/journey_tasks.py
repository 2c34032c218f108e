"""The public tasks of always-on campaigns: ``enroll_recipients`` (people added to a
running campaign) and ``record_event`` (users' events from other services; a
``BatchedTask``: a worker runs them in batches, each message settled alone, never
acknowledged before it is recorded or dead-lettered). Thin: parse, call the manager."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import Field, ValidationError, validate_call

from campaign_worker.domain.documents import describe_validation_error
from campaign_worker.domain.errors import InvalidInputError
from campaign_worker.entrypoints.batch_task import BatchedTask, batch_handler
from campaign_worker.entrypoints.batching import BatchItem
from campaign_worker.entrypoints.container import container
from campaign_worker.entrypoints.task_policy import IsoDatetime, jsonable, public_task
from campaign_worker.service.event_recording import InboundEvent

Id = Annotated[str, Field(min_length=1, max_length=512)]
EVENT = "campaign_worker.record_event"


@public_task("campaign_worker.enroll_recipients")
def enroll_recipients(
    campaign_id: Id, recipients: list[Any], idempotency_key: Id | None = None
) -> dict[str, Any]:
    """Add people (the recipient shape of ``create_campaign``) to a scheduled, running or
    paused campaign, each once per entry; returns {enrolled, already, suppressed,
    invalid, invalid_samples}. A replay enrolls nobody twice."""
    result = container().manager.enroll_recipients(campaign_id, recipients, idempotency_key)
    return result.as_dict()


@public_task(EVENT, base=BatchedTask)
def record_event(
    user_id: Id,
    event: str,
    event_id: Id,
    properties: dict[str, Any] | None = None,
    timestamp: IsoDatetime | None = None,
) -> dict[str, Any]:
    """Record a user's event (idempotent by ``event_id``) and apply it to every
    conversation of the user that listens, in every campaign. A worker runs these in
    batches (``_record_events``); this is a batch of one."""
    return container().manager.record_event(user_id, event, event_id, properties, timestamp)


@validate_call
def _inbound(
    user_id: Id,
    event: str,
    event_id: Id,
    properties: dict[str, Any] | None = None,
    timestamp: IsoDatetime | None = None,
) -> InboundEvent:
    """An event's arguments, checked as ``record_event`` checks them."""
    return InboundEvent(user_id, event, event_id, properties, timestamp)


@batch_handler(EVENT)
def _record_events(items: Sequence[BatchItem]) -> list[Any]:
    """A worker's batch of events: each one's result, or the error that refuses it."""
    values: list[Any] = [None] * len(items)
    events, where = [], []
    for index, item in enumerate(items):
        try:
            events.append(_inbound(*item.args, **item.kwargs))
            where.append(index)
        except ValidationError as exc:
            reason = describe_validation_error(exc)
            values[index] = InvalidInputError(f"invalid arguments for {EVENT}: {reason}")
        except TypeError as exc:
            values[index] = InvalidInputError(f"invalid arguments for {EVENT}: {exc}")
    outcomes = container().manager.record_events(events) if events else []
    for index, outcome in zip(where, outcomes, strict=True):
        values[index] = outcome.error if outcome.error is not None else jsonable(outcome.result)
    return values


JOURNEY_TASKS = (enroll_recipients, record_event)
