"""The outbox repository (collection ``outbox``, ``_id`` = message_id)."""

from __future__ import annotations

from collections.abc import Sequence

from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from campaign_worker.adapters.mongo import (
    OUTBOX,
    durable,
    ignore_duplicates,
    translate_errors,
)
from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.effects import OutboundEnvelope


class MongoOutboxRepository:
    """Messages for the delivering service (collection ``outbox``, ``_id`` = message_id)."""

    def __init__(self, db: Database[Doc]) -> None:
        self._collection: Collection[Doc] = db[OUTBOX]
        # Publication is acknowledged only once durable: the caller then clears the
        # conversation's mark, and a row the server forgot after a crash would be a message
        # recorded but never delivered (tests/integration/test_faults_wire.py).
        self._publish: Collection[Doc] = durable(self._collection)

    @translate_errors
    def initialize(self) -> None:
        self._collection.create_index(
            [("status", ASCENDING), ("created_at", ASCENDING)], name="status_created"
        )
        self._collection.create_index([("conversation_id", ASCENDING)], name="conversation")

    @translate_errors
    def enqueue_many(self, envelopes: Sequence[OutboundEnvelope]) -> int:
        """Publish recorded messages; a message_id already there is skipped (idempotent).
        Returns once the rows are durable (``DURABLE``), duplicates included: a duplicate
        was itself published by this method."""
        docs = [envelope.outbox_row() for envelope in envelopes]
        if not docs:
            return 0
        try:
            return len(self._publish.insert_many(docs, ordered=False).inserted_ids)
        except BulkWriteError as exc:
            return ignore_duplicates(exc)  # published before (a replay or the sweep)


__all__ = ["MongoOutboxRepository"]
