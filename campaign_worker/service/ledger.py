"""Campaign metrics bookkeeping around conversation writes.

A writer registers with the campaign's metrics document before its first conversation
write and folds what landed into one increment that also deregisters it. The reconcile
defers while a registration is live, so it never counts a write whose increment is still
on its way. A writer that fails in the middle of a write cannot know what landed: it stays
registered until the registration expires, and the reconcile then corrects the counts.
"""

from __future__ import annotations

import uuid

from campaign_worker.domain.progression import MetricsDelta
from campaign_worker.service.ports import CampaignMetricsRepository, Clock


class MetricsLedger:
    """One writer's registration and pending increment for one campaign."""

    def __init__(self, repo: CampaignMetricsRepository, campaign_id: str, clock: Clock) -> None:
        self.repo = repo
        self.campaign_id = campaign_id
        self.clock = clock
        self.delta = MetricsDelta()
        self.token: str | None = None
        self.uncertain = False  # a write was sent and its outcome is unknown

    def before_write(self) -> None:
        if self.token is None:
            self.token = uuid.uuid4().hex
            self.repo.begin(self.campaign_id, self.token, self.clock.now())
        self.uncertain = True

    def after_write(self) -> None:
        self.uncertain = False

    def add(self, delta: MetricsDelta) -> None:
        self.delta.add(delta)

    def close(self) -> None:
        """Apply the increment and deregister; left registered while a write is in doubt."""
        if self.uncertain:
            return
        if self.token is None:
            if not self.delta.is_empty():
                self.repo.apply_delta(self.campaign_id, self.delta, self.clock.now())
        else:
            self.repo.apply_delta(self.campaign_id, self.delta, self.clock.now(), token=self.token)
        self.delta = MetricsDelta()
        self.token = None


__all__ = ["MetricsLedger"]
