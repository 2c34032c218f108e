"""The review queue in memory (``service.review_ports.ReplyReviewRepository``): the same
answers as ``mongo_reviews`` for the same calls (``tests/contract``)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import datetime

from campaign_worker.adapters.memory_store import MemoryDatabase
from campaign_worker.adapters.mongo import CONVERSATIONS
from campaign_worker.adapters.mongo_reviews import LABELS
from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.documents import StoredState, read_state, to_utc
from campaign_worker.domain.reviews import ReplyLabel


def _held(doc: Doc, campaign_id: str | None) -> bool:
    if doc.get("review_pending_since") is None:
        return False
    return campaign_id is None or doc.get("campaign_id") == campaign_id


class MemoryReplyReviewRepository:
    def __init__(self, db: MemoryDatabase) -> None:
        self._db = db
        self._conversations = db.documents(CONVERSATIONS)
        self._labels = db.documents(LABELS)

    def pending(self, campaign_id: str | None, limit: int) -> list[StoredState]:
        with self._db.lock:
            found = [d for d in self._conversations.values() if _held(d, campaign_id)]
            found.sort(key=lambda doc: (to_utc(doc["review_pending_since"]), doc["_id"]))
            return [read_state(copy.deepcopy(doc)) for doc in found[:limit]]

    def holding(self, message_id: str) -> StoredState | None:
        with self._db.lock:
            for doc in self._conversations.values():
                reviews = doc.get("reviews") or []
                if any(r.get("message_id") == message_id for r in reviews):
                    return read_state(copy.deepcopy(doc))
        return None

    def save_label(self, label: ReplyLabel) -> None:
        with self._db.lock:
            self._labels[label.message_id] = label.model_dump(by_alias=True, mode="python")

    def labels(self, since: datetime | None) -> Iterator[ReplyLabel]:
        with self._db.lock:
            docs = [copy.deepcopy(d) for d in self._labels.values()]
        docs.sort(key=lambda doc: (to_utc(doc["resolved_at"]), doc["_id"]))
        for doc in docs:
            label = ReplyLabel.model_validate(doc)
            if since is None or label.resolved_at >= to_utc(since):
                yield label


__all__ = ["MemoryReplyReviewRepository"]
