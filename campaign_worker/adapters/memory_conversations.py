"""The conversation repository in memory (``service.ports.ConversationStateRepository``).

Same results as ``mongo_conversations`` for the same calls (``tests/contract``): the
compare-and-set on ``version`` with the same update (``mongo_updates.state_update``,
applied here), duplicates refused by ``_id`` and by (campaign, user), due order and
limits, partition ranges, unreadable documents returned as ``Unreadable``.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import bson
from bson.errors import InvalidDocument

from campaign_worker.adapters.memory_recount import recount_documents
from campaign_worker.adapters.memory_store import MemoryDatabase, apply_update
from campaign_worker.adapters.mongo import CONVERSATIONS
from campaign_worker.adapters.mongo_updates import state_update
from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.documents import ConversationState, StoredState, read_state
from campaign_worker.domain.partitions import PartitionRange
from campaign_worker.service.ports import WriteOutcome

WHOLE = PartitionRange()
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024  # MongoDB's BSON document limit


def sort_key(value: Any) -> tuple[int, Any]:
    """MongoDB's ascending order for one type of values: null and missing first."""
    return (0, 0) if value is None else (1, value)


def _in_range(doc: Mapping[str, Any], span: PartitionRange) -> bool:
    if span.whole:
        return True
    bucket = doc.get("partition")
    if span.low == 0 and bucket is None:
        return True  # created before partitions: the first range takes it
    return bucket is not None and span.low <= bucket < span.high


def _due(doc: Mapping[str, Any], campaign_id: str, now: datetime, settling: bool) -> bool:
    if doc.get("campaign_id") != campaign_id or doc.get("status") != "active":
        return False
    due = doc.get("next_action_at")
    return settling or (due is not None and due <= now)


class MemoryConversationStateRepository:
    def __init__(self, db: MemoryDatabase) -> None:
        self._db = db
        self._docs = db.documents(CONVERSATIONS)

    def _select(
        self,
        keep: Callable[[Doc], bool],
        key: Callable[[Doc], Any] | None = None,
        limit: int = 0,
        reverse: bool = False,
    ) -> list[StoredState]:
        with self._db.lock:
            found = [doc for doc in self._docs.values() if keep(doc)]
            if key is not None:
                found.sort(key=key, reverse=reverse)
            if limit:
                found = found[:limit]
            return [read_state(copy.deepcopy(doc)) for doc in found]

    def get_state(self, conversation_id: str) -> StoredState | None:
        found = self._select(lambda doc: doc["_id"] == conversation_id)
        return found[0] if found else None

    def insert_states(self, states: Sequence[ConversationState]) -> int:
        return len(self.insert_new(states))

    def insert_new(self, states: Sequence[ConversationState]) -> set[str]:
        inserted: set[str] = set()
        with self._db.lock:
            entries = {
                (d.get("campaign_id"), d.get("user_id"), d.get("enrollment"))
                for d in self._docs.values()
            }
            for state in states:
                entry = (state.campaign_id, state.user_id, state.enrollment)
                if state.id in self._docs or entry in entries:
                    continue  # already initialized (the unique indexes refuse it)
                self._docs[state.id] = state.to_mongo()
                entries.add(entry)
                inserted.add(state.id)
        return inserted

    def find_listening(self, user_ids: Sequence[str], since: datetime) -> list[StoredState]:
        wanted = set(user_ids)

        def keep(doc: Doc) -> bool:
            goal_until = doc.get("goal_until")
            open_goal = goal_until is not None and goal_until >= since
            return doc.get("user_id") in wanted and (doc.get("status") == "active" or open_goal)

        return self._select(keep)

    def find_due(
        self, campaign_id: str, now: datetime, *, stage: str | None, status: str, limit: int
    ) -> list[StoredState]:
        def keep(doc: Doc) -> bool:
            if stage is not None and doc.get("current_stage") != stage:
                return False
            if status != "active":
                return doc.get("campaign_id") == campaign_id and doc.get("status") == status
            return _due(doc, campaign_id, now, settling=False)

        if status != "active":
            by_finish = lambda doc: sort_key(doc.get("finished_at"))  # noqa: E731
            return self._select(keep, by_finish, limit, reverse=True)
        return self._select(keep, lambda doc: sort_key(doc.get("next_action_at")), limit)

    def read_due(
        self,
        campaign_id: str,
        now: datetime,
        *,
        stage: str | None = None,
        limit: int,
        span: PartitionRange = WHOLE,
        settling: bool = False,
    ) -> list[StoredState]:
        def keep(doc: Doc) -> bool:
            if not settling and stage is not None and doc.get("current_stage") != stage:
                return False
            return _due(doc, campaign_id, now, settling) and _in_range(doc, span)

        return self._select(keep, lambda doc: sort_key(doc.get("next_action_at")), limit)

    def write_transitions(
        self,
        changes: Sequence[tuple[ConversationState, ConversationState]],
        now: datetime | None = None,
    ) -> WriteOutcome:
        outcome = WriteOutcome()
        batch = uuid.uuid4().hex
        updates = [
            (old, state_update(old, new, f"{batch}:{index}", now), f"{batch}:{index}")
            for index, (old, new) in enumerate(changes)
        ]
        with self._db.lock:
            for old, update, token in updates:
                stored = self._docs.get(old.id)
                if stored is None or stored.get("version") != old.version:
                    continue  # lost to another writer
                written = copy.deepcopy(stored)
                apply_update(written, update)
                refused = _unstorable(written)
                if refused is not None:
                    outcome.failed[old.id] = refused
                    continue
                self._docs[old.id] = written
                outcome.applied[old.id] = token
        return outcome

    def fail_conversation(self, conversation_id: str, reason: str, now: datetime) -> bool:
        with self._db.lock:
            doc = self._docs.get(conversation_id)
            if doc is None or doc.get("status") != "active":
                return False
            failed: Doc = {
                "status": "failed",
                "status_reason": reason[:500],
                "finished_at": now,
                "next_action_at": None,
            }
            apply_update(
                doc,
                {
                    "$set": failed,
                    "$unset": {"lease_owner": "", "lease_until": ""},
                    "$inc": {"version": 1},
                },
            )
            return True

    def mark_published(self, items: Sequence[tuple[str, str, Sequence[str]]]) -> int:
        modified = 0
        with self._db.lock:
            for conversation_id, token, ids in items:
                doc = self._docs.get(conversation_id)
                if doc is None or doc.get("publish_token") != token:
                    continue
                before = (list(doc.get("unpublished") or []), doc.get("publish_due_at"))
                doc["unpublished"] = [m for m in doc.get("unpublished") or [] if m not in ids]
                doc["publish_due_at"] = None
                modified += (doc["unpublished"], doc["publish_due_at"]) != before
        return modified

    def find_unpublished(self, before: datetime, limit: int) -> list[StoredState]:
        def keep(doc: Doc) -> bool:
            due = doc.get("publish_due_at")
            return due is not None and due <= before

        return self._select(keep, lambda doc: doc["publish_due_at"], limit)

    def find_by_users(self, pairs: Sequence[tuple[str, str]]) -> list[StoredState]:
        wanted = set(pairs)
        return self._select(lambda doc: (doc.get("campaign_id"), doc.get("user_id")) in wanted)

    def get_many(self, ids: Sequence[str]) -> list[StoredState]:
        wanted = set(ids)
        return self._select(lambda doc: doc["_id"] in wanted)

    def count_due(
        self,
        campaign_id: str,
        now: datetime,
        *,
        settling: bool,
        limit: int,
        span: PartitionRange = WHOLE,
    ) -> int:
        with self._db.lock:
            count = sum(
                _due(doc, campaign_id, now, settling) and _in_range(doc, span)
                for doc in self._docs.values()
            )
        return min(count, limit) if limit else count

    def count_conversations(self, campaign_id: str) -> int:
        return self._count(
            lambda doc: doc.get("campaign_id") == campaign_id and doc.get("enrolled_by") is None
        )

    def count_active(self, campaign_id: str) -> int:
        return self._count(
            lambda doc: doc.get("campaign_id") == campaign_id and doc.get("status") == "active"
        )

    def _count(self, keep: Callable[[Doc], bool]) -> int:
        with self._db.lock:
            return sum(keep(doc) for doc in self._docs.values())

    def page_active(self, campaign_id: str, after: str | None, limit: int) -> list[StoredState]:
        def keep(doc: Doc) -> bool:
            active = doc.get("campaign_id") == campaign_id and doc.get("status") == "active"
            return active and (after is None or doc["_id"] > after)

        return self._select(keep, lambda doc: doc["_id"], limit)

    def oldest_due(self, now: datetime, campaign_ids: Sequence[str]) -> datetime | None:
        wanted = set(campaign_ids)
        with self._db.lock:
            due = [
                doc["next_action_at"]
                for doc in self._docs.values()
                if doc.get("campaign_id") in wanted and _due(doc, doc["campaign_id"], now, False)
            ]
        return min(due) if due else None

    def recount(self, campaign_id: str) -> dict[str, float]:
        with self._db.lock:
            docs: Iterable[Doc] = [
                copy.deepcopy(doc)
                for doc in self._docs.values()
                if doc.get("campaign_id") == campaign_id
            ]
        return recount_documents(docs)


def _unstorable(doc: Doc) -> str | None:
    """Why MongoDB would refuse to store ``doc``: not encodable, or over its size limit."""
    try:
        size = len(bson.encode(doc))
    except (InvalidDocument, OverflowError):
        return "the conversation document cannot be stored (BSON)"
    if size > MAX_DOCUMENT_BYTES:
        return f"document is larger than the maximum size {MAX_DOCUMENT_BYTES}"
    return None


__all__ = ["MemoryConversationStateRepository", "sort_key"]
