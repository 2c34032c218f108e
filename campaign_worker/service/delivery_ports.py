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
    RowMove,
    StatusCount,
    StatusWrite,
)

# Whom a message goes to: (user id, channel, address).
Target = tuple[str, str, str]


class Channel(Protocol):
    """Hands one message to a provider; raises Transient/PermanentDeliveryError."""

    name: str
    # Whether ``address`` reads the recipient's attributes (else a batch does not read them).
    needs_attributes: bool

    def address(self, user_id: str, attributes: Attributes) -> str: ...
    def send(self, message: Outgoing) -> str | None: ...


class DeliveryRows(Protocol):
    """Outbox rows through dispatch: every move requires the claimer's lease."""

    def claim(
        self, channels: Sequence[str], now: datetime, limit: int, owner: str, until: datetime
    ) -> list[OutboxRow]:
        """Lease up to ``limit`` due rows of ``channels`` to ``owner``; the rows won."""
        ...

    def start_attempts(
        self, owner: str, until: datetime, attempts: Sequence[tuple[str, Attempt]]
    ) -> set[str]:
        """Extend the lease and count an attempt on each row still ``owner``'s (one
        write); the ids of those rows."""
        ...

    def finish_many(self, owner: str, moves: Sequence[RowMove]) -> set[str]:
        """Move each row still ``owner``'s as its ``RowMove`` says (one write); the ids
        of the rows moved."""
        ...

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

    def count_many(self, campaign_id: str, counts: Sequence[StatusCount]) -> set[str]:
        """``count`` for many messages of one campaign (one write when none was counted
        before); the keys newly counted."""
        ...

    def record_many(self, writes: Sequence[StatusWrite]) -> None:
        """For each message: its event once per status, and the latest status on the row
        and on the history entry (as ``add_event`` and ``set_latest``; a write per
        collection)."""
        ...


class RateLimiter(Protocol):
    def take(self, channel: str, wanted: int) -> tuple[int, float]:
        """Take up to ``wanted`` send slots of ``channel`` now: how many were taken, and
        when fewer, the seconds until the next one is expected."""
        ...


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
    def suppressed(self, targets: Sequence[Target]) -> set[Target]:
        """The (user id, channel, address) targets whose user or address is suppressed
        (one read)."""
        ...


__all__ = ["Channel", "DeliveryRows", "DeliveryStatuses", "RateLimiter", "Suppressions", "Target"]
