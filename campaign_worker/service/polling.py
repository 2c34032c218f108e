"""The poller's pass: publish crash leftovers, claim campaigns due for initialization,
dispatch processing over partition ranges for running campaigns with due conversations
(and cancelled ones with conversations left to settle) unless dispatched tasks are on
them already, complete running ones with nothing left active, and measure the lag."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from campaign_worker.domain.campaign_documents import CampaignStatus, StoredCampaign
from campaign_worker.domain.documents import to_utc
from campaign_worker.domain.partitions import PartitionRange
from campaign_worker.service.context import Services
from campaign_worker.service.dispatch_tokens import Dispatch, dispatch_token, is_dispatch_token

log = structlog.get_logger(__name__)


@dataclass
class PollResult:
    initialize: list[str] = field(default_factory=list)
    process: list[str] = field(default_factory=list)  # campaigns processing was dispatched for
    # The tasks to enqueue per campaign (registered already).
    dispatches: dict[str, list[Dispatch]] = field(default_factory=dict)
    # Campaigns with work due that dispatched tasks are on already.
    in_progress: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    oldest_due: datetime | None = None
    republished: int = 0


def poll_campaigns(svc: Services, owner: str | None = None, claim_limit: int = 10) -> PollResult:
    """One poller pass. The lag counts running campaigns only: paused and cancelled ones
    are not late."""
    now = svc.clock.now()
    result = PollResult()
    # First, so a failure here leaves no campaign claimed without its task sent.
    result.republished = svc.publisher.sweep(now - svc.publish_grace)
    claimed = svc.campaigns.claim_for_initialization(
        now, owner or uuid.uuid4().hex, now + timedelta(seconds=svc.lease_seconds * 5), claim_limit
    )
    result.initialize = [campaign.id for campaign in claimed]
    running = []
    for campaign in svc.campaigns.find_by_status(
        [CampaignStatus.RUNNING, CampaignStatus.CANCELLED]
    ):
        if campaign.status == CampaignStatus.CANCELLED:
            _poll_cancelled(svc, campaign.id, now, result)
        else:
            running.append(campaign.id)
            always_on = always_on_until(campaign, now)
            _poll_running(svc, campaign.id, now, result, always_on=always_on)
    result.oldest_due = svc.conversation_state_repository.oldest_due(now, running)
    lag = (now - to_utc(result.oldest_due)).total_seconds() if result.oldest_due else 0.0
    svc.metrics.poller_lag(max(0.0, lag))
    return result


def always_on_until(campaign: StoredCampaign, now: datetime) -> bool:
    """An open campaign before its ``ends_at`` (if any): it never completes for lack of
    active conversations (people enroll while it runs)."""
    return campaign.open and not campaign.ended(now)


def _poll_running(
    svc: Services, campaign_id: str, now: datetime, result: PollResult, *, always_on: bool
) -> None:
    if _dispatch(svc, campaign_id, now, False, result) or always_on:
        return
    if svc.conversation_state_repository.count_active(campaign_id) == 0:
        svc.campaigns.transition(
            campaign_id, [CampaignStatus.RUNNING], CampaignStatus.COMPLETED, now
        )
        result.completed.append(campaign_id)
        log.info("campaign_completed", campaign_id=campaign_id)


def _poll_cancelled(svc: Services, campaign_id: str, now: datetime, result: PollResult) -> None:
    """A cancelled campaign is settled once no conversation of it is active."""
    if not _dispatch(svc, campaign_id, now, True, result):
        svc.campaigns.mark_settled(campaign_id, now)
        log.info("campaign_settled", campaign_id=campaign_id)


def _dispatch(
    svc: Services, campaign_id: str, now: datetime, settling: bool, result: PollResult
) -> bool:
    """Dispatch processing over partition ranges if work is due and no dispatched task
    is on it already; True if work is due. As many ranges as batches are due, up to the
    fan-out; each task registers its successors while more is due in its range."""
    capacity = svc.process_batch_size * svc.process_fanout
    due = svc.conversation_state_repository.count_due(
        campaign_id, now, settling=settling, limit=capacity
    )
    if not due:
        return False
    if _in_progress(svc, campaign_id, now):
        result.in_progress.append(campaign_id)
        return True
    count = min(svc.process_fanout, -(-due // svc.process_batch_size))
    result.process.append(campaign_id)
    result.dispatches[campaign_id] = dispatch(svc, campaign_id, count)
    return True


def dispatch(svc: Services, campaign_id: str, count: int = 1) -> list[Dispatch]:
    """Register ``count`` processing tasks, one per partition range, in one write; the
    caller enqueues them (each under its token as task id)."""
    spans = [PartitionRange(index, count) for index in range(count)]
    dispatches = [Dispatch(span, dispatch_token(span)) for span in spans]
    svc.campaign_metrics.register(campaign_id, [d.token for d in dispatches], svc.clock.now())
    return dispatches


def _in_progress(svc: Services, campaign_id: str, now: datetime) -> bool:
    """A dispatched task registered within the lease time is (or will be) on it."""
    stored = svc.campaign_metrics.get(campaign_id)
    recent = now - timedelta(seconds=svc.lease_seconds)
    return stored is not None and any(
        is_dispatch_token(token) and since > recent for token, since in stored.inflight.items()
    )


__all__ = ["PollResult", "dispatch", "poll_campaigns"]
