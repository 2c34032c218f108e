"""The invariant checker's reads (``service/invariants.py``): conversations streamed with
a projection (no message contents), conversations of a batch of recipients, and the outbox
rows of a batch of conversations. Each read is served by an existing index."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

from pymongo.collection import Collection
from pymongo.cursor import Cursor
from pymongo.database import Database

from campaign_worker.adapters.mongo import CONVERSATIONS, OUTBOX, translate_errors
from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.audited import AuditedConversation, AuditedRow

# What the checks read of a conversation: never message contents, metadata or attributes.
CONVERSATION_FIELDS: Doc = {
    "user_id": 1,
    "status": 1,
    "current_stage": 1,
    "stages": 1,
    "message_history.message_id": 1,
    "message_history.direction": 1,
    "message_history.metadata.stage": 1,
    "message_history.metadata.step": 1,
    "message_history.metadata.entry": 1,
    "message_history.metadata.withheld": 1,
    "metrics": 1,
    "unpublished": 1,
    "publish_due_at": 1,
    "next_action_at": 1,
    "lease_owner": 1,
    "lease_until": 1,
    "enrollment": 1,
    "enrolled_by": 1,
    "conversion.event": 1,
    "conversion.event_id": 1,
}
OUTBOX_FIELDS: Doc = {
    "conversation_id": 1,
    "campaign_id": 1,
    "status": 1,
    "stage": 1,
    "step": 1,
    "events.status": 1,
    "lease_owner": 1,
    "lease_until": 1,
}


# Values per ``$in``: MongoDB takes thousands, but secantusdb (the wire stand-in) slows
# down more than linearly with the list (1,000 ids: 10x the time of 20 lists of 50).
IN_CHUNK = 50


def _chunks(values: Sequence[str]) -> list[list[str]]:
    items = list(dict.fromkeys(values))
    return [items[i : i + IN_CHUNK] for i in range(0, len(items), IN_CHUNK)]


@translate_errors
def _next_batch(cursor: Cursor[Doc], size: int) -> list[Doc]:
    """The next ``size`` documents (connectivity errors as ``TransientError`` here too,
    not only when the cursor is opened)."""
    return list(itertools.islice(cursor, size))


class MongoInvariantReads:
    def __init__(self, db: Database[Doc]) -> None:
        self._conversations: Collection[Doc] = db[CONVERSATIONS]
        self._outbox: Collection[Doc] = db[OUTBOX]

    def conversations(
        self, campaign_id: str, batch_size: int
    ) -> Iterator[list[AuditedConversation]]:
        """One cursor over the campaign (``campaign_id`` index), in batches; unsorted, so
        the server never sorts millions of documents."""
        cursor = self._conversations.find(
            {"campaign_id": campaign_id}, CONVERSATION_FIELDS, batch_size=batch_size
        )
        try:
            while batch := _next_batch(cursor, batch_size):
                yield [AuditedConversation.of(doc) for doc in batch]
        finally:
            cursor.close()

    @translate_errors
    def conversations_by_id(self, ids: Sequence[str]) -> list[AuditedConversation]:
        return [
            AuditedConversation.of(doc)
            for chunk in _chunks(ids)
            for doc in self._conversations.find({"_id": {"$in": chunk}}, CONVERSATION_FIELDS)
        ]

    @translate_errors
    def conversations_of_users(
        self, campaign_id: str, user_ids: Sequence[str]
    ) -> list[tuple[str, str]]:
        """Served by the (campaign_id, user_id) index; every match, duplicates included."""
        found = []
        for chunk in _chunks(user_ids):
            query = {"campaign_id": campaign_id, "user_id": {"$in": chunk}}
            found += [
                (str(doc["_id"]), str(doc.get("user_id")))
                for doc in self._conversations.find(query, {"user_id": 1})
            ]
        return found

    @translate_errors
    def outbox_rows(self, conversation_ids: Sequence[str]) -> list[AuditedRow]:
        """Served by the outbox's ``conversation`` index."""
        return [
            AuditedRow.of(row)
            for chunk in _chunks(conversation_ids)
            for row in self._outbox.find({"conversation_id": {"$in": chunk}}, OUTBOX_FIELDS)
        ]

    @translate_errors
    def count_outbox(self, campaign_id: str) -> int:
        return self._outbox.count_documents({"campaign_id": campaign_id})


__all__ = ["CONVERSATION_FIELDS", "OUTBOX_FIELDS", "MongoInvariantReads"]
