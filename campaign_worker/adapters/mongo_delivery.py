"""Delivery's MongoDB operations: outbox rows through dispatch (claims and leased moves,
each a conditional update), delivery events, the latest status on the history entry, and
the per-channel status counts of the campaign metrics document."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.database import Database

from campaign_worker.adapters.mongo import (
    CAMPAIGNS,
    CONVERSATIONS,
    METRICS,
    OUTBOX,
    translate_errors,
)
from campaign_worker.domain.aliases import Attributes, Doc
from campaign_worker.domain.delivery import (
    Attempt,
    DeliveryEvent,
    LatestStatus,
    OutboxRow,
    RowStatus,
)

# Status keys a metrics document remembers as counted; a retry of a status this recent
# (any retry: they follow within minutes) is not counted twice.
COUNTED_KEYS_KEPT = 2000


def _claimable(channels: Sequence[str], now: datetime) -> Doc:
    """Due pending rows of these channels, or sending rows whose lease expired."""
    return {
        "channel": {"$in": list(channels)},
        "$or": [
            {"status": RowStatus.PENDING.value, "next_attempt_at": None},
            {"status": RowStatus.PENDING.value, "next_attempt_at": {"$lte": now}},
            {"status": RowStatus.SENDING.value, "lease_until": {"$lt": now}},
        ],
    }


def _older_than(latest: LatestStatus, path: str) -> list[Doc]:
    """What ``latest`` replaces at ``path``: nothing yet, a lower rank, or the same rank
    at an earlier or equal time."""
    rank, at = latest.rank, latest.at
    return [
        {path: None},
        {f"{path}.rank": {"$lt": rank}},
        {f"{path}.rank": rank, f"{path}.at": {"$lte": at}},
    ]


class RowMoves:
    """A leased row's moves, as ``DeliveryRows`` names them, over ``finish``."""

    def finish(self, message_id: str, owner: str, status: RowStatus, fields: Doc) -> bool:
        raise NotImplementedError

    def requeue(
        self,
        message_id: str,
        owner: str,
        *,
        next_attempt_at: datetime | None = None,
        last_error: str | None = None,
    ) -> bool:
        fields: Doc = {}
        if next_attempt_at is not None:
            fields["next_attempt_at"] = next_attempt_at
        if last_error is not None:
            fields["last_error"] = last_error
        return self.finish(message_id, owner, RowStatus.PENDING, fields)

    def mark_sent(
        self, message_id: str, owner: str, sent_at: datetime, provider_id: str | None
    ) -> bool:
        fields = {"sent_at": sent_at, "provider_id": provider_id, "last_error": None}
        return self.finish(message_id, owner, RowStatus.SENT, fields)

    def mark_failed(
        self, message_id: str, owner: str, failed_at: datetime, reason: str, channel: str
    ) -> bool:
        fields = {"failed_at": failed_at, "last_error": reason, "delivered_via": channel}
        return self.finish(message_id, owner, RowStatus.FAILED, fields)


class MongoDeliveryRows(RowMoves):
    """Outbox rows as the dispatcher moves them (every move conditional on the lease)."""

    def __init__(self, db: Database[Doc]) -> None:
        self._outbox: Collection[Doc] = db[OUTBOX]
        self._conversations: Collection[Doc] = db[CONVERSATIONS]
        self._campaigns: Collection[Doc] = db[CAMPAIGNS]

    @translate_errors
    def initialize(self) -> None:
        self._outbox.create_index(
            [("channel", ASCENDING), ("status", ASCENDING), ("next_attempt_at", ASCENDING)],
            name="dispatch",
        )
        self._outbox.create_index(
            [("status", ASCENDING), ("lease_until", ASCENDING)],
            name="dispatch_lease",
            partialFilterExpression={"status": RowStatus.SENDING.value},
        )
        self._outbox.create_index([("lease_owner", ASCENDING)], name="lease_owner", sparse=True)

    @translate_errors
    def claim(
        self, channels: Sequence[str], now: datetime, limit: int, owner: str, until: datetime
    ) -> list[OutboxRow]:
        """Lease up to ``limit`` claimable rows to ``owner``; returns the rows it won."""
        query = _claimable(channels, now)
        ids = [doc["_id"] for doc in self._outbox.find(query, {"_id": 1}, limit=limit)]
        if not ids:
            return []
        # The filter is repeated: a concurrent dispatcher's claim in between wins those rows.
        self._outbox.update_many(
            {"_id": {"$in": ids}, **query},
            {
                "$set": {
                    "status": RowStatus.SENDING.value,
                    "lease_owner": owner,
                    "lease_until": until,
                }
            },
        )
        won = self._outbox.find({"lease_owner": owner, "status": RowStatus.SENDING.value})
        return [OutboxRow.model_validate(doc) for doc in won.sort("created_at", ASCENDING)]

    @translate_errors
    def start_attempt(self, message_id: str, owner: str, until: datetime, attempt: Attempt) -> bool:
        """Extend the lease and count an attempt, if the row is still this owner's."""
        fields = {
            "delivered_via": attempt.delivered_via,
            "address": attempt.address,
            "attempted_at": attempt.attempted_at,
            "attempted_by": attempt.attempted_by,
        }
        result = self._outbox.update_one(
            {"_id": message_id, "status": RowStatus.SENDING.value, "lease_owner": owner},
            {"$set": {"lease_until": until, **fields}, "$inc": {"attempts": 1}},
        )
        return result.matched_count == 1

    @translate_errors
    def finish(self, message_id: str, owner: str, status: RowStatus, fields: Doc) -> bool:
        """Move a leased row to ``status`` (sent, failed, or pending for a retry)."""
        result = self._outbox.update_one(
            {"_id": message_id, "status": RowStatus.SENDING.value, "lease_owner": owner},
            {
                "$set": {"status": status.value, **fields},
                "$unset": {"lease_owner": "", "lease_until": ""},
            },
        )
        return result.matched_count == 1

    @translate_errors
    def attributes_of(self, conversation_ids: Sequence[str]) -> dict[str, Attributes]:
        """Recipient attributes by conversation (for addresses such as an email)."""
        found = self._conversations.find(
            {"_id": {"$in": list(conversation_ids)}}, {"context.attributes": 1}
        )
        return {doc["_id"]: dict(doc.get("context", {}).get("attributes") or {}) for doc in found}

    @translate_errors
    def campaign_statuses(self, campaign_ids: Sequence[str]) -> dict[str, str]:
        found = self._campaigns.find({"_id": {"$in": list(campaign_ids)}}, {"status": 1})
        return {doc["_id"]: str(doc.get("status")) for doc in found}


class MongoDeliveryStatuses:
    """Delivery events per message, its latest status, and the counts per channel."""

    def __init__(self, db: Database[Doc]) -> None:
        self._outbox: Collection[Doc] = db[OUTBOX]
        self._conversations: Collection[Doc] = db[CONVERSATIONS]
        self._metrics: Collection[Doc] = db[METRICS]

    @translate_errors
    def row(self, message_id: str) -> OutboxRow | None:
        found = self._outbox.find_one({"_id": message_id}, {"content": 0})
        return None if found is None else OutboxRow.model_validate(found)

    @translate_errors
    def add_event(self, message_id: str, event: DeliveryEvent) -> bool:
        """Record the event's status for the message once; False if recorded before."""
        result = self._outbox.update_one(
            {"_id": message_id, "events.status": {"$ne": event.status}},
            {"$push": {"events": event.model_dump(mode="python")}},
        )
        return result.modified_count == 1

    @translate_errors
    def set_latest(
        self,
        message_id: str,
        conversation_id: str,
        latest: LatestStatus,
    ) -> None:
        """The latest status ({status, rank, at, detail}: higher rank, then later time
        wins), on the row and on the history entry."""
        stored = latest.model_dump(mode="python")
        self._outbox.update_one(
            {"_id": message_id, "$or": _older_than(latest, "delivery")},
            {"$set": {"delivery": stored}},
        )
        # The entry's metadata only: conversation writes append to the history and never
        # rewrite an entry, so this commutes with their compare-and-set.
        entry = {"message_id": message_id, "$or": _older_than(latest, "metadata.delivery")}
        self._conversations.update_one(
            {"_id": conversation_id, "message_history": {"$elemMatch": entry}},
            {"$set": {"message_history.$.metadata.delivery": stored}},
        )

    @translate_errors
    def count(self, campaign_id: str, channel: str, status: str, key: str) -> bool:
        """Count one message in ``delivery.<channel>.<status>`` of the campaign's metrics,
        once per ``key`` (the key and the increment are one atomic update)."""
        result = self._metrics.update_one(
            {"_id": campaign_id, "delivery_counted": {"$ne": key}},
            {
                "$inc": {f"delivery.{channel}.{status}": 1},
                "$push": {"delivery_counted": {"$each": [key], "$slice": -COUNTED_KEYS_KEPT}},
            },
        )
        return result.modified_count == 1


__all__ = ["COUNTED_KEYS_KEPT", "MongoDeliveryRows", "MongoDeliveryStatuses", "RowMoves"]
