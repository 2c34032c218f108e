"""The dispatcher: claims deliverable outbox rows in batches and sends each through its
channel, at the channel's shared rate, with retries.

Guarantee (docs/architecture.md, "Delivery"): a row moves ``pending -> sending -> sent |
failed`` only by conditional updates that require this dispatcher's lease, so two
dispatchers never send a row at once, and a row that reached ``sent`` or ``failed`` is never
sent again. A dispatcher that dies after its provider accepted a message but before the row
says ``sent`` leaves a lease that expires; the row is then sent again, with the same
``message_id`` as the provider's idempotency key: at least once to the provider, once in
effect for a provider that honours the key.

A batch sends its rows concurrently, per channel at most ``max_in_flight`` at once
(``service/delivery_sends.py``), and writes its bookkeeping at the end, a write per kind
(``service/delivery_ledger.py``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from campaign_worker.domain.campaign_documents import CampaignStatus
from campaign_worker.domain.delivery import (
    DEFAULT_CHANNEL,
    Attempt,
    OutboxRow,
    Outgoing,
    RowMove,
    RowStatus,
    resolve_channel,
)
from campaign_worker.domain.errors import PermanentDeliveryError, TransientError
from campaign_worker.service.delivery_ledger import DispatchResult, Ledger, Retries
from campaign_worker.service.delivery_ports import (
    Channel,
    DeliveryRows,
    RateLimiter,
    Suppressions,
    Target,
)
from campaign_worker.service.delivery_sends import Budget, ChannelSender, Job
from campaign_worker.service.delivery_status import StatusRecorder
from campaign_worker.service.ports import Clock

# A paused campaign's messages are looked at again this often (seconds).
PAUSED_RECHECK = 60


@dataclass(frozen=True)
class DispatchPolicy:
    batch_size: int = 1000
    lease_seconds: int = 60
    max_attempts: int = 8
    backoff_base: float = 2.0
    backoff_cap: float = 600.0
    default_channel: str = "outbox"
    # A batch hands its remaining rows back after this long (keep it well inside the task
    # time limit), and waits for rate-limit slots for at most a third of the lease in all.
    batch_seconds: float = 100.0
    # The longest one send may take: no send starts unless the lease still covers it.
    longest_send: float = 0.0
    # Sends in flight at once, per channel (others: ``default_in_flight``).
    max_in_flight: Mapping[str, int] = field(default_factory=dict)
    default_in_flight: int = 32

    def in_flight(self, channel: str) -> int:
        return self.max_in_flight.get(channel, self.default_in_flight)


class Dispatcher:
    """One ``dispatch`` call handles one claimed batch."""

    def __init__(
        self,
        rows: DeliveryRows,
        channels: Mapping[str, Channel],
        limiter: RateLimiter,
        suppressions: Suppressions,
        statuses: StatusRecorder,
        clock: Clock,
        policy: DispatchPolicy,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rows = rows
        self.channels = dict(channels)
        self.limiter = limiter
        self.suppressions = suppressions
        self.statuses = statuses
        self.clock = clock
        self.policy = policy
        self.sleep = sleep

    @property
    def claimed_names(self) -> list[str]:
        """Row channel names this dispatcher sends (``default`` when it maps to one)."""
        names = sorted(self.channels)
        if self.policy.default_channel in self.channels:
            names.append(DEFAULT_CHANNEL)
        return names

    def dispatch(self, owner: str) -> DispatchResult:
        result = DispatchResult()
        if not self.channels:
            return result
        now = self.clock.now()
        rows = self.rows.claim(
            self.claimed_names, now, self.policy.batch_size, owner, self._lease_end()
        )
        result.claimed = len(rows)
        if not rows:
            return result
        budget = Budget(self.policy.lease_seconds / 3, time.monotonic() + self.policy.batch_seconds)
        policy = self.policy
        ledger = Ledger(
            owner,
            self.clock.now,
            Retries(policy.max_attempts, policy.backoff_base, policy.backoff_cap),
        )
        try:
            jobs = self._triage(rows, ledger)
        except TransientError:
            self._release(rows, owner)  # the store or the list: hand the batch back now
            raise
        error: TransientError | None = None
        for name in sorted({job.name for job in jobs}):
            sender = ChannelSender(
                self.channels[name], policy.in_flight(name), self.limiter, budget, self.sleep
            )
            run = sender.run(
                [job for job in jobs if job.name == name],
                lambda started: self._start(started, owner, budget),
            )
            ledger.add_run(run)
            error = error or run.error
        ledger.settle(self.rows, self.statuses.statuses, result)
        if error is not None:
            raise error  # limiter or store unreachable: the task retries
        return result

    def _triage(self, rows: list[OutboxRow], ledger: Ledger) -> list[Job]:
        """The rows to send; the others' outcomes (cancelled, paused, no address,
        suppressed) into the ledger."""
        reading = [r for r in rows if self._channel(r).needs_attributes]
        attributes = (
            self.rows.attributes_of(sorted({row.conversation_id for row in reading}))
            if reading
            else {}
        )
        campaigns = self.rows.campaign_statuses(sorted({row.campaign_id for row in rows}))
        candidates: list[tuple[OutboxRow, str, str]] = []
        for row in rows:
            name = resolve_channel(row.channel, self.policy.default_channel)
            campaign = campaigns.get(row.campaign_id)
            if campaign == CampaignStatus.CANCELLED:  # cancelling stops its sending at once
                ledger.fail(row, name, "campaign cancelled")
                continue
            if campaign == CampaignStatus.PAUSED:  # pausing holds it
                later = self.clock.now() + timedelta(seconds=PAUSED_RECHECK)
                ledger.requeue(row, name, "held", later, uncount=False)
                continue
            try:
                address = self._channel(row).address(
                    row.user_id, attributes.get(row.conversation_id, {})
                )
            except PermanentDeliveryError as exc:
                ledger.fail(row, name, str(exc))
                continue
            candidates.append((row, name, address))
        targets: list[Target] = [(row.user_id, name, address) for row, name, address in candidates]
        suppressed = self.suppressions.suppressed(targets) if targets else set()
        jobs: list[Job] = []
        for (row, name, address), target in zip(candidates, targets, strict=True):
            if target in suppressed:
                ledger.fail(row, name, "address suppressed")
            else:
                jobs.append(Job(row, name, _outgoing(row, name, address)))
        return jobs

    def _channel(self, row: OutboxRow) -> Channel:
        return self.channels[resolve_channel(row.channel, self.policy.default_channel)]

    def _start(self, jobs: list[Job], owner: str, budget: Budget) -> list[Job]:
        """Count the attempt and extend the lease of these rows (one write); from now on
        no send starts unless the lease still covers the longest send."""
        now = self.clock.now()
        attempts = [(j.row.id, Attempt(j.name, j.message.address, now, owner)) for j in jobs]
        ours = self.rows.start_attempts(owner, self._lease_end(), attempts)
        covered = time.monotonic() + self.policy.lease_seconds - self.policy.longest_send
        budget.deadline = min(budget.deadline, covered)
        return [job for job in jobs if job.row.id in ours]

    def _release(self, rows: list[OutboxRow], owner: str) -> None:
        """Back to pending, due at once, without counting an attempt (best effort: what
        cannot be released now is claimed again when its lease expires)."""
        with contextlib.suppress(TransientError):
            self.rows.finish_many(owner, [RowMove(row.id, RowStatus.PENDING) for row in rows])

    def _lease_end(self) -> datetime:
        return self.clock.now() + timedelta(seconds=self.policy.lease_seconds)


def _outgoing(row: OutboxRow, channel: str, address: str) -> Outgoing:
    return Outgoing(
        message_id=row.id,
        campaign_id=row.campaign_id,
        conversation_id=row.conversation_id,
        user_id=row.user_id,
        channel=channel,
        address=address,
        content=row.content,
        stage=row.stage,
        step=row.step,
        created_at=row.created_at,
    )


__all__ = ["DispatchPolicy", "DispatchResult", "Dispatcher"]
