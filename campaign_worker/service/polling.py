"""The poller's pass: publish crash leftovers, claim campaigns due for initialization,
find running campaigns with due conversations (and cancelled ones with conversations left
to settle), complete running ones with nothing left active, and measure the lag."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from campaign_worker.domain.documents import CampaignStatus, to_utc
from campaign_worker.service.context import Services

log = structlog.get_logger(__name__)


@dataclass
class PollResult:
    initialize: list[str] = field(default_factory=list)
    process: list[str] = field(default_factory=list)
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
            _poll_running(svc, campaign.id, now, result)
    result.oldest_due = svc.conversation_state_repository.oldest_due(now, running)
    lag = (now - to_utc(result.oldest_due)).total_seconds() if result.oldest_due else 0.0
    svc.metrics.poller_lag(max(0.0, lag))
    return result


def _poll_running(svc: Services, campaign_id: str, now: datetime, result: PollResult) -> None:
    repo = svc.conversation_state_repository
    if repo.has_due(campaign_id, now):
        result.process.append(campaign_id)
    elif repo.count_active(campaign_id) == 0:
        svc.campaigns.transition(
            campaign_id, [CampaignStatus.RUNNING], CampaignStatus.COMPLETED, now
        )
        result.completed.append(campaign_id)
        log.info("campaign_completed", campaign_id=campaign_id)


def _poll_cancelled(svc: Services, campaign_id: str, now: datetime, result: PollResult) -> None:
    """A cancelled campaign is settled once no conversation of it is active."""
    if svc.conversation_state_repository.count_active(campaign_id):
        result.process.append(campaign_id)
    else:
        svc.campaigns.mark_settled(campaign_id, now)
        log.info("campaign_settled", campaign_id=campaign_id)


__all__ = ["PollResult", "poll_campaigns"]
