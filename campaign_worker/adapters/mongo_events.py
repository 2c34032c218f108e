"""Users' events (collection ``events``, ``_id`` = event id) and the enrollment's first
read: the campaign, the suppression entries and the people's conversations in it, in one
aggregation (``$unionWith``), so enrolling a thousand people costs a handful of round trips
(bench/round_trips.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from campaign_worker.adapters.mongo import (
    CAMPAIGNS,
    CONVERSATIONS,
    ignore_duplicates,
    translate_errors,
)
from campaign_worker.adapters.mongo_suppressions import SUPPRESSIONS
from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.campaign_documents import StoredCampaign
from campaign_worker.domain.documents import to_utc
from campaign_worker.domain.enrollment import EnrollmentContext, EventFact, PriorEntry
from campaign_worker.domain.suppressions import Suppression

EVENTS = "events"
_PRIOR_FIELDS = ("user_id", "enrollment", "status", "created_at", "enrolled_by")


def event_doc(fact: EventFact) -> Doc:
    return {
        "_id": fact.event_id,
        "user_id": fact.user_id,
        "event": fact.event,
        "properties": dict(fact.properties),
        "timestamp": fact.timestamp,
        "received_at": fact.received_at,
    }


def event_of(doc: Mapping[str, Any]) -> EventFact:
    return EventFact(
        event_id=str(doc["_id"]),
        user_id=str(doc.get("user_id")),
        event=str(doc.get("event")),
        timestamp=to_utc(doc["timestamp"]),
        received_at=to_utc(doc["received_at"]),
        properties=dict(doc.get("properties") or {}),
    )


def prior_of(doc: Mapping[str, Any]) -> PriorEntry:
    enrollment = doc.get("enrollment")
    return PriorEntry(
        user_id=str(doc.get("user_id")),
        enrollment=enrollment if isinstance(enrollment, int) else 0,
        active=doc.get("status") == "active",
        created_at=to_utc(doc["created_at"]),
        enrolled_by=doc.get("enrolled_by"),
    )


class MongoEventRepository:
    def __init__(self, db: Database[Doc]) -> None:
        self._collection: Collection[Doc] = db[EVENTS]

    @translate_errors
    def initialize(self) -> None:
        # A user's recent events (applied to a conversation created after them).
        self._collection.create_index(
            [("user_id", ASCENDING), ("timestamp", ASCENDING)], name="user_time"
        )

    @translate_errors
    def record(self, events: Sequence[EventFact]) -> set[str]:
        """One unordered insert; an event id stored already is a duplicate."""
        if not events:
            return set()
        ids = [fact.event_id for fact in events]
        try:
            self._collection.insert_many([event_doc(f) for f in events], ordered=False)
        except BulkWriteError as exc:
            ignore_duplicates(exc)
            refused = {error["index"] for error in exc.details.get("writeErrors", [])}
            return {event_id for index, event_id in enumerate(ids) if index not in refused}
        return set(ids)

    @translate_errors
    def get_many(self, event_ids: Sequence[str]) -> dict[str, EventFact]:
        if not event_ids:
            return {}
        wanted = sorted(set(event_ids))
        found = self._collection.find({"_id": {"$in": wanted}}, batch_size=len(wanted) + 1)
        return {str(doc["_id"]): event_of(doc) for doc in found}

    @translate_errors
    def recent_of_users(self, user_ids: Sequence[str], since: datetime) -> list[EventFact]:
        if not user_ids:
            return []
        query = {"user_id": {"$in": sorted(set(user_ids))}, "timestamp": {"$gte": since}}
        found = self._collection.find(query, batch_size=1000).sort("timestamp", ASCENDING)
        return [event_of(doc) for doc in found]


class MongoEnrollmentReads:
    def __init__(self, db: Database[Doc]) -> None:
        self._campaigns: Collection[Doc] = db[CAMPAIGNS]

    @translate_errors
    def context(
        self, campaign_id: str, user_ids: Sequence[str], suppression_keys: Sequence[str]
    ) -> EnrollmentContext | None:
        users, keys = sorted(set(user_ids)), sorted(set(suppression_keys))
        pipeline: list[Doc] = [
            {"$match": {"_id": campaign_id}},
            {"$project": {"recipients": 0}},
            {"$set": {"_kind": "campaign"}},
            {
                "$unionWith": {
                    "coll": SUPPRESSIONS,
                    "pipeline": [{"$match": {"_id": {"$in": keys}}}, {"$set": {"_kind": "s"}}],
                }
            },
            {
                "$unionWith": {
                    "coll": CONVERSATIONS,
                    "pipeline": [
                        {"$match": {"campaign_id": campaign_id, "user_id": {"$in": users}}},
                        {"$project": {name: 1 for name in _PRIOR_FIELDS}},
                        {"$set": {"_kind": "c"}},
                    ],
                }
            },
        ]
        # All of it in the first reply: one round trip, no getMore.
        rows = list(self._campaigns.aggregate(pipeline, batchSize=2 * len(users) + len(keys) + 2))
        return context_of(rows)


def context_of(rows: Sequence[Mapping[str, Any]]) -> EnrollmentContext | None:
    """The context from the union's rows (each tagged with ``_kind``)."""
    campaign = next((row for row in rows if row.get("_kind") == "campaign"), None)
    if campaign is None:
        return None
    suppressions = {str(row["_id"]): Suppression.of(row) for row in rows if row.get("_kind") == "s"}
    prior = [prior_of(row) for row in rows if row.get("_kind") == "c"]
    stored = StoredCampaign.model_validate({k: v for k, v in campaign.items() if k != "_kind"})
    return EnrollmentContext(stored, suppressions, prior)


__all__ = [
    "EVENTS",
    "MongoEnrollmentReads",
    "MongoEventRepository",
    "context_of",
    "event_doc",
    "event_of",
    "prior_of",
]
