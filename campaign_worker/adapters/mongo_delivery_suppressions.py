"""Suppressed addresses from delivery (hard bounces, complaints), in the ``suppressions``
collection that opt-outs share: one document per user id, channel and address."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from campaign_worker.adapters.mongo import translate_errors

Doc = dict[str, Any]
SUPPRESSIONS = "suppressions"


class MongoDeliverySuppressions:
    """Addresses no channel sends to any more."""

    def __init__(self, db: Database[Doc]) -> None:
        self._collection: Collection[Doc] = db[SUPPRESSIONS]

    @translate_errors
    def initialize(self) -> None:
        self._collection.create_index(
            [("user_id", ASCENDING), ("channel", ASCENDING), ("address", ASCENDING)],
            name="user_channel_address",
            unique=True,
        )
        self._collection.create_index(
            [("channel", ASCENDING), ("address", ASCENDING)], name="channel_address"
        )

    @translate_errors
    def suppress(
        self, user_id: str, channel: str, address: str, reason: str, source: Doc, now: datetime
    ) -> None:
        """Idempotent: the first reason is kept."""
        # DuplicateKeyError: a concurrent upsert inserted it; suppressed either way.
        with contextlib.suppress(DuplicateKeyError):
            self._collection.update_one(
                {"user_id": user_id, "channel": channel, "address": address},
                {"$setOnInsert": {"reason": reason, "source": source, "created_at": now}},
                upsert=True,
            )

    @translate_errors
    def is_suppressed(self, channel: str, address: str) -> bool:
        return self._collection.find_one({"channel": channel, "address": address}) is not None


__all__ = ["SUPPRESSIONS", "MongoDeliverySuppressions"]
