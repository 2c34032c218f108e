"""The dead-letter repository (collection ``dead_letters``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from bson.errors import InvalidDocument
from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import WriteError

from campaign_worker.adapters.mongo import (
    DEAD_LETTERS,
    translate_errors,
)
from campaign_worker.domain.aliases import Doc


class MongoDeadLetterRepository:
    """Task messages rejected as invalid (collection ``dead_letters``, ``_id`` = task id).

    Keyed by the task id, so a redelivered message that fails again is stored once.
    An operator lists them and replays one (republishing it under a new task id).
    """

    def __init__(self, db: Database[Doc]) -> None:
        self._collection: Collection[Doc] = db[DEAD_LETTERS]

    @translate_errors
    def initialize(self) -> None:
        self._collection.create_index([("created_at", ASCENDING)], name="created")
        self._collection.create_index(
            [("task_name", ASCENDING), ("created_at", ASCENDING)], name="task_created"
        )

    @translate_errors
    def add(
        self,
        task_id: str,
        task_name: str,
        args: Sequence[Any],
        kwargs: Doc,
        error: str,
        error_type: str,
        now: datetime,
        *,
        reason: str = "invalid_input",
        envelope: Doc | None = None,
        payload: bool = True,
    ) -> bool:
        """Store one rejected message; False if this task id is stored already.

        The payload is kept as a document (``payload.args``, ``payload.kwargs``); one that
        BSON cannot hold (``$`` keys, huge ints) is kept as JSON text in ``payload_json``.
        ``envelope``: the raw message (body, headers) of one refused before it became a
        task; ``payload=False`` when its arguments could not be read from it.
        """
        doc: Doc = {
            "task_id": task_id,
            "task_name": task_name,
            "error": error[:4000],
            "error_type": error_type,
            "reason": reason,
            "created_at": now,
            "replayed_at": None,
            "replayed_as": None,
        }
        if payload:
            doc["payload"] = {"args": list(args), "kwargs": dict(kwargs)}
        if envelope is not None:
            doc["envelope"] = envelope
        try:
            return self._insert(task_id, doc)
        except (InvalidDocument, WriteError, OverflowError):
            for key in ("payload", "envelope"):
                if key in doc:
                    doc[f"{key}_json"] = json.dumps(doc.pop(key), default=str)
            return self._insert(task_id, doc)

    def _insert(self, task_id: str, doc: Doc) -> bool:
        result = self._collection.update_one({"_id": task_id}, {"$setOnInsert": doc}, upsert=True)
        return result.upserted_id is not None

    @translate_errors
    def get(self, dead_letter_id: str) -> Doc | None:
        return self._collection.find_one({"_id": dead_letter_id})

    @translate_errors
    def recent(
        self, *, limit: int = 50, task_name: str | None = None, include_replayed: bool = False
    ) -> list[Doc]:
        """Newest first."""
        query: Doc = {}
        if task_name is not None:
            query["task_name"] = task_name
        if not include_replayed:
            query["replayed_at"] = None
        cursor = self._collection.find(query).sort("created_at", -1).limit(limit)
        return list(cursor)

    @translate_errors
    def count(self) -> int:
        return self._collection.count_documents({"replayed_at": None})

    @translate_errors
    def mark_replayed(self, dead_letter_id: str, new_task_id: str, now: datetime) -> bool:
        """Record the replay; False if it was replayed already (by someone else)."""
        result = self._collection.update_one(
            {"_id": dead_letter_id, "replayed_at": None},
            {"$set": {"replayed_at": now, "replayed_as": new_task_id}},
        )
        return result.modified_count == 1

    @translate_errors
    def unmark_replayed(self, dead_letter_id: str, new_task_id: str) -> None:
        """Undo ``mark_replayed`` when publishing the replay failed."""
        self._collection.update_one(
            {"_id": dead_letter_id, "replayed_as": new_task_id},
            {"$set": {"replayed_at": None, "replayed_as": None}},
        )


__all__ = ["MongoDeadLetterRepository"]
