"""Initialization: one conversation per recipient, in checkpointed batches.

Safe to run twice or concurrently: conversation ids are deterministic and (campaign_id,
user_id) is unique, so a duplicate means "already initialized". Progress (recipient
position, invalid rows) is checkpointed every few batches and at the end of a step, so a
task can stop within its time limit and the next one resume where it left off; the
metrics are incremented once per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.campaign_documents import (
    AudienceRow,
    CampaignStatus,
    InitCheckpoint,
    InvalidRow,
    Recipient,
    StoredCampaign,
)
from campaign_worker.domain.documents import (
    ConversationContext,
    ConversationState,
    ConversationStatus,
    StageEntry,
    conversation_id_for,
)
from campaign_worker.domain.errors import CampaignNotFoundError, InvalidStateTransitionError
from campaign_worker.domain.partitions import partition_of
from campaign_worker.domain.progression import first_action_at
from campaign_worker.domain.splits import in_holdout
from campaign_worker.domain.transitions import finish
from campaign_worker.service.campaigns import transition_campaign
from campaign_worker.service.context import Services
from campaign_worker.service.metrics_ledger import MetricsLedger

log = structlog.get_logger(__name__)

INVALID_SAMPLES = 10  # invalid audience rows kept (user id and error) on the campaign
# Batches between checkpoints. A resumed step re-inserts at most this many batches
# (duplicates, skipped and not counted) and a pause is seen within them; in exchange a
# batch costs its insert and a fifth of a checkpoint (bench/round_trips.py).
CHECKPOINT_EVERY = 5
_NOT_INITIALIZABLE = frozenset(
    {
        CampaignStatus.DRAFT,
        CampaignStatus.CANCELLED,
        CampaignStatus.COMPLETED,
        CampaignStatus.PAUSED,
    }
)


@dataclass
class InitResult:
    """What one initialization step did."""

    campaign_id: str
    created: int = 0
    done: bool = False
    stopped: bool = False


def initialize_campaign_step(
    svc: Services,
    campaign_id: str,
    max_batches: int | None = None,
    out_of_time: Callable[[], bool] | None = None,
) -> InitResult:
    """Initialize up to ``max_batches`` batches from the saved checkpoint; stop early, at a
    checkpoint after the current batch, once ``out_of_time()`` is true (the caller's time
    budget: a step that runs into its task's time limit would be killed before saving its
    progress, and its successor would start over from the same checkpoint)."""
    campaign = svc.campaigns.get(campaign_id, with_recipients=True)
    if campaign is None:
        raise CampaignNotFoundError(campaign_id)
    status = campaign.status
    if status in _NOT_INITIALIZABLE:
        raise InvalidStateTransitionError(
            f"campaign {campaign_id!r} is {status.value!r}; it cannot be initialized"
        )
    if status == CampaignStatus.SCHEDULED:
        transition_campaign(svc, campaign_id, CampaignStatus.INITIALIZING)
    progress = InitCheckpoint.of(campaign)
    # Where this step starts: None for a fresh start, else the saved checkpoint (a step
    # that continues, or one resumed after a worker stopped or died).
    log.info("campaign_initialization_step", campaign_id=campaign_id, position=_logged(progress))
    result = InitResult(campaign_id=campaign_id)
    # One registration and one metrics increment per step (task), after its last
    # checkpoint: what it inserted is counted once, whatever the number of batches.
    ledger = svc.ledger(campaign_id)
    try:
        _run_batches(svc, campaign, status, progress, ledger, (max_batches, out_of_time), result)
    finally:
        ledger.close()
    return result


def _run_batches(
    svc: Services,
    campaign: StoredCampaign,
    status: CampaignStatus,
    progress: InitCheckpoint,
    ledger: MetricsLedger,
    limits: tuple[int | None, Callable[[], bool] | None],
    result: InitResult,
) -> None:
    """Insert batches, checkpointing every ``CHECKPOINT_EVERY`` of them and at the end."""
    max_batches, out_of_time = limits
    campaign_id = campaign.id
    recipients = svc.campaigns.iter_recipients(
        campaign, svc.init_batch_size, progress.position, read_ahead=CHECKPOINT_EVERY
    )
    unsaved = 0
    for batches, (batch, position) in enumerate(recipients, start=1):
        result.created += _insert_batch(svc, campaign, batch, progress, ledger)
        progress.position = position
        unsaved += 1
        last = (max_batches is not None and batches >= max_batches) or bool(
            out_of_time is not None and out_of_time()
        )
        if unsaved < CHECKPOINT_EVERY and not last:
            continue
        unsaved = 0
        if not _checkpoint(svc, campaign_id, status, progress, ledger):
            result.stopped = True  # paused or cancelled meanwhile
            log.info("campaign_initialization_stopped", campaign_id=campaign_id)
            return
        if last:
            log.info(
                "campaign_initialization_checkpoint",
                campaign_id=campaign_id,
                created=result.created,
                position=position.as_doc(),
            )
            return
    _finish(svc, campaign_id, progress, result)  # also the last checkpoint
    ledger.after_write()


def _insert_batch(
    svc: Services,
    campaign: StoredCampaign,
    batch: list[AudienceRow],
    progress: InitCheckpoint,
    ledger: MetricsLedger,
) -> int:
    """Insert one batch of conversations; count its invalid rows. ``ledger`` stays
    registered with the metrics document until the checkpoint is saved."""
    _, type_template = svc.type_template(campaign)
    stages = type_template.stage_names
    now = svc.clock.now()
    recipients = []
    for row in batch:
        if isinstance(row, InvalidRow):
            _count_invalid(campaign, row, progress, ledger)
        else:
            recipients.append(row)
    fresh, held_out, finished = _new_conversations(svc, campaign, recipients, stages, now)
    ledger.before_write()
    inserted = svc.conversation_state_repository.insert_states(fresh)
    svc.metrics.batch_size("initialize", len(fresh) + len(held_out) + len(finished))
    if held_out:
        # Inserted apart so that the holdout's count is exact on a resumed step too
        # (duplicates are skipped, and only the number inserted is known).
        holding = svc.conversation_state_repository.insert_states(held_out)
        ledger.delta.holdout["conversations"] += holding
        ledger.delta.holdout["active"] += holding
        inserted += holding
    if inserted:
        ledger.delta.total_recipients += inserted
        ledger.delta.active += inserted
        ledger.delta.stage_entered[stages[0]] += inserted
        svc.metrics.conversations_initialized(campaign.campaign_type, inserted)
    if finished:
        _insert_suppressed(svc, campaign, finished, stages[0], ledger)
    return inserted


def _new_conversations(
    svc: Services,
    campaign: StoredCampaign,
    recipients: list[Recipient],
    stages: list[str],
    now: datetime,
) -> tuple[list[ConversationState], list[ConversationState], list[ConversationState]]:
    """The recipients' new conversations: to run, in the holdout, and already opted out
    (a suppressed recipient's: created finished, never messaged)."""
    _, type_template = svc.type_template(campaign)
    suppressed = svc.send_guard.suppressed_people(
        [(r.user_id, r.user_id, r.attributes) for r in recipients]
    )
    fresh, held_out, finished = [], [], []
    for recipient in recipients:
        state = new_conversation(campaign, recipient, stages, now)
        if recipient.user_id in suppressed:
            reason = suppressed[recipient.user_id]
            finished.append(
                finish(state, ConversationStatus.OPTED_OUT, reason, now, stage_completed=False)
            )
        elif in_holdout(campaign.id, recipient.user_id, type_template.holdout):
            held_out.append(state.model_copy(update={"holdout": True}))
        else:
            fresh.append(state)
    return fresh, held_out, finished


def _insert_suppressed(
    svc: Services,
    campaign: StoredCampaign,
    states: list[ConversationState],
    first: str,
    ledger: MetricsLedger,
) -> None:
    """Suppressed recipients' conversations, counted as opted out (not as created)."""
    inserted = svc.conversation_state_repository.insert_states(states)
    if inserted:
        ledger.delta.total_recipients += inserted
        ledger.delta.opted_out += inserted
        ledger.delta.stage_entered[first] += inserted
        ledger.delta.funnel[(first, "exit:opted_out")] += inserted
        svc.metrics.suppressed(campaign.campaign_type, inserted)


def _count_invalid(
    campaign: StoredCampaign, row: InvalidRow, progress: InitCheckpoint, ledger: MetricsLedger
) -> None:
    progress.invalid += 1
    ledger.delta.invalid_recipients += 1
    if len(progress.samples) < INVALID_SAMPLES:
        progress.samples.append(row)
    log.warning("recipient_invalid", campaign_id=campaign.id, error=row.error)


def _logged(progress: InitCheckpoint) -> Doc | None:
    return None if progress.position is None else dict(progress.position.as_doc())


def _checkpoint(
    svc: Services,
    campaign_id: str,
    status: CampaignStatus,
    progress: InitCheckpoint,
    ledger: MetricsLedger,
) -> bool:
    """Save the checkpoint and extend the lease, then apply the batch's increment (the
    reconcile compares the invalid count with the campaign's). False once the campaign
    left ``initializing``."""
    now = svc.clock.now()
    saved = status == CampaignStatus.RUNNING or svc.campaigns.save_init_progress(
        campaign_id, progress, now + timedelta(seconds=svc.lease_seconds * 5), now
    )
    # Inserts up to here are checkpointed: the increment may follow (at the step's end).
    ledger.after_write()
    return saved


def _finish(svc: Services, campaign_id: str, progress: InitCheckpoint, result: InitResult) -> None:
    """Status and total in one conditional update; a pause or cancel that arrived
    meanwhile wins (the filter no longer matches). The total is counted, so it is exact
    even if two initializers overlapped."""
    total = svc.conversation_state_repository.count_conversations(campaign_id)
    now = svc.clock.now()
    svc.campaigns.finish_initialization(
        campaign_id,
        [CampaignStatus.INITIALIZING, CampaignStatus.SCHEDULED, CampaignStatus.RUNNING],
        now,
        total,
        progress,
    )
    result.done = True
    log.info(
        "campaign_initialized",
        campaign_id=campaign_id,
        created=result.created,
        total_recipients=total,
        invalid_recipients=progress.invalid,
    )


def new_conversation(
    campaign: StoredCampaign, recipient: Recipient, stages: list[str], now: datetime
) -> ConversationState:
    """A recipient's conversation, in the first stage, due at the campaign's start."""
    conversation_id = conversation_id_for(campaign.id, recipient.user_id)
    return ConversationState(
        id=conversation_id,
        partition=partition_of(conversation_id),
        user_id=recipient.user_id,
        campaign_id=campaign.id,
        campaign_type=campaign.campaign_type,
        current_stage=stages[0],
        stages=[StageEntry(name=stages[0], entered_at=now)],
        context=ConversationContext(
            template_id=campaign.template_id,
            available_stages=stages,
            attributes=recipient.attributes,
            timezone=recipient.timezone,
            template_version=campaign.template_version,
        ),
        created_at=now,
        last_active=now,
        next_action_at=first_action_at(campaign.start_at, now),
    )


__all__ = [
    "CHECKPOINT_EVERY",
    "INVALID_SAMPLES",
    "InitResult",
    "initialize_campaign_step",
    "new_conversation",
]
