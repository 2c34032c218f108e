"""The public task API: stable names, JSON arguments, JSON results.

Other services call these by name without importing this package::

    from celery import Celery
    client = Celery(broker="redis://localhost:6379/0")
    client.send_task("campaign_worker.create_campaign", kwargs={"campaign": {...}})

Each task is thin: validate the arguments (``public_task``), call the CampaignManager,
return JSON. Waits never become Celery countdowns: they live in MongoDB as
``next_action_at`` and the beat-driven poller picks up what is due.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import structlog
from pydantic import Field, ValidationError, validate_call

from campaign_worker.domain.documents import describe_validation_error
from campaign_worker.domain.errors import InvalidInputError, InvalidStateTransitionError
from campaign_worker.entrypoints import observability as hooks
from campaign_worker.entrypoints.batch_task import BatchedTask, batch_handler
from campaign_worker.entrypoints.batching import BatchItem
from campaign_worker.entrypoints.container import container
from campaign_worker.entrypoints.journey_tasks import JOURNEY_TASKS
from campaign_worker.entrypoints.task_policy import (
    RETRYABLE,
    IsoDatetime,
    current_task_id,
    jsonable,
    public_task,
)
from campaign_worker.service.dispatch_tokens import Dispatch, is_dispatch_token
from campaign_worker.service.reply_recording import InboundReply

log = structlog.get_logger(__name__)

Id = Annotated[str, Field(min_length=1, max_length=512)]
PositiveInt = Annotated[int, Field(strict=True, gt=0)]
Partition = Annotated[int, Field(strict=True, ge=0)]


def campaign_id_for_task(task_id: str) -> str:
    """A create_campaign without ``_id`` gets one derived from its task id, so a redelivered
    create finds the campaign it already made instead of making a second one."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"campaign-worker:create_campaign:{task_id}").hex


def _enqueue_processing(
    campaign_id: str, stage: str | None = None, limit: int | None = None
) -> None:
    """One registered processing task over the whole campaign."""
    _enqueue(campaign_id, container().manager.dispatch_processing(campaign_id), stage, limit)


def _enqueue(
    campaign_id: str,
    dispatches: list[Dispatch],
    stage: str | None = None,
    limit: int | None = None,
) -> None:
    """Enqueue registered processing tasks, each under its registration token as task id
    (which tells the task it is registered)."""
    for dispatch in dispatches:
        kwargs: dict[str, Any] = {"campaign_id": campaign_id, **dispatch.span.as_kwargs()}
        if stage is not None:
            kwargs["stage"] = stage
        if limit is not None:
            kwargs["limit"] = limit
        process_conversations.apply_async(kwargs=kwargs, task_id=dispatch.token)


@public_task("campaign_worker.create_campaign")
def create_campaign(campaign: dict[str, Any], idempotency_key: Id | None = None) -> str:
    """Store a campaign (the Campaign document as JSON); returns its id.

    A client that may send the same create twice (with new task ids) gives an ``_id`` or
    an ``idempotency_key``: both name one campaign. Without either, the id derives from
    the task id, which only makes redeliveries of the same message harmless.
    """
    payload = dict(campaign)
    if "_id" not in payload and "id" not in payload and idempotency_key is None:
        payload["_id"] = campaign_id_for_task(current_task_id() or uuid.uuid4().hex)
    return container().manager.create_campaign(payload, idempotency_key=idempotency_key)


@public_task("campaign_worker.poll_campaigns", dead_letter_failures=False)
def poll_campaigns() -> dict[str, Any]:
    """Claim due campaigns for initialization and start processing where work is due."""
    result = container().manager.poll_campaigns(owner=current_task_id())
    for campaign_id in result.initialize:
        initialize_campaign.apply_async(kwargs={"campaign_id": campaign_id})
    for campaign_id, dispatches in result.dispatches.items():
        _enqueue(campaign_id, dispatches)
    return {
        "initialize": result.initialize,
        "process": result.process,
        "partitions": {cid: len(d) for cid, d in result.dispatches.items()},
        "in_progress": result.in_progress,
        "completed": result.completed,
        "oldest_due": result.oldest_due,
        "republished": result.republished,
    }


@public_task("campaign_worker.reconcile_metrics", dead_letter_failures=False)
def reconcile_metrics(campaign_id: str | None = None) -> dict[str, Any]:
    """Recompute campaign metrics documents from the conversations; correct drift.

    Without ``campaign_id``: every running or paused campaign, and those that completed
    in the last day (their final numbers are checked once more).
    """
    manager = container().manager
    ids = [campaign_id] if campaign_id else manager.campaigns_to_reconcile()
    drift: dict[str, dict[str, float]] = {}
    for each in ids:
        corrected = manager.reconcile_campaign_metrics(each)
        if corrected:
            hooks.drift_corrected(corrected)
            drift[each] = corrected
    return {"checked": len(ids), "drift": drift}


@public_task("campaign_worker.initialize_campaign")
def initialize_campaign(campaign_id: Id) -> int:
    """Create the campaign's conversations; returns how many were new."""
    c = container()
    # Inside the soft time limit (INIT_STEP_SECONDS, by default half of it): the batch under
    # way and the checkpoint fit in the rest, so a slow database or a short limit costs
    # more steps, never lost progress.
    stop_at = time.monotonic() + c.settings.init_step_budget
    try:
        step = c.manager.initialize_campaign_step(
            campaign_id,
            max_batches=c.settings.init_batches_per_task,
            out_of_time=lambda: time.monotonic() >= stop_at,
        )
    except InvalidStateTransitionError as exc:
        # Paused or cancelled since it was claimed: not a bad request; resume re-schedules.
        log.info("initialization_skipped", campaign_id=campaign_id, reason=str(exc))
        return 0
    if not step.done and not step.stopped:
        # Stay well inside the task time limit: continue from the checkpoint in a new task.
        initialize_campaign.apply_async(kwargs={"campaign_id": campaign_id})
    elif step.done and step.created:
        _enqueue_processing(campaign_id)  # start now rather than at the next poll
    return step.created


@public_task("campaign_worker.process_conversations")
def process_conversations(
    campaign_id: Id,
    stage: str | None = None,
    limit: PositiveInt | None = None,
    partition: Partition | None = None,
    partitions: Partition | None = None,
) -> dict[str, Any]:
    """Read one batch of due conversations of partition range ``partition`` of
    ``partitions`` (both omitted: all), advance each, write in bulk. While more is due in
    the range, the batch enqueues its successors (the range, or its two halves up to
    ``PROCESS_FANOUT`` ranges), registered by its metrics write."""
    task_id = current_task_id()

    def continue_with(dispatches: list[Dispatch]) -> None:
        # The poller is the backstop if this fails: the registrations expire.
        try:
            _enqueue(campaign_id, dispatches, stage, limit)
        except RETRYABLE as exc:
            log.warning("fan_out_failed", campaign_id=campaign_id, error=str(exc))

    result = container().manager.process_due_conversations(
        campaign_id,
        stage=stage,
        limit=limit,
        partition=partition,
        partitions=partitions,
        registration=task_id if is_dispatch_token(task_id) else None,
        on_more=continue_with,
    )
    return result.as_dict()


INBOUND = "campaign_worker.record_inbound_message"


@public_task(INBOUND, base=BatchedTask)
def record_inbound_message(
    campaign_id: Id,
    user_id: Id,
    message_id: Id,
    content: str,
    timestamp: IsoDatetime | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Store a reply (idempotent by message_id) and evaluate the conversation at once.
    A worker runs these in batches (``_record_replies``); this is a batch of one."""
    return container().manager.record_inbound_message(
        campaign_id, user_id, message_id, content, timestamp=timestamp, metadata=metadata
    )


@validate_call
def _inbound_reply(
    campaign_id: Id,
    user_id: Id,
    message_id: Id,
    content: str,
    timestamp: IsoDatetime | None = None,
    metadata: dict[str, Any] | None = None,
) -> InboundReply:
    """A reply's arguments, checked as ``record_inbound_message`` checks them."""
    return InboundReply(campaign_id, user_id, message_id, content, timestamp, metadata)


@batch_handler(INBOUND)
def _record_replies(items: Sequence[BatchItem]) -> list[Any]:
    """A worker's batch of replies: each one's result, or the error that refuses it."""
    values: list[Any] = [None] * len(items)
    replies, where = [], []
    for index, item in enumerate(items):
        try:
            replies.append(_inbound_reply(*item.args, **item.kwargs))
            where.append(index)
        except ValidationError as exc:
            reason = describe_validation_error(exc)
            values[index] = InvalidInputError(f"invalid arguments for {INBOUND}: {reason}")
        except TypeError as exc:  # keyword arguments that are not strings
            values[index] = InvalidInputError(f"invalid arguments for {INBOUND}: {exc}")
    outcomes = container().manager.record_inbound_messages(replies) if replies else []
    for index, outcome in zip(where, outcomes, strict=True):
        values[index] = outcome.error if outcome.error is not None else jsonable(outcome.result)
    return values


@public_task("campaign_worker.mark_conversation_complete")
def mark_conversation_complete(conversation_id: Id) -> dict[str, Any]:
    state = container().manager.mark_conversation_complete(conversation_id)
    return {
        "conversation_id": state["_id"],
        "status": state["status"],
        "current_stage": state["current_stage"],
    }


@public_task("campaign_worker.resolve_reply")
def resolve_reply(message_id: Id, intent: Id, resolved_by: Id | None = None) -> dict[str, Any]:
    """Resolve a reply held for review with the intent it really is, exactly as if it had
    been classified so: {message_id, conversation_id, intent, already_resolved, status,
    current_stage, actions}. Sent twice: the second is a no-op (``already_resolved``);
    another intent for a resolved reply is refused (dead letter, ``invalid_input``)."""
    result: dict[str, Any] = jsonable(
        container().manager.resolve_reply(message_id, intent, resolved_by)
    )
    return result


def _status(doc: dict[str, Any]) -> dict[str, Any]:
    return {"campaign_id": doc["_id"], "status": doc["status"]}


@public_task("campaign_worker.pause_campaign")
def pause_campaign(campaign_id: Id) -> dict[str, Any]:
    return _status(container().manager.pause_campaign(campaign_id))


@public_task("campaign_worker.resume_campaign")
def resume_campaign(campaign_id: Id) -> dict[str, Any]:
    return _status(container().manager.resume_campaign(campaign_id))


@public_task("campaign_worker.cancel_campaign")
def cancel_campaign(campaign_id: Id) -> dict[str, Any]:
    """Stop sending at once; the active conversations are then settled as ``cancelled``
    in batches (started here, backstopped by the poller)."""
    result = _status(container().manager.cancel_campaign(campaign_id))
    _enqueue_processing(campaign_id)
    return result


@public_task("campaign_worker.get_campaign_metrics")
def get_campaign_metrics(campaign_id: Id) -> dict[str, Any]:
    """The campaign metrics document (datetimes as ISO 8601 strings)."""
    return container().manager.get_campaign_metrics(campaign_id)


@public_task("campaign_worker.list_suppressions")
def list_suppressions(
    user_id: Id | None = None, channel: Id | None = None, limit: PositiveInt = 100
) -> list[dict[str, Any]]:
    """Entries of the suppression list (datetimes as ISO 8601 strings)."""
    return container().manager.list_suppressions(user_id=user_id, channel=channel, limit=limit)


@public_task("campaign_worker.add_suppression")
def add_suppression(
    user_id: Id | None = None,
    channel: Id | None = None,
    address: Id | None = None,
    reason: str = "added by an operator",
    source: str = "operator",
) -> dict[str, Any]:
    """Suppress a user id, or a channel address (a bounce, a complaint)."""
    return container().manager.add_suppression(
        user_id=user_id, channel=channel, address=address, reason=reason, source=source
    )


@public_task("campaign_worker.lift_suppression")
def lift_suppression(
    key: Id | None = None,
    user_id: Id | None = None,
    channel: Id | None = None,
    address: Id | None = None,
) -> dict[str, Any]:
    """Lift one entry of the suppression list; an unknown one is an error (not retried)."""
    return container().manager.lift_suppression(
        key=key, user_id=user_id, channel=channel, address=address
    )


@public_task("campaign_worker.migrate_campaign")
def migrate_campaign(
    campaign_id: Id,
    to_version: PositiveInt | Literal["current"],
    stage_map: dict[Id, Id] | None = None,
    default: Id | None = None,
    dry_run: bool = True,
) -> dict[str, Any]:
    """Move a campaign's in-flight conversations to another template version (see
    README, "Editing a live campaign"). A dry run (the default) only counts. Applying
    again after a failure finishes the job; nothing is done twice."""
    result = container().manager.migrate_campaign(
        campaign_id, to_version, stage_map or {}, default, dry_run=dry_run
    )
    return result.as_dict()


PUBLIC_TASKS = (
    create_campaign,
    poll_campaigns,
    reconcile_metrics,
    initialize_campaign,
    process_conversations,
    record_inbound_message,
    mark_conversation_complete,
    resolve_reply,
    pause_campaign,
    resume_campaign,
    cancel_campaign,
    get_campaign_metrics,
    list_suppressions,
    add_suppression,
    lift_suppression,
    migrate_campaign,
    *JOURNEY_TASKS,
)
