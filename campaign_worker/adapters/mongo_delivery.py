"""Delivery's MongoDB operations: outbox rows through dispatch (claims and leased moves,
each a conditional update), delivery events, the latest status on the history entry, and
the per-channel status counts of the campaign metrics document."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import datetime

from pymongo import ASCENDING, UpdateOne
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
    RowMove,
    RowStatus,
    StatusCount,
    StatusWrite,
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


def _still_claimable(channels: Sequence[str], now: datetime) -> Doc:
    """``_claimable`` without ``$or`` (which secantusdb evaluates on every document of the
    collection): the same rows, as pending rows have no lease and sending rows were due
    when claimed (``next_attempt_at`` unset or past)."""
    return {
        "channel": {"$in": list(channels)},
        "status": {"$in": [RowStatus.PENDING.value, RowStatus.SENDING.value]},
        "next_attempt_at": {"$not": {"$gt": now}},
        "lease_until": {"$not": {"$gte": now}},
    }


def _latest_ops(message_id: str, latest: LatestStatus, stored: Doc) -> list[UpdateOne]:
    """``_older_than`` on the row as two updates by id, neither with ``$or`` (a collection
    scan on secantusdb): none yet or a lower rank; the same rank at an earlier time."""
    put = {"$set": {"delivery": stored}}
    return [
        # No status yet (no field, or null: no rank) or a lower rank.
        UpdateOne({"_id": message_id, "delivery.rank": {"$not": {"$gte": latest.rank}}}, put),
        UpdateOne(
            {"_id": message_id, "delivery.rank": latest.rank, "delivery.at": {"$lte": latest.at}},
            put,
        ),
    ]


def _older_than(latest: LatestStatus, path: str) -> list[Doc]:
    """What ``latest`` replaces at ``path``: nothing yet, a lower rank, or the same rank
    at an earlier or equal time."""
    rank, at = latest.rank, latest.at
    return [
        {path: None},
        {f"{path}.rank": {"$lt": rank}},
        {f"{path}.rank": rank, f"{path}.at": {"$lte": at}},
    ]


def move_update(move: RowMove, moved_by: str) -> Doc:
    """The update that moves a leased row as ``move`` says (``moved_by``: the owner and
    the write, so the rows one write moved can be read back)."""
    fields: Doc = {"status": move.status.value, "moved_by": moved_by}
    if move.status == RowStatus.SENT:
        fields |= {"sent_at": move.at, "provider_id": move.provider_id, "last_error": None}
    elif move.status == RowStatus.FAILED:
        fields |= {"failed_at": move.at, "last_error": move.reason, "delivered_via": move.channel}
    else:
        if move.next_attempt_at is not None:
            fields["next_attempt_at"] = move.next_attempt_at
        if move.reason is not None:
            fields["last_error"] = move.reason
    update: Doc = {"$set": fields, "$unset": {"lease_owner": "", "lease_until": ""}}
    if move.uncount_attempt:
        update["$inc"] = {"attempts": -1}
    return update


def attempt_update(attempt: Attempt, until: datetime) -> Doc:
    """Extend the lease and count the attempt (who sent it, where, when)."""
    fields = {
        "lease_until": until,
        "delivered_via": attempt.delivered_via,
        "address": attempt.address,
        "attempted_at": attempt.attempted_at,
        "attempted_by": attempt.attempted_by,
    }
    return {"$set": fields, "$inc": {"attempts": 1}}


def _leased_by(owner: str) -> Doc:
    return {"status": RowStatus.SENDING.value, "lease_owner": owner}


class MongoDeliveryRows:
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
        found = self._outbox.find(query, {"_id": 1}, limit=limit, batch_size=limit or 101)
        ids = [doc["_id"] for doc in found]
        if not ids:
            return []
        # The filter is repeated: a concurrent dispatcher's claim in between wins those rows.
        self._outbox.update_many(
            {"_id": {"$in": ids}, **_still_claimable(channels, now)},
            {
                "$set": {
                    "status": RowStatus.SENDING.value,
                    "lease_owner": owner,
                    "lease_until": until,
                }
            },
        )
        won = self._outbox.find(
            {"lease_owner": owner, "status": RowStatus.SENDING.value},
            limit=len(ids),  # what this claim won, in one reply
            batch_size=len(ids),
        )
        return [OutboxRow.model_validate(doc) for doc in won.sort("created_at", ASCENDING)]

    @translate_errors
    def start_attempts(
        self, owner: str, until: datetime, attempts: Sequence[tuple[str, Attempt]]
    ) -> set[str]:
        """Extend the lease and count an attempt on each row still ``owner``'s."""
        if not attempts:
            return set()
        ops = [
            UpdateOne({"_id": message_id, **_leased_by(owner)}, attempt_update(attempt, until))
            for message_id, attempt in attempts
        ]
        ids = [message_id for message_id, _ in attempts]
        if self._outbox.bulk_write(ops, ordered=False).matched_count == len(ids):
            return set(ids)
        # Some lease was lost (rare): the rows still leased to owner are those it attempted.
        found = self._outbox.find({"_id": {"$in": ids}, **_leased_by(owner)}, {"_id": 1})
        return {doc["_id"] for doc in found}

    @translate_errors
    def finish_many(self, owner: str, moves: Sequence[RowMove]) -> set[str]:
        """Move each row still ``owner``'s (sent, failed, or pending for a retry)."""
        if not moves:
            return set()
        moved_by = f"{owner}/{uuid.uuid4().hex[:8]}"
        ops = [
            UpdateOne({"_id": move.message_id, **_leased_by(owner)}, move_update(move, moved_by))
            for move in moves
        ]
        ids = [move.message_id for move in moves]
        if self._outbox.bulk_write(ops, ordered=False).matched_count == len(ids):
            return set(ids)
        # Some lease was lost (rare): the rows this write moved say so.
        found = self._outbox.find({"_id": {"$in": ids}, "moved_by": moved_by}, {"_id": 1})
        return {doc["_id"] for doc in found}

    @translate_errors
    def attributes_of(self, conversation_ids: Sequence[str]) -> dict[str, Attributes]:
        """Recipient attributes by conversation (for addresses such as an email)."""
        found = self._conversations.find(
            {"_id": {"$in": list(conversation_ids)}},
            {"context.attributes": 1},
            batch_size=max(len(conversation_ids), 1),
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

    @translate_errors
    def count_many(self, campaign_id: str, counts: Sequence[StatusCount]) -> set[str]:
        """``count`` for many messages of a campaign: one update when none of their keys
        was counted before, else one per key."""
        if not counts:
            return set()
        keys = [c.key for c in counts]
        increments = Counter(f"delivery.{c.channel}.{c.status}" for c in counts)
        result = self._metrics.update_one(
            {"_id": campaign_id, "delivery_counted": {"$nin": keys}},
            {
                "$inc": dict(increments),
                "$push": {"delivery_counted": {"$each": keys, "$slice": -COUNTED_KEYS_KEPT}},
            },
        )
        if result.modified_count == 1:
            return set(keys)
        return {c.key for c in counts if self.count(campaign_id, c.channel, c.status, c.key)}

    @translate_errors
    def record_many(self, writes: Sequence[StatusWrite]) -> None:
        """Events and latest statuses of many messages: one write on the outbox (event,
        then latest, per message), one on the conversations."""
        if not writes:
            return
        rows: list[UpdateOne] = []
        entries: list[UpdateOne] = []
        for write in writes:
            stored = write.latest.model_dump(mode="python")
            rows.append(
                UpdateOne(
                    {"_id": write.message_id, "events.status": {"$ne": write.event.status}},
                    {"$push": {"events": write.event.model_dump(mode="python")}},
                )
            )
            rows += _latest_ops(write.message_id, write.latest, stored)
            entry = {
                "message_id": write.message_id,
                "$or": _older_than(write.latest, "metadata.delivery"),
            }
            entries.append(
                UpdateOne(
                    {"_id": write.conversation_id, "message_history": {"$elemMatch": entry}},
                    {"$set": {"message_history.$.metadata.delivery": stored}},
                )
            )
        self._outbox.bulk_write(rows, ordered=True)
        self._conversations.bulk_write(entries, ordered=False)


__all__ = [
    "COUNTED_KEYS_KEPT",
    "MongoDeliveryRows",
    "MongoDeliveryStatuses",
    "attempt_update",
    "move_update",
]
