"""Delivery's view of the shared suppression list (``adapters/mongo_suppressions.py``,
collection ``suppressions``): a hard bounce or a complaint adds the channel address
(``address:<channel>:<address>``, source ``bounce``/``complaint``); before each send the
dispatcher checks the address and the user (an opt-out since the message was written)."""

from __future__ import annotations

from datetime import datetime

from pymongo.database import Database

from campaign_worker.adapters.mongo_suppressions import MongoSuppressionRepository
from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.suppressions import (
    Suppression,
    address_key,
    normalize_address,
    user_key,
)
from campaign_worker.service.ports import SuppressionRepository


class ListedSuppressions:
    """The ``Suppressions`` port of delivery over the shared list (any repository of it)."""

    def __init__(self, entries: SuppressionRepository) -> None:
        self._list = entries

    def suppress(
        self,
        user_id: str,
        channel: str,
        address: str,
        reason: str,
        campaign_id: str | None,
        now: datetime,
    ) -> None:
        """Idempotent: an address already listed keeps its first reason."""
        entry = Suppression(
            key=address_key(channel, address),
            reason=reason,
            source="complaint" if reason == "complaint" else "bounce",
            created_at=now,
            user_id=user_id,
            channel=channel,
            address=normalize_address(address),
            campaign_id=campaign_id,
        )
        self._list.add_many([entry])

    def is_suppressed(self, user_id: str, channel: str, address: str) -> bool:
        return bool(self._list.matching([user_key(user_id), address_key(channel, address)]))


class MongoDeliverySuppressions(ListedSuppressions):
    """Over the ``suppressions`` collection."""

    def __init__(self, db: Database[Doc]) -> None:
        self._collection = MongoSuppressionRepository(db)
        super().__init__(self._collection)

    def initialize(self) -> None:
        self._collection.initialize()


__all__ = ["ListedSuppressions", "MongoDeliverySuppressions"]
