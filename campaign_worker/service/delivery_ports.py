"""The ports delivery depends on: channels, leased outbox rows, statuses, limits,
suppressions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.delivery import Outgoing, RowStatus


class Channel(Protocol):
    """Hands one message to a provider; raises Transient/PermanentDeliveryError."""

    name: str

    def address(self, user_id: str, attributes: Mapping[str, Any]) -> str: ...
    def send(self, message: Outgoing) -> str | None: ...


class DeliveryRows(Protocol):
    def claim(
        self, channels: Sequence[str], now: datetime, limit: int, owner: str, until: datetime
    ) -> list[Doc]: ...
    def start_attempt(self, message_id: str, owner: str, until: datetime, fields: Doc) -> bool: ...
    def finish(self, message_id: str, owner: str, status: RowStatus, fields: Doc) -> bool: ...
    def attributes_of(self, conversation_ids: Sequence[str]) -> dict[str, Doc]: ...
    def campaign_statuses(self, campaign_ids: Sequence[str]) -> dict[str, str]: ...


class DeliveryStatuses(Protocol):
    def row(self, message_id: str) -> Doc | None: ...
    def add_event(self, message_id: str, status: str, event: Doc) -> bool: ...
    def set_latest(self, message_id: str, conversation_id: str, latest: Doc) -> None: ...
    def count(self, campaign_id: str, channel: str, status: str, key: str) -> bool: ...


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
