"""A dispatcher batch's bookkeeping: each row's outcome is noted as the batch goes and
written at its end, one write per kind rather than per message.

Order, so that a crash before the moves is completed by the row's next send (its lease
expires; same ``Idempotency-Key``): the ``sent`` counts first (one metrics update per
campaign, guarded by their keys), then the ``sent`` events and latest statuses (a write on
the outbox, one on the conversations), then every row's move (one write, each conditional
on the lease), and last the ``failed`` statuses of the rows that did move to ``failed``
(as before batching, a crash right after a failure's move leaves its status unrecorded).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from pydantic import JsonValue

from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.delivery import (
    DeliveryEvent,
    DeliveryStatus,
    LatestStatus,
    OutboxRow,
    RowMove,
    RowStatus,
    StatusCount,
    StatusWrite,
    retry_delay,
    status_rank,
)
from campaign_worker.domain.errors import TransientDeliveryError
from campaign_worker.service.delivery_ports import DeliveryRows, DeliveryStatuses
from campaign_worker.service.delivery_sends import ChannelRun
from campaign_worker.service.delivery_status import StatusRecorded

log = structlog.get_logger(__name__)


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


@dataclass(frozen=True)
class Retries:
    max_attempts: int
    backoff_base: float
    backoff_cap: float


@dataclass(frozen=True)
class Entry:
    row: OutboxRow
    name: str
    outcome: str  # sent, retry, failed, deferred, held, released
    move: RowMove
    detail: JsonValue = None


class Ledger:
    """The outcomes of one batch (``note_*``), written by ``settle``."""

    def __init__(self, owner: str, now: Callable[[], datetime], retries: Retries) -> None:
        self.owner, self.now, self.retries = owner, now, retries
        self.entries: list[Entry] = []
        self.lost: Counter[str] = Counter()

    def fail(self, row: OutboxRow, name: str, reason: str) -> None:
        move = RowMove(row.id, RowStatus.FAILED, at=self.now(), reason=reason, channel=name)
        self.entries.append(Entry(row, name, "failed", move, {"reason": reason}))

    def requeue(
        self, row: OutboxRow, name: str, outcome: str, later: datetime | None, uncount: bool
    ) -> None:
        """Back to pending: ``held``, ``deferred`` (until ``later``), ``released`` (at once)."""
        move = RowMove(row.id, RowStatus.PENDING, next_attempt_at=later, uncount_attempt=uncount)
        self.entries.append(Entry(row, name, outcome, move))

    def add_run(self, run: ChannelRun) -> None:
        """A channel's sends."""
        later = self.now() + timedelta(seconds=run.defer_seconds)
        for job in run.deferred:
            self.requeue(job.row, job.name, "deferred", later, run.started)
        for job in run.lost:
            self.lost[job.name] += 1
        for sent in run.outcomes:
            row, name, error = sent.job.row, sent.job.name, sent.error
            if not sent.started:
                self.requeue(row, name, "released", None, run.started)
            elif error is None:
                move = RowMove(row.id, RowStatus.SENT, at=self.now(), provider_id=sent.provider_id)
                self.entries.append(Entry(row, name, "sent", move))
            elif isinstance(error, TransientDeliveryError):
                self._retry_or_fail(row, name, error)
            else:
                self.fail(row, name, str(error))

    def _retry_or_fail(self, row: OutboxRow, name: str, exc: TransientDeliveryError) -> None:
        attempts = row.attempts + 1  # the one just made
        if attempts >= self.retries.max_attempts:
            self.fail(row, name, f"gave up after {attempts} attempts: {exc}")
            return
        delay = retry_delay(
            attempts,
            base=self.retries.backoff_base,
            cap=self.retries.backoff_cap,
            retry_after=exc.retry_after,
        )
        later = self.now() + timedelta(seconds=delay)
        move = RowMove(row.id, RowStatus.PENDING, next_attempt_at=later, reason=str(exc))
        self.entries.append(Entry(row, name, "retry", move))

    def settle(
        self, rows: DeliveryRows, statuses: DeliveryStatuses, result: DispatchResult
    ) -> None:
        sent = [e for e in self.entries if e.outcome == "sent"]
        self._record(statuses, sent, DeliveryStatus.SENT, result)
        moved = (
            rows.finish_many(self.owner, [e.move for e in self.entries]) if self.entries else set()
        )
        failed = [e for e in self.entries if e.outcome == "failed" and e.row.id in moved]
        self._record(statuses, failed, DeliveryStatus.FAILED, result)
        for name, count in self.lost.items():
            result.outcomes[(name, "lost")] += count
        for entry in self.entries:
            if entry.row.id in moved:
                if entry.outcome != "released":
                    result.outcomes[(entry.name, entry.outcome)] += 1
            elif entry.outcome != "released":
                result.outcomes[(entry.name, "lost")] += 1  # our lease ran out
                if entry.outcome == "sent":
                    log.warning("delivery_lease_lost_after_send", message_id=entry.row.id)

    def _record(
        self,
        statuses: DeliveryStatuses,
        entries: list[Entry],
        status: DeliveryStatus,
        result: DispatchResult,
    ) -> None:
        """The statuses of these rows: counts per campaign, then events and latest."""
        if not entries:
            return
        now, value = self.now(), status.value
        counts: defaultdict[str, list[StatusCount]] = defaultdict(list)
        for e in entries:
            counts[e.row.campaign_id].append(StatusCount(e.name, value, f"{e.row.id}:{value}"))
        counted: set[str] = set()
        for campaign_id, wanted in counts.items():
            counted |= statuses.count_many(campaign_id, wanted)
        rank = status_rank(status)
        statuses.record_many(
            [
                StatusWrite(
                    e.row.id,
                    e.row.conversation_id,
                    DeliveryEvent(status=value, at=now, detail=e.detail, recorded_at=now),
                    LatestStatus(status=value, rank=rank, at=now, detail=e.detail),
                )
                for e in entries
            ]
        )
        result.statuses.extend(
            StatusRecorded(e.row.id, value, e.name, False, f"{e.row.id}:{value}" in counted)
            for e in entries
        )


__all__ = ["DispatchResult", "Entry", "Ledger", "Retries"]
