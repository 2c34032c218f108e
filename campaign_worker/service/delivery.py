"""The dispatcher: claims deliverable outbox rows in batches and sends each through its
channel, at the channel's shared rate, with retries.

Guarantee (docs/architecture.md, "Delivery"): a row moves ``pending -> sending -> sent |
failed`` only by conditional updates that require this dispatcher's lease, so two
dispatchers never send a row at once, and a row that reached ``sent`` or ``failed`` is never
sent again. A dispatcher that dies after its provider accepted a message but before the row
says ``sent`` leaves a lease that expires; the row is then sent again, with the same
``message_id`` as the provider's idempotency key: at least once to the provider, once in
effect for a provider that honours the key.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from pydantic import JsonValue

from campaign_worker.domain.aliases import Attributes, Doc
from campaign_worker.domain.campaign_documents import CampaignStatus
from campaign_worker.domain.delivery import (
    DEFAULT_CHANNEL,
    Attempt,
    DeliveryStatus,
    OutboxRow,
    Outgoing,
    resolve_channel,
    retry_delay,
)
from campaign_worker.domain.errors import (
    PermanentDeliveryError,
    TransientDeliveryError,
    TransientError,
)
from campaign_worker.service.delivery_ports import Channel, DeliveryRows, RateLimiter, Suppressions
from campaign_worker.service.delivery_status import StatusRecorded, StatusRecorder
from campaign_worker.service.ports import Clock

log = structlog.get_logger(__name__)

# A paused campaign's messages are looked at again this often (seconds).
PAUSED_RECHECK = 60


@dataclass(frozen=True)
class DispatchPolicy:
    batch_size: int = 50
    lease_seconds: int = 60
    max_attempts: int = 8
    backoff_base: float = 2.0
    backoff_cap: float = 600.0
    default_channel: str = "outbox"
    # A batch hands its remaining rows back after this long (keep it well inside the task
    # time limit), and waits for rate-limit slots for at most a third of the lease in all.
    batch_seconds: float = 100.0


@dataclass
class DispatchResult:
    claimed: int = 0
    # Outcomes per channel: sent, retry, failed, deferred (rate limit), held (campaign
    # paused), lost (lease taken over).
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    statuses: list[StatusRecorded] = field(default_factory=list)

    def as_dict(self) -> Doc:
        totals: Counter[str] = Counter()
        for (_, outcome), count in self.outcomes.items():
            totals[outcome] += count
        return {"claimed": self.claimed, **totals}


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
        self._wait_budget = 0.0

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
        attributes = self.rows.attributes_of(sorted({row.conversation_id for row in rows}))
        campaigns = self.rows.campaign_statuses(sorted({row.campaign_id for row in rows}))
        started = time.monotonic()
        self._wait_budget = self.policy.lease_seconds / 3
        for index, row in enumerate(rows):
            if time.monotonic() - started > self.policy.batch_seconds:
                self._release(rows[index:], owner)  # a slow provider: the next task goes on
                break
            try:
                if self._held(row, owner, campaigns.get(row.campaign_id), result):
                    continue
                self._one(row, owner, attributes.get(row.conversation_id, {}), result)
            except TransientError:
                # Limiter or store unreachable: hand the rest back now, not at lease expiry.
                self._release(rows[index:], owner)
                raise
        return result

    def _release(self, rows: list[OutboxRow], owner: str) -> None:
        """Back to pending, due at once, without counting an attempt (best effort: what
        cannot be released now is claimed again when its lease expires)."""
        with contextlib.suppress(TransientError):
            for row in rows:
                self.rows.requeue(row.id, owner)

    def _held(
        self, row: OutboxRow, owner: str, campaign: str | None, result: DispatchResult
    ) -> bool:
        """Cancelling a campaign stops its sending at once; pausing holds it."""
        name = resolve_channel(row.channel, self.policy.default_channel)
        if campaign == CampaignStatus.CANCELLED:
            self._fail(row, owner, name, "campaign cancelled", result)
            return True
        if campaign == CampaignStatus.PAUSED:
            later = self.clock.now() + timedelta(seconds=PAUSED_RECHECK)
            self.rows.requeue(row.id, owner, next_attempt_at=later)
            result.outcomes[(name, "held")] += 1
            return True
        return False

    def _lease_end(self) -> datetime:
        return self.clock.now() + timedelta(seconds=self.policy.lease_seconds)

    def _one(
        self, row: OutboxRow, owner: str, attributes: Attributes, result: DispatchResult
    ) -> None:
        name = resolve_channel(row.channel, self.policy.default_channel)
        channel = self.channels[name]
        message_id = row.id
        try:
            address = channel.address(row.user_id, attributes)
        except PermanentDeliveryError as exc:
            self._fail(row, owner, name, str(exc), result)
            return
        if self.suppressions.is_suppressed(row.user_id, name, address):
            self._fail(row, owner, name, "address suppressed", result)
            return
        if not self._wait_for_slot(row, owner, name, result):
            return
        attempt = Attempt(name, address, self.clock.now(), owner)
        if not self.rows.start_attempt(message_id, owner, self._lease_end(), attempt):
            result.outcomes[(name, "lost")] += 1  # our lease ran out: another dispatcher has it
            return
        outgoing = _outgoing(row, name, address)
        try:
            provider_id = channel.send(outgoing)
        except TransientDeliveryError as exc:
            self._retry_or_fail(row, owner, name, exc, result)
            return
        except PermanentDeliveryError as exc:
            self._fail(row, owner, name, str(exc), result)
            return
        sent_at = self.clock.now()
        # The status first: a crash before the row says sent repeats the send (same
        # idempotency key) and finds the status already recorded, rather than never.
        result.statuses.append(self.statuses.record(message_id, DeliveryStatus.SENT))
        if self.rows.mark_sent(message_id, owner, sent_at, provider_id):
            result.outcomes[(name, "sent")] += 1
        else:
            result.outcomes[(name, "lost")] += 1
            log.warning("delivery_lease_lost_after_send", message_id=message_id, channel=name)

    def _wait_for_slot(self, row: OutboxRow, owner: str, name: str, result: DispatchResult) -> bool:
        """Wait for the channel's rate limit while the batch's waiting budget lasts; beyond
        it, hand the row back as pending until the slot is expected."""
        while True:
            wait = self.limiter.acquire(name)
            if wait <= 0:
                return True
            if wait > self._wait_budget:
                later = self.clock.now() + timedelta(seconds=wait)
                self.rows.requeue(row.id, owner, next_attempt_at=later)
                result.outcomes[(name, "deferred")] += 1
                return False
            self._wait_budget -= wait
            self.sleep(wait)

    def _retry_or_fail(
        self,
        row: OutboxRow,
        owner: str,
        name: str,
        exc: TransientDeliveryError,
        result: DispatchResult,
    ) -> None:
        attempts = row.attempts + 1  # the one just made
        if attempts >= self.policy.max_attempts:
            self._fail(row, owner, name, f"gave up after {attempts} attempts: {exc}", result)
            return
        delay = retry_delay(
            attempts,
            base=self.policy.backoff_base,
            cap=self.policy.backoff_cap,
            retry_after=exc.retry_after,
        )
        later = self.clock.now() + timedelta(seconds=delay)
        if self.rows.requeue(row.id, owner, next_attempt_at=later, last_error=str(exc)):
            result.outcomes[(name, "retry")] += 1

    def _fail(
        self, row: OutboxRow, owner: str, name: str, reason: str, result: DispatchResult
    ) -> None:
        if self.rows.mark_failed(row.id, owner, self.clock.now(), reason, name):
            result.outcomes[(name, "failed")] += 1
            detail: dict[str, JsonValue] = {"reason": reason}
            result.statuses.append(self.statuses.record(row.id, DeliveryStatus.FAILED, detail))


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
