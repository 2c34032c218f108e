"""The ports delivery depends on: channels, leased outbox rows, statuses, limits,
suppressions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from campaign_worker.domain.aliases import Attributes
from campaign_worker.domain.delivery import (
    Attempt,
    DeliveryEvent,
    LatestStatus,
    OutboxRow,
    Outgoing,
)


class Channel(Protocol):
    """Hands one message to a provider; raises Transient/PermanentDeliveryError."""

    name: str

    def address(self, user_id: str, attributes: Attributes) -> str: ...
    def send(self, message: Outgoing) -> str | None: ...


class DeliveryRows(Protocol):
    """Outbox rows through dispatch: every move requires the claimer's lease."""

    def claim(
        self, channels: Sequence[str], now: datetime, limit: int, owner: str, until: datetime
    ) -> list[OutboxRow]:
        """Lease up to ``limit`` due rows of ``channels`` to ``owner``; the rows won."""
        ...

    def start_attempt(self, message_id: str, owner: str, until: datetime, attempt: Attempt) -> bool:
        """Extend the lease and count an attempt, if the row is still ``owner``'s."""
        ...

    def requeue(
        self,
        message_id: str,
        owner: str,
        *,
        next_attempt_at: datetime | None = None,
        last_error: str | None = None,
    ) -> bool:
        """Back to pending (not before ``next_attempt_at``, when given; with the error of
        the attempt, when given), if still ``owner``'s."""
        ...

    def mark_sent(
        self, message_id: str, owner: str, sent_at: datetime, provider_id: str | None
    ) -> bool: ...
    def mark_failed(
        self, message_id: str, owner: str, failed_at: datetime, reason: str, channel: str
    ) -> bool: ...
    def attributes_of(self, conversation_ids: Sequence[str]) -> dict[str, Attributes]:
        """Recipient attributes by conversation (for addresses such as an email)."""
        ...

    def campaign_statuses(self, campaign_ids: Sequence[str]) -> dict[str, str]: ...


class DeliveryStatuses(Protocol):
    def row(self, message_id: str) -> OutboxRow | None: ...
    def add_event(self, message_id: str, event: DeliveryEvent) -> bool:
        """Record the event once per status; False if its status was recorded before."""
        ...

    def set_latest(self, message_id: str, conversation_id: str, latest: LatestStatus) -> None:
        """On the row and on the message's history entry, unless a later one is there."""
        ...

    def count(self, campaign_id: str, channel: str, status: str, key: str) -> bool:
        """Count one message in the campaign's ``delivery.<channel>.<status>``, once per
        ``key``; False if ``key`` was counted before."""
        ...


class RateLimiter(Protocol):
    def acquire(self, channel: str) -> float: ...


class Suppressions(Protocol):
    def suppress(
        self,
        user_id: str,
        channel: str,
        address: str,
        reason: str,
        campaign_id: str | None,
        now: datetime,
    ) -> None: ...
    def is_suppressed(self, user_id: str, channel: str, address: str) -> bool: ...


__all__ = ["Channel", "DeliveryRows", "DeliveryStatuses", "RateLimiter", "Suppressions"]
