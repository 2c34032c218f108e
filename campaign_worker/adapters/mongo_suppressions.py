"""The suppression list (collection ``suppressions``), shared by every campaign and by the
delivering service.

Document: ``{_id, user_id, channel, address, reason, source, campaign_id, created_at}``.
``_id`` is what the entry matches: ``user:<user id>`` (every channel) or
``address:<channel>:<address, lower case>``. The delivering service adds bounces and
complaints the same way (``source: "bounce"``/``"complaint"``), with an upsert on ``_id``;
the worker checks the list at initialization and before every send with one
``{_id: {$in: keys}}`` query.
"""

from __future__ import annotations

from collections.abc import Sequence

from pymongo import ASCENDING, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database

from campaign_worker.adapters.mongo import translate_errors
from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.suppressions import Suppression

SUPPRESSIONS = "suppressions"


class MongoSuppressionRepository:
    def __init__(self, db: Database[Doc]) -> None:
        self._collection: Collection[Doc] = db[SUPPRESSIONS]

    @translate_errors
    def initialize(self) -> None:
        self._collection.create_index([("user_id", ASCENDING)], name="user")
        self._collection.create_index(
            [("channel", ASCENDING), ("created_at", ASCENDING)], name="channel_created"
        )

    @translate_errors
    def add_many(self, entries: Sequence[Suppression]) -> int:
        """Add entries; one already listed keeps its first reason and time. Returns how
        many are new."""
        if not entries:
            return 0
        result = self._collection.bulk_write(
            [
                UpdateOne({"_id": entry.key}, {"$setOnInsert": entry.as_doc()}, upsert=True)
                for entry in entries
            ],
            ordered=False,
        )
        return int(result.upserted_count)

    @translate_errors
    def matching(self, keys: Sequence[str]) -> dict[str, Suppression]:
        """The entries among ``keys`` (suppression ids), by id."""
        if not keys:
            return {}
        found = self._collection.find({"_id": {"$in": list(keys)}})
        return {str(doc["_id"]): Suppression.of(doc) for doc in found}

    @translate_errors
    def list(
        self, *, user_id: str | None = None, channel: str | None = None, limit: int = 100
    ) -> list[Suppression]:
        query: Doc = {}
        if user_id is not None:
            query["user_id"] = user_id
        if channel is not None:
            query["channel"] = channel
        found = self._collection.find(query, limit=limit).sort("created_at", ASCENDING)
        return [Suppression.of(doc) for doc in found]

    @translate_errors
    def lift(self, key: str) -> Suppression | None:
        """Remove one entry; returns it, or None if it was not listed."""
        found = self._collection.find_one_and_delete({"_id": key})
        return None if found is None else Suppression.of(found)


__all__ = ["SUPPRESSIONS", "MongoSuppressionRepository"]
