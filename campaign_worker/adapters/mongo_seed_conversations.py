"""The seed's conversation repository methods (``create/get/update/delete/
find_conversation_states``) with its ``Dict`` signatures, for the seed's callers; the
flows use the typed methods of ``MongoConversationStateRepository``, which inherits these."""

from __future__ import annotations

from pymongo import ReturnDocument
from pymongo.collection import Collection

from campaign_worker.adapters.mongo import translate_errors
from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.errors import InvalidDocumentError


class SeedConversationMethods:
    _collection: Collection[Doc]

    # Not in the service port (the flows use the typed methods below); kept for the seed's
    # callers, with its Dict signatures.

    @translate_errors
    def create_conversation_state(self, data: Doc) -> Doc:
        """Insert one conversation; raises DuplicateKeyError if (campaign, user) exists."""
        self._collection.insert_one(data)
        return data

    @translate_errors
    def get_conversation_state(self, id: str) -> Doc | None:
        return self._collection.find_one({"_id": id})

    @translate_errors
    def update_conversation_state(self, id: str, updates: Doc) -> Doc | None:
        """Apply ``updates`` atomically and return the new document (None if absent).

        ``updates`` is either an update document ($set, $inc, ...) or plain fields, which
        are $set. Every update bumps ``version`` so in-flight compare-and-sets notice it.
        """
        if not updates:
            raise InvalidDocumentError("updates must not be empty")
        operators = all(key.startswith("$") for key in updates)
        if not operators and any(key.startswith("$") for key in updates):
            raise InvalidDocumentError("updates mix operators and plain fields")
        update = dict(updates) if operators else {"$set": dict(updates)}
        inc = dict(update.get("$inc", {}))
        inc["version"] = 1
        update["$inc"] = inc
        return self._collection.find_one_and_update(
            {"_id": id}, update, return_document=ReturnDocument.AFTER
        )

    @translate_errors
    def delete_conversation_state(self, id: str) -> bool:
        return self._collection.delete_one({"_id": id}).deleted_count == 1

    @translate_errors
    def find_conversation_states(
        self, query: Doc, *, limit: int = 0, sort: list[tuple[str, int]] | None = None
    ) -> list[Doc]:
        cursor = self._collection.find(query, limit=limit)
        if sort:
            cursor = cursor.sort(sort)
        return list(cursor)


__all__ = ["SeedConversationMethods"]
