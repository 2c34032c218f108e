"""The conversation state repository (collection ``conversation_states``): the seed's
methods, the processing read, the batched compare-and-set writes and the publication marks.

Reads that the flows make return ``StoredState``: a ``ConversationState``, or
``Unreadable`` for a document that no longer validates, so the flow can fail or refuse it
alone. The seed's methods (``create/get/update/delete/find_conversation_states``) keep
their ``Dict`` signatures for the seed's callers; the service port does not list them."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from bson.errors import InvalidDocument
from pymongo import ASCENDING, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from campaign_worker.adapters.mongo import (
    CONVERSATIONS,
    ignore_duplicates,
    translate_errors,
)
from campaign_worker.adapters.mongo_recount import recount_conversations
from campaign_worker.adapters.mongo_seed_conversations import SeedConversationMethods
from campaign_worker.adapters.mongo_updates import state_update
from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.documents import (
    ConversationState,
    StoredState,
    parse_document,
    read_state,
    to_utc,
)
from campaign_worker.domain.partitions import PartitionRange
from campaign_worker.service.ports import WriteOutcome

WHOLE = PartitionRange()
DUE_INDEX = "pending"
ENTRY_INDEX = "campaign_user_entry_unique"


def _due_filter(campaign_id: str, now: datetime, status: str, stage: str | None) -> Doc:
    query: Doc = {"campaign_id": campaign_id, "status": status, "next_action_at": {"$lte": now}}
    if stage is not None:
        query["current_stage"] = stage
    return query


def _in_range(span: PartitionRange) -> Doc:
    """The bucket predicate of a partition range. The first range also takes documents
    without a bucket (created before partitions): ``$not: {$gte: high}`` matches a
    missing field, as a plain field predicate (secantusdb evaluates a top-level $or ~70x
    slower, see bench/README.md)."""
    if span.whole:
        return {}
    if span.low == 0:
        return {"partition": {"$not": {"$gte": span.high}}}
    return {"partition": {"$gte": span.low, "$lt": span.high}}


def _open_goal(goal_until: object, since: datetime) -> bool:
    return isinstance(goal_until, datetime) and to_utc(goal_until) >= since


class MongoConversationStateRepository(SeedConversationMethods):
    """The seed's ConversationStateRepository over PyMongo (collection conversation_states)."""

    def __init__(self, db: Database[Doc]) -> None:
        self._db = db
        self._collection: Collection[Doc] = db[CONVERSATIONS]

    @translate_errors
    def initialize(self) -> None:
        """Create the indexes (idempotent)."""
        c = self._collection
        c.create_index([("campaign_id", ASCENDING)], name="campaign_id")
        c.create_index([("user_id", ASCENDING)], name="user_id")
        c.create_index([("status", ASCENDING)], name="status")
        # One conversation per (campaign, user, entry): ``enrollment`` is absent (null)
        # on a first entry and numbers re-entries (domain/enrollment.py). It replaces the
        # (campaign, user) index of releases before re-entry, dropped once it exists.
        c.create_index(
            [("campaign_id", ASCENDING), ("user_id", ASCENDING), ("enrollment", ASCENDING)],
            unique=True,
            name=ENTRY_INDEX,
        )
        if "campaign_user_unique" in c.index_information():
            c.drop_index("campaign_user_unique")
        # Serves the processing read, get_pending_conversations and the poller's count:
        # equality on campaign and status, sort and range on next_action_at (ESR order).
        # A partition range is checked on the fetched documents, which come in due order,
        # so a read stops after about ``limit x partitions`` of them. Not a fourth key
        # (partition): secantusdb 0.7 answers the plain due query wrongly (no documents)
        # through such an index; see docs/architecture.md, "Processing".
        c.create_index(
            [("campaign_id", ASCENDING), ("status", ASCENDING), ("next_action_at", ASCENDING)],
            name=DUE_INDEX,
        )
        # Serves the poller's lag probe across campaigns.
        c.create_index([("status", ASCENDING), ("next_action_at", ASCENDING)], name="due")
        # Serves the publication sweep; the field is null except in a crash window.
        c.create_index([("publish_due_at", ASCENDING)], name="unpublished")

    # ------------------------------------------------------------ the flows' reads and writes

    @translate_errors
    def get_state(self, conversation_id: str) -> StoredState | None:
        """One conversation, read for a command on it; None if there is none."""
        doc = self._collection.find_one({"_id": conversation_id})
        return None if doc is None else read_state(doc)

    @translate_errors
    def get_by_user(self, campaign_id: str, user_id: str) -> ConversationState | None:
        """The conversation of one recipient; ``InvalidDocumentError`` if it does not
        validate."""
        doc = self._collection.find_one({"campaign_id": campaign_id, "user_id": user_id})
        if doc is None:
            return None
        return parse_document(ConversationState, doc, what=f"conversation {doc['_id']}")

    @translate_errors
    def find_by_users(self, pairs: Sequence[tuple[str, str]]) -> list[StoredState]:
        """The conversations of these (campaign id, user id) pairs, in one ``find``
        (one ``$in`` per campaign, served by the unique (campaign, user) index)."""
        users: dict[str, set[str]] = {}
        for campaign_id, user_id in pairs:
            users.setdefault(campaign_id, set()).add(user_id)
        if not users:
            return []
        clauses = [
            {"campaign_id": campaign_id, "user_id": {"$in": sorted(ids)}}
            for campaign_id, ids in users.items()
        ]
        query = clauses[0] if len(clauses) == 1 else {"$or": clauses}
        wanted = {(c, u) for c, u in pairs}
        # One conversation per pair, or a few with re-entries: a first batch of twice as
        # many holds them all and closes the cursor (no getMore).
        found = self._collection.find(query, batch_size=2 * len(wanted) + 1)
        return [
            read_state(doc)
            for doc in found
            if (doc.get("campaign_id"), doc.get("user_id")) in wanted
        ]

    @translate_errors
    def get_many(self, ids: Sequence[str]) -> list[StoredState]:
        """The conversations with these ids (those that exist), in one ``find``."""
        if not ids:
            return []
        unique = list(dict.fromkeys(ids))
        query = {"_id": {"$in": unique}}
        found = self._collection.find(query, limit=len(unique), batch_size=len(unique))
        return [read_state(doc) for doc in found]

    @translate_errors
    def insert_states(self, states: Sequence[ConversationState]) -> int:
        """Insert a batch; duplicates (already initialized) are skipped. Returns inserted."""
        if not states:
            return 0
        docs = [state.to_mongo() for state in states]
        try:
            return len(self._collection.insert_many(docs, ordered=False).inserted_ids)
        except BulkWriteError as exc:
            return ignore_duplicates(exc)

    @translate_errors
    def insert_new(self, states: Sequence[ConversationState]) -> set[str]:
        """Insert a batch; returns the ids inserted (duplicates skipped)."""
        if not states:
            return set()
        ids = [state.id for state in states]
        try:
            self._collection.insert_many([s.to_mongo() for s in states], ordered=False)
        except BulkWriteError as exc:
            ignore_duplicates(exc)  # anything but a duplicate is raised
            refused = {error["index"] for error in exc.details.get("writeErrors", [])}
            return {cid for index, cid in enumerate(ids) if index not in refused}
        return set(ids)

    @translate_errors
    def find_listening(self, user_ids: Sequence[str], since: datetime) -> list[StoredState]:
        """One ``find`` over the ``user_id`` index; the finished ones whose goal window
        closed are left out here (a top-level ``$or`` is slow on secantusdb)."""
        if not user_ids:
            return []
        found = self._collection.find({"user_id": {"$in": sorted(set(user_ids))}})
        return [
            read_state(doc)
            for doc in found.batch_size(1000)
            if doc.get("status") == "active" or _open_goal(doc.get("goal_until"), since)
        ]

    @translate_errors
    def find_due(
        self, campaign_id: str, now: datetime, *, stage: str | None, status: str, limit: int
    ) -> list[StoredState]:
        """Active conversations that are due, oldest first; for a finished status, the
        conversations in it, most recently finished first (nothing is due there)."""
        if status != "active":
            query: Doc = {"campaign_id": campaign_id, "status": status}
            if stage is not None:
                query["current_stage"] = stage
            found = self._collection.find(query).sort("finished_at", -1).limit(limit)
            return [read_state(doc) for doc in found]
        query = _due_filter(campaign_id, now, status, stage)
        found = self._collection.find(query).sort("next_action_at", ASCENDING).limit(limit)
        return [read_state(doc) for doc in found]

    @translate_errors
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
        """Up to ``limit`` due active conversations of a partition range, oldest due
        first, read in full in one round trip (``batch_size``: else the server's first
        batch is 101 documents, then a getMore). ``settling``: every active one, due or
        not (a cancelled campaign's). Nothing is leased: see docs/architecture.md."""
        if settling:
            query: Doc = {"campaign_id": campaign_id, "status": "active"}
        else:
            query = _due_filter(campaign_id, now, "active", stage)
        query.update(_in_range(span))
        cursor = self._collection.find(query, limit=limit, batch_size=limit)
        return [read_state(doc) for doc in cursor.sort("next_action_at", ASCENDING)]

    @translate_errors
    def write_transitions(
        self,
        changes: Sequence[tuple[ConversationState, ConversationState]],
        now: datetime | None = None,
    ) -> WriteOutcome:
        """Write each (old, new) pair as a compare-and-set on ``old.version``.

        One bulk_write for the batch (a lease left by an earlier release is dropped by
        the same write: see ``state_update``). Returns the
        ids whose write applied (with their write token), and those the server refused
        with an error (say, a document over the size limit) with the reason. The others
        lost to a concurrent writer.
        """
        outcome = WriteOutcome()
        if not changes:
            return outcome
        batch = uuid.uuid4().hex
        ops, tokens = [], {}
        for index, (old, new) in enumerate(changes):
            token = f"{batch}:{index}"
            tokens[old.id] = token
            update = state_update(old, new, token, now)
            ops.append(UpdateOne({"_id": old.id, "version": old.version}, update))
        matched = self._bulk(ops, [old.id for old, _ in changes], outcome.failed)
        if matched == len(ops) - len(outcome.failed):
            outcome.applied = {cid: t for cid, t in tokens.items() if cid not in outcome.failed}
            return outcome
        # Some lost: find out which of ours did land (their token is among the recent
        # ones, even if another writer has built on the write since).
        landed = self._collection.find(
            {"_id": {"$in": list(tokens)}, "last_write": {"$in": list(tokens.values())}},
            {"_id": 1},
        )
        outcome.applied = {doc["_id"]: tokens[doc["_id"]] for doc in landed}
        return outcome

    def _bulk(self, ops: list[UpdateOne], ids: list[str], failed: dict[str, str]) -> int:
        """Run ``ops`` unordered; record per-operation errors in ``failed`` (by id) and
        return how many matched. An operation that cannot even be encoded (an integer
        beyond 64 bits) fails alone: the batch is then written one operation at a time."""
        try:
            result = self._collection.bulk_write(ops, ordered=False)
            return result.matched_count
        except BulkWriteError as exc:
            details = exc.details
            if details.get("writeConcernErrors"):
                raise
            for error in details.get("writeErrors", []):
                failed[ids[error["index"]]] = str(error.get("errmsg", "write error"))[:500]
            return int(details.get("nMatched", 0))
        except (InvalidDocument, OverflowError):
            if len(ops) == 1:
                failed[ids[0]] = "the conversation document cannot be stored (BSON)"
                return 0
            return sum(self._bulk([op], [cid], failed) for op, cid in zip(ops, ids, strict=True))

    @translate_errors
    def fail_conversation(self, conversation_id: str, reason: str, now: datetime) -> bool:
        """End an active conversation as failed without reading it (it may not even
        validate); False if it was not active."""
        result = self._collection.update_one(
            {"_id": conversation_id, "status": "active"},
            {
                "$set": {
                    "status": "failed",
                    "status_reason": reason[:500],
                    "finished_at": now,
                    "next_action_at": None,
                },
                "$unset": {"lease_owner": "", "lease_until": ""},
                "$inc": {"version": 1},
            },
        )
        return result.modified_count == 1

    @translate_errors
    def mark_published(self, items: Sequence[tuple[str, str, Sequence[str]]]) -> int:
        """Clear published ids: (conversation id, publish token, ids). Only while the
        token is the one stored, so a later write's unpublished messages stay marked."""
        if not items:
            return 0
        ops = [
            UpdateOne(
                {"_id": cid, "publish_token": token},
                {"$pullAll": {"unpublished": list(ids)}, "$set": {"publish_due_at": None}},
            )
            for cid, token, ids in items
        ]
        return self._collection.bulk_write(ops, ordered=False).modified_count

    @translate_errors
    def find_unpublished(self, before: datetime, limit: int) -> list[StoredState]:
        """Conversations whose recorded messages a crash left unpublished since ``before``."""
        found = self._collection.find({"publish_due_at": {"$lte": before}}, limit=limit)
        return [read_state(doc) for doc in found.sort("publish_due_at", ASCENDING)]

    @translate_errors
    def count_due(
        self,
        campaign_id: str,
        now: datetime,
        *,
        settling: bool,
        limit: int,
        span: PartitionRange = WHOLE,
    ) -> int:
        """How many are due (``settling``: active) in ``span``, counted up to ``limit``."""
        query: Doc = {"campaign_id": campaign_id, "status": "active"}
        if not settling:
            query = _due_filter(campaign_id, now, "active", None)
        query.update(_in_range(span))
        return self._collection.count_documents(query, limit=limit)

    @translate_errors
    def count_conversations(self, campaign_id: str) -> int:
        """Conversations of the campaign's audience (not those enrolled into it)."""
        return self._collection.count_documents({"campaign_id": campaign_id, "enrolled_by": None})

    @translate_errors
    def page_active(self, campaign_id: str, after: str | None, limit: int) -> list[StoredState]:
        """A campaign's active conversations by id, those after ``after`` (a migration
        walks them page by page; the ``campaign_id`` index and ``_id`` bound it)."""
        query: Doc = {"campaign_id": campaign_id, "status": "active"}
        if after is not None:
            query["_id"] = {"$gt": after}
        found = self._collection.find(query).sort("_id", ASCENDING).limit(limit)
        return [read_state(doc) for doc in found]

    @translate_errors
    def count_active(self, campaign_id: str) -> int:
        return self._collection.count_documents({"campaign_id": campaign_id, "status": "active"})

    @translate_errors
    def oldest_due(self, now: datetime, campaign_ids: Sequence[str]) -> datetime | None:
        """The oldest due time among active conversations of ``campaign_ids``."""
        if not campaign_ids:
            return None
        doc = self._collection.find_one(
            {
                "campaign_id": {"$in": list(campaign_ids)},
                "status": "active",
                "next_action_at": {"$lte": now},
            },
            {"next_action_at": 1},
            sort=[("next_action_at", ASCENDING)],
        )
        return doc["next_action_at"] if doc else None

    @translate_errors
    def recount(self, campaign_id: str) -> dict[str, float]:
        """The campaign's metrics counters recomputed from its conversations (one
        aggregation), as metrics-document field paths."""
        return recount_conversations(self._collection, campaign_id)


__all__ = ["MongoConversationStateRepository"]
