"""Campaign metrics bookkeeping around conversation writes.

A writer registers with the campaign's metrics document before its first conversation
write and folds what landed into one increment that also deregisters it. The reconcile
defers while a registration is live, so it never counts a write whose increment is still
on its way. A writer that fails in the middle of a write cannot know what landed: it stays
registered until the registration expires, and the reconcile then corrects the counts.

A processing task can be registered by whoever enqueued it (``registration``): the poller
registers the tasks it dispatches, and a batch that continues registers its successors
in its own increment (``hand_over``). Such a task writes the metrics document once, at
the end, instead of twice (their tokens: ``dispatch_tokens.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from campaign_worker.domain.effects import MetricsDelta
from campaign_worker.service.ports import CampaignMetricsRepository, Clock


class MetricsLedger:
    """One writer's registration and pending increment for one campaign."""

    def __init__(
        self,
        repo: CampaignMetricsRepository,
        campaign_id: str,
        clock: Clock,
        registration: str | None = None,
    ) -> None:
        self.repo = repo
        self.campaign_id = campaign_id
        self.clock = clock
        self.delta = MetricsDelta()
        self.token: str | None = registration  # registered already if given
        self.preset = registration is not None
        self.handed_over: list[str] = []
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

    def hand_over(self, tokens: Sequence[str]) -> None:
        """Register ``tokens`` (successor tasks) with the closing increment."""
        self.handed_over += tokens

    def close(self, failed: bool = False) -> None:
        """Apply the increment and deregister; left registered while a write is in doubt.
        ``failed``: the work raised. A registration made by the dispatcher then stays (the
        retry runs under the same task id, hence the same token, and relies on it)."""
        if self.uncertain:
            return
        if failed and self.preset:
            self.token = None
        if self.token is None and not self.handed_over:
            if not self.delta.is_empty():
                self.repo.apply_delta(self.campaign_id, self.delta, self.clock.now())
        else:
            self.repo.apply_delta(
                self.campaign_id,
                self.delta,
                self.clock.now(),
                token=self.token,
                register=tuple(self.handed_over),
            )
        self.delta = MetricsDelta()
        self.token = None
        self.handed_over = []


__all__ = ["MetricsLedger"]
