"""Delivery's view of the shared suppression list (``adapters/mongo_suppressions.py``,
collection ``suppressions``): a hard bounce or a complaint adds the channel address
(``address:<channel>:<address>``, source ``bounce``/``complaint``); before sending a batch
the dispatcher checks its addresses and users in one read (an opt-out since the message
was written)."""

from __future__ import annotations

from collections.abc import Sequence
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
from campaign_worker.service.delivery_ports import Target
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

    def suppressed(self, targets: Sequence[Target]) -> set[Target]:
        """Those whose user or channel address is on the list (one read for all)."""
        keys = {
            target: (user_key(target[0]), address_key(target[1], target[2])) for target in targets
        }
        found = self._list.matching(sorted({key for pair in keys.values() for key in pair}))
        return {
            target for target, (user, address) in keys.items() if user in found or address in found
        }


class MongoDeliverySuppressions(ListedSuppressions):
    """Over the ``suppressions`` collection."""

    def __init__(self, db: Database[Doc]) -> None:
        self._collection = MongoSuppressionRepository(db)
        super().__init__(self._collection)

    def initialize(self) -> None:
        self._collection.initialize()


__all__ = ["ListedSuppressions", "MongoDeliverySuppressions"]
