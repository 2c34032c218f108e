"""Delivery statuses into the journey: each (message, status) is recorded once; the latest
by its time is kept on the message's history entry; a hard bounce or a complaint fails the
conversation with the reason and suppresses the address.

Order, so that a retry after a crash at any point completes the work: the event is
recorded first (it is what makes a repeat a duplicate), then every effect, each of them
idempotent (latest-wins status, a count guarded by its key, an upserted suppression, a
failure that is a no-op on a finished conversation), and a duplicate re-applies them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import JsonValue

from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.delivery import (
    DeliveryEvent,
    DeliveryStatus,
    LatestStatus,
    OutboxRow,
    ends_conversation,
    resolve_channel,
    status_rank,
)
from campaign_worker.domain.documents import FINISHED_STATUSES
from campaign_worker.domain.effects import Action, Decision, Effects
from campaign_worker.domain.errors import InvalidInputError, NotFoundError
from campaign_worker.domain.limits import MAX_METADATA_BYTES, check_size
from campaign_worker.domain.transitions import apply
from campaign_worker.service.context import Services
from campaign_worker.service.delivery_ports import DeliveryStatuses, Suppressions
from campaign_worker.service.writes import Current, Outcome, write_one


@dataclass(frozen=True)
class StatusRecorded:
    message_id: str
    status: str
    channel: str
    duplicate: bool
    counted: bool  # newly counted in the metrics document (count it in Prometheus too)
    conversation_status: str | None = None

    def as_dict(self) -> Doc:
        return {
            "message_id": self.message_id,
            "status": self.status,
            "channel": self.channel,
            "duplicate": self.duplicate,
            "conversation_status": self.conversation_status,
        }


class StatusRecorder:
    """Records delivery statuses (from the dispatcher and from providers)."""

    def __init__(
        self,
        svc: Services,
        statuses: DeliveryStatuses,
        suppressions: Suppressions,
        default_channel: str,
    ) -> None:
        self.svc = svc
        self.statuses = statuses
        self.suppressions = suppressions
        self.default_channel = default_channel

    def record(
        self,
        message_id: str,
        status: DeliveryStatus,
        detail: JsonValue = None,
        timestamp: datetime | None = None,
    ) -> StatusRecorded:
        check_size({"detail": detail}, MAX_METADATA_BYTES, "detail")
        row = self.statuses.row(message_id)
        if row is None:
            raise NotFoundError(f"message {message_id!r} is not in the outbox")
        now = self.svc.clock.now()
        at = timestamp or now
        channel = row.delivered_via or resolve_channel(row.channel, self.default_channel)
        before = next((e for e in row.events if e.status == status.value), None)
        if before is not None:
            # A repeat: its effects are applied again as first recorded (its time and detail).
            new, at, detail = False, before.at, before.detail
        else:
            event = DeliveryEvent(status=status.value, at=at, detail=detail, recorded_at=now)
            new = self.statuses.add_event(message_id, event)
        latest = LatestStatus(status=status.value, rank=status_rank(status), at=at, detail=detail)
        self.statuses.set_latest(message_id, row.conversation_id, latest)
        counted = self.statuses.count(
            row.campaign_id, channel, status.value, f"{message_id}:{status.value}"
        )
        conversation_status = None
        if ends_conversation(status, detail):
            conversation_status = self._end(row, channel, status, now)
        return StatusRecorded(
            message_id, status.value, channel, not new, counted, conversation_status
        )

    def _end(self, row: OutboxRow, channel: str, status: DeliveryStatus, now: datetime) -> str:
        address = row.address or row.user_id
        reason = "complaint" if status == DeliveryStatus.COMPLAINED else "hard bounce"
        self.suppressions.suppress(row.user_id, channel, address, reason, row.campaign_id, now)
        why = f"{reason} for message {row.id}"

        def fail(c: Current) -> Outcome | None:
            if c.state.status in FINISHED_STATUSES:
                return None
            effects = Effects()
            decision = Decision(Action.FAIL, why)
            return apply(c.state, decision, c.template, c.type_template, c.now, effects), effects

        try:
            state = write_one(self.svc, row.conversation_id, fail)
        except InvalidInputError:
            return "unknown"  # the conversation is gone or unreadable: the address stays suppressed
        return state.status.value


__all__ = ["StatusRecorded", "StatusRecorder"]
