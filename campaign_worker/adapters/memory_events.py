"""Users' events and the enrollment's first read, in memory: the same results as
``mongo_events`` for the same calls (``tests/contract``)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import datetime

from campaign_worker.adapters.memory_store import MemoryDatabase
from campaign_worker.adapters.mongo import CAMPAIGNS, CONVERSATIONS
from campaign_worker.adapters.mongo_events import (
    EVENTS,
    context_of,
    event_doc,
    event_of,
)
from campaign_worker.adapters.mongo_suppressions import SUPPRESSIONS
from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.enrollment import EnrollmentContext, EventFact


class MemoryEventRepository:
    def __init__(self, db: MemoryDatabase) -> None:
        self._db = db
        self._docs = db.documents(EVENTS)

    def record(self, events: Sequence[EventFact]) -> set[str]:
        new: set[str] = set()
        with self._db.lock:
            for fact in events:
                if fact.event_id not in self._docs:
                    self._docs[fact.event_id] = event_doc(fact)
                    new.add(fact.event_id)
        return new

    def get_many(self, event_ids: Sequence[str]) -> dict[str, EventFact]:
        with self._db.lock:
            return {i: event_of(self._docs[i]) for i in set(event_ids) if i in self._docs}

    def recent_of_users(self, user_ids: Sequence[str], since: datetime) -> list[EventFact]:
        wanted = set(user_ids)
        with self._db.lock:
            found = [
                event_of(doc)
                for doc in self._docs.values()
                if doc["user_id"] in wanted and doc["timestamp"] >= since
            ]
        return sorted(found, key=lambda fact: fact.timestamp)


class MemoryEnrollmentReads:
    def __init__(self, db: MemoryDatabase) -> None:
        self._db = db

    def context(
        self, campaign_id: str, user_ids: Sequence[str], suppression_keys: Sequence[str]
    ) -> EnrollmentContext | None:
        users, keys = set(user_ids), set(suppression_keys)
        with self._db.lock:
            campaign = self._db.documents(CAMPAIGNS).get(campaign_id)
            if campaign is None:
                return None
            rows: list[Doc] = [
                {**{k: v for k, v in campaign.items() if k != "recipients"}, "_kind": "campaign"}
            ]
            suppressions = self._db.documents(SUPPRESSIONS)
            rows += [{**suppressions[key], "_kind": "s"} for key in keys if key in suppressions]
            rows += [
                {**doc, "_kind": "c"}
                for doc in self._db.documents(CONVERSATIONS).values()
                if doc.get("campaign_id") == campaign_id and doc.get("user_id") in users
            ]
            return context_of(copy.deepcopy(rows))


__all__ = ["MemoryEnrollmentReads", "MemoryEventRepository"]
