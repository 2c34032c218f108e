"""The review queue over MongoDB (``service.review_ports.ReplyReviewRepository``): the
conversations holding a reply for review (``conversation_states``, by the indexed
``review_pending_since`` and ``reviews.message_id``), and the resolutions kept as
labelled examples (collection ``reply_labels``, ``_id`` = message id)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.database import Database

from campaign_worker.adapters.mongo import CONVERSATIONS, translate_errors
from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.documents import StoredState, read_state
from campaign_worker.domain.reviews import ReplyLabel

LABELS = "reply_labels"
PENDING_INDEX = "review_pending"


class MongoReplyReviewRepository:
    def __init__(self, db: Database[Doc]) -> None:
        self._conversations: Collection[Doc] = db[CONVERSATIONS]
        self._labels: Collection[Doc] = db[LABELS]

    @translate_errors
    def initialize(self) -> None:
        c = self._conversations
        # The queue, oldest first, of all campaigns or one (null for every conversation
        # that holds nothing: a range on dates skips them).
        c.create_index([("review_pending_since", ASCENDING)], name=PENDING_INDEX)
        c.create_index(
            [("campaign_id", ASCENDING), ("review_pending_since", ASCENDING)],
            name="campaign_review_pending",
        )
        # A resolution finds its conversation by the reply's id (multikey, reviews only).
        c.create_index([("reviews.message_id", ASCENDING)], name="review_message")
        self._labels.create_index([("resolved_at", ASCENDING)], name="resolved_at")

    @translate_errors
    def pending(self, campaign_id: str | None, limit: int) -> list[StoredState]:
        query: Doc = {"review_pending_since": {"$ne": None}}
        if campaign_id is not None:
            query["campaign_id"] = campaign_id
        found = self._conversations.find(query, limit=limit).sort(
            [("review_pending_since", ASCENDING), ("_id", ASCENDING)]
        )
        return [read_state(doc) for doc in found]

    @translate_errors
    def holding(self, message_id: str) -> StoredState | None:
        doc = self._conversations.find_one({"reviews.message_id": message_id})
        return None if doc is None else read_state(doc)

    @translate_errors
    def save_label(self, label: ReplyLabel) -> None:
        doc = label.model_dump(by_alias=True, mode="python")
        self._labels.replace_one({"_id": label.message_id}, doc, upsert=True)

    @translate_errors
    def labels(self, since: datetime | None) -> Iterator[ReplyLabel]:
        query: Doc = {} if since is None else {"resolved_at": {"$gte": since}}
        for doc in self._labels.find(query).sort([("resolved_at", ASCENDING), ("_id", ASCENDING)]):
            yield ReplyLabel.model_validate(doc)


__all__ = ["LABELS", "MongoReplyReviewRepository"]
