"""An audience collection (``recipients`` by default): imported rows, written in batches.

Each row is a ``Recipient`` plus its ``import_id``; a campaign selects its own with
``{"collection": ..., "query": {"import_id": ...}}`` and initialization streams them in
``_id`` order, which the ``import_id`` index serves.
"""

from __future__ import annotations

from collections.abc import Sequence

from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from campaign_worker.adapters.mongo import DUPLICATE_KEY, translate_errors
from campaign_worker.domain.aliases import Doc


class MongoRecipientStore:
    def __init__(self, db: Database[Doc], collection: str = "recipients") -> None:
        self._collection: Collection[Doc] = db[collection]

    @translate_errors
    def initialize(self) -> None:
        self._collection.create_index(
            [("import_id", ASCENDING), ("_id", ASCENDING)], name="import_id"
        )

    @translate_errors
    def insert_batch(self, docs: Sequence[Doc]) -> int:
        """Insert; rows already there (same ``_id``: a re-run import) are skipped.
        Returns how many were new."""
        if not docs:
            return 0
        try:
            return len(self._collection.insert_many(list(docs), ordered=False).inserted_ids)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(error.get("code") != DUPLICATE_KEY for error in errors):
                raise
            return int(exc.details.get("nInserted", 0))
