"""PyMongo adapters: the client per process, indexes and the repositories.

Every write is one atomic operation with the condition that makes a replay harmless
(a version compare-and-set, a unique index, a status filter); batch work goes through
``insert_many(ordered=False)`` / ``bulk_write`` so round trips are per batch.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from bson.errors import InvalidDocument
from pymongo import ASCENDING, MongoClient, ReturnDocument, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WriteError,
    WTimeoutError,
)

from campaign_worker.domain.documents import Campaign, CampaignStatus, ConversationState
from campaign_worker.domain.errors import InvalidDocumentError, TransientError
from campaign_worker.domain.progression import OutboundEnvelope
from campaign_worker.service.ports import WriteOutcome
from campaign_worker.settings import Settings

Doc = dict[str, Any]
P = ParamSpec("P")
R = TypeVar("R")

DUPLICATE_KEY = 11000
# Server errors that mean "try again later" rather than "this request is wrong".
_TRANSIENT_CODES = {6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436}

CONVERSATIONS = "conversation_states"
CAMPAIGNS = "campaigns"
METRICS = "campaign_metrics"
OUTBOX = "outbox"
DEAD_LETTERS = "dead_letters"


def translate_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Map PyMongo's connectivity errors to TransientError (the retryable kind)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except (ConnectionFailure, ExecutionTimeout, WTimeoutError) as exc:
            raise TransientError(f"MongoDB unavailable: {exc}") from exc
        except OperationFailure as exc:
            if exc.code in _TRANSIENT_CODES or exc.has_error_label("RetryableWriteError"):
                raise TransientError(f"MongoDB transient failure: {exc}") from exc
            raise

    return wrapper


class MongoClientProvider:
    """One MongoClient per process, created on first use.

    PyMongo clients are not fork-safe: a process that forked (Celery prefork) gets a fresh
    client the first time it asks, because the owning pid is checked on every access.
    """

    def __init__(
        self,
        settings: Settings,
        factory: Callable[[], MongoClient[Doc]] | None = None,
        event_listeners: Sequence[Any] = (),
    ) -> None:
        self._settings = settings
        self._factory = factory
        self._listeners = list(event_listeners)
        self._lock = threading.Lock()
        self._client: MongoClient[Doc] | None = None
        self._pid: int | None = None

    def _build(self) -> MongoClient[Doc]:
        if self._factory is not None:
            return self._factory()
        s = self._settings
        return MongoClient(
            s.mongodb_uri,
            tz_aware=True,
            tzinfo=UTC,
            maxPoolSize=s.mongodb_max_pool_size,
            serverSelectionTimeoutMS=s.mongodb_server_selection_timeout_ms,
            connectTimeoutMS=s.mongodb_connect_timeout_ms,
            socketTimeoutMS=s.mongodb_socket_timeout_ms,
            retryWrites=True,
            appname="campaign-worker",
            event_listeners=self._listeners,
        )

    @property
    def client(self) -> MongoClient[Doc]:
        pid = os.getpid()
        with self._lock:
            if self._client is None or self._pid != pid:
                # The inherited client (if any) belongs to the parent: drop it unclosed.
                self._client = self._build()
                self._pid = pid
            return self._client

    @property
    def database(self) -> Database[Doc]:
        return self.client[self._settings.mongodb_db]

    def close(self) -> None:
        with self._lock:
            if self._client is not None and self._pid == os.getpid():
                self._client.close()
            self._client = None
            self._pid = None


def _ignore_duplicates(exc: BulkWriteError) -> int:
    """Return how many documents an unordered insert_many did insert; re-raise anything
    that is not a duplicate key error."""
    details = exc.details
    other = [e for e in details.get("writeErrors", []) if e.get("code") != DUPLICATE_KEY]
    if other or details.get("writeConcernErrors"):
        raise exc
    return int(details.get("nInserted", 0))


def _due_filter(campaign_id: str, now: datetime, status: str, stage: str | None) -> Doc:
    query: Doc = {"campaign_id": campaign_id, "status": status, "next_action_at": {"$lte": now}}
    if stage is not None:
        query["current_stage"] = stage
    return query


def _unleased(now: datetime) -> Doc:
    """No lease, or an expired one. Same documents as ``$or: [{lease_until: null},
    {lease_until: {$lte: now}}]`` ($not also matches a missing field), but a plain field
    predicate: secantusdb evaluates a top-level $or ~70x slower (see bench/README.md)."""
    return {"lease_until": {"$not": {"$gt": now}}}


_NOT_DIFFED = {
    "_id",
    "message_history",
    "version",
    "lease_owner",
    "lease_until",
    "last_write",
    # Maintained by $push here and $pullAll in mark_published, which commute: a write
    # never overwrites the list that a publication is clearing.
    "unpublished",
    "publish_token",
    "publish_due_at",
}
# Write tokens kept per conversation: a write is recognised as landed as long as fewer
# than this many writes came after it before the check (which follows at once).
WRITE_TOKENS_KEPT = 16


def state_update(
    old: ConversationState, new: ConversationState, token: str, now: datetime | None = None
) -> Doc:
    """The single atomic update that turns ``old`` into ``new`` (appends are $push).

    Outbound messages it appends are also pushed to ``unpublished`` under this write's
    token: they are recorded now and published to the outbox after the write landed."""
    before, after = old.to_mongo(), new.to_mongo()
    changes = {
        key: value
        for key, value in after.items()
        if key not in _NOT_DIFFED and before.get(key) != value
    }
    old_history, new_history = before["message_history"], after["message_history"]
    if new_history[: len(old_history)] != old_history:
        raise ValueError("message_history may only be appended to")
    push: Doc = {"last_write": {"$each": [token], "$slice": -WRITE_TOKENS_KEPT}}
    appended = new_history[len(old_history) :]
    if appended:
        push["message_history"] = {"$each": appended}
    outbound = [m["message_id"] for m in appended if m["direction"] == "outbound"]
    if outbound:
        push["unpublished"] = {"$each": outbound}
        changes["publish_token"] = token
        changes["publish_due_at"] = now or new.last_active
    update: Doc = {"$inc": {"version": 1}, "$push": push}
    if changes:
        update["$set"] = changes
    return update


class MongoConversationStateRepository:
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
        c.create_index(
            [("campaign_id", ASCENDING), ("user_id", ASCENDING)],
            unique=True,
            name="campaign_user_unique",
        )
        # Serves get_pending_conversations/claim: equality on campaign and status, range on
        # next_action_at (ESR order).
        c.create_index(
            [("campaign_id", ASCENDING), ("status", ASCENDING), ("next_action_at", ASCENDING)],
            name="pending",
        )
        # Serves the poller's lag probe across campaigns.
        c.create_index([("status", ASCENDING), ("next_action_at", ASCENDING)], name="due")
        # Serves the publication sweep; the field is null except in a crash window.
        c.create_index([("publish_due_at", ASCENDING)], name="unpublished")

    @translate_errors
    def create_conversation_state(self, data: Doc) -> Doc:
        """Insert one conversation; raises DuplicateKeyError if (campaign, user) exists."""
        self._collection.insert_one(data)
        return data

    @translate_errors
    def get_conversation_state(self, id: str) -> Doc | None:
        return self._collection.find_one({"_id": id})

    @translate_errors
    def get_by_user(self, campaign_id: str, user_id: str) -> Doc | None:
        return self._collection.find_one({"campaign_id": campaign_id, "user_id": user_id})

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

    @translate_errors
    def insert_many_states(self, docs: Sequence[Doc]) -> int:
        """Insert a batch; duplicates (already initialized) are skipped. Returns inserted."""
        if not docs:
            return 0
        try:
            return len(self._collection.insert_many(list(docs), ordered=False).inserted_ids)
        except BulkWriteError as exc:
            return _ignore_duplicates(exc)

    @translate_errors
    def find_due(
        self, campaign_id: str, now: datetime, *, stage: str | None, status: str, limit: int
    ) -> list[Doc]:
        """Active conversations that are due, oldest first; for a finished status, the
        conversations in it, most recently finished first (nothing is due there)."""
        if status != "active":
            query: Doc = {"campaign_id": campaign_id, "status": status}
            if stage is not None:
                query["current_stage"] = stage
            return list(self._collection.find(query).sort("finished_at", -1).limit(limit))
        query = _due_filter(campaign_id, now, status, stage)
        return list(self._collection.find(query).sort("next_action_at", ASCENDING).limit(limit))

    @translate_errors
    def claim_due(
        self,
        campaign_id: str,
        now: datetime,
        *,
        owner: str,
        lease_until: datetime,
        stage: str | None,
        limit: int,
    ) -> list[Doc]:
        """Lease up to ``limit`` due conversations to ``owner``; return the leased ones.

        Three round trips whatever the batch size: read candidate ids, one conditional
        update_many (still due and unleased, so two claimers never share one), read back.
        """
        query = {**_due_filter(campaign_id, now, "active", stage), **_unleased(now)}
        return self._claim(query, owner, lease_until, limit)

    @translate_errors
    def claim_active(
        self, campaign_id: str, now: datetime, *, owner: str, lease_until: datetime, limit: int
    ) -> list[Doc]:
        """Lease up to ``limit`` active conversations, due or not (to settle a cancel)."""
        query = {"campaign_id": campaign_id, "status": "active", **_unleased(now)}
        return self._claim(query, owner, lease_until, limit)

    def _claim(self, query: Doc, owner: str, lease_until: datetime, limit: int) -> list[Doc]:
        ids = [
            doc["_id"]
            # batch_size: the server's first batch is 101 docs otherwise, then a getMore.
            for doc in self._collection.find(query, {"_id": 1}, limit=limit, batch_size=limit).sort(
                "next_action_at", ASCENDING
            )
        ]
        if not ids:
            return []
        self._collection.update_many(
            {"_id": {"$in": ids}, **query},
            {"$set": {"lease_owner": owner, "lease_until": lease_until}},
        )
        leased = {"_id": {"$in": ids}, "lease_owner": owner}
        return list(self._collection.find(leased, limit=len(ids), batch_size=len(ids)))

    @translate_errors
    def release(self, ids: Sequence[str], owner: str) -> int:
        result = self._collection.update_many(
            {"_id": {"$in": list(ids)}, "lease_owner": owner},
            {"$unset": {"lease_owner": "", "lease_until": ""}},
        )
        return result.modified_count

    def save_transitions(
        self, changes: Sequence[tuple[ConversationState, ConversationState]]
    ) -> set[str]:
        """Write each (old, new) pair as a compare-and-set; the ids whose write applied."""
        return set(self.write_transitions(changes).applied)

    @translate_errors
    def write_transitions(
        self,
        changes: Sequence[tuple[ConversationState, ConversationState]],
        now: datetime | None = None,
    ) -> WriteOutcome:
        """Write each (old, new) pair as a compare-and-set on ``old.version``.

        One bulk_write for the batch; each write also drops any lease, since a newer
        version makes whatever the lease holder is computing stale anyway. Returns the
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
            update["$unset"] = {"lease_owner": "", "lease_until": ""}
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
    def find_unpublished(self, before: datetime, limit: int) -> list[Doc]:
        """Conversations whose recorded messages a crash left unpublished since ``before``."""
        return list(
            self._collection.find({"publish_due_at": {"$lte": before}}, limit=limit).sort(
                "publish_due_at", ASCENDING
            )
        )

    @translate_errors
    def has_due(self, campaign_id: str, now: datetime) -> bool:
        query = {**_due_filter(campaign_id, now, "active", None), **_unleased(now)}
        return self._collection.find_one(query, {"_id": 1}) is not None

    @translate_errors
    def count_conversations(self, campaign_id: str) -> int:
        return self._collection.count_documents({"campaign_id": campaign_id})

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
    def aggregate_campaign(self, campaign_id: str) -> Doc:
        """Recompute a campaign's metrics from its conversations in one aggregation."""
        pipeline: list[Doc] = [
            {"$match": {"campaign_id": campaign_id}},
            {
                "$facet": {
                    "status": [{"$group": {"_id": "$status", "n": {"$sum": 1}}}],
                    "messages": [
                        {
                            "$group": {
                                "_id": None,
                                "sent": {"$sum": "$metrics.messages_sent"},
                                "received": {"$sum": "$metrics.messages_received"},
                            }
                        }
                    ],
                    "stages": [
                        {"$unwind": "$stages"},
                        {
                            "$group": {
                                "_id": "$stages.name",
                                "entered": {"$sum": 1},
                                "completed": {"$sum": {"$cond": ["$stages.completed", 1, 0]}},
                                "total_ms": {
                                    "$sum": {
                                        "$cond": [
                                            "$stages.completed",
                                            {
                                                "$subtract": [
                                                    "$stages.exited_at",
                                                    "$stages.entered_at",
                                                ]
                                            },
                                            0,
                                        ]
                                    }
                                },
                            }
                        },
                    ],
                }
            },
        ]
        result = list(self._collection.aggregate(pipeline))
        return result[0] if result else {"status": [], "messages": [], "stages": []}


class MongoCampaignRepository:
    def __init__(self, db: Database[Doc]) -> None:
        self._db = db
        self._collection: Collection[Doc] = db[CAMPAIGNS]

    @translate_errors
    def initialize(self) -> None:
        self._collection.create_index(
            [("status", ASCENDING), ("start_at", ASCENDING)], name="status_start"
        )

    @translate_errors
    def insert(self, campaign: Campaign) -> bool:
        """Insert; False if a campaign with that id exists already (replay-safe)."""
        try:
            self._collection.insert_one(campaign.to_mongo())
        except DuplicateKeyError:
            return False
        return True

    @translate_errors
    def get(self, campaign_id: str, *, with_recipients: bool = False) -> Doc | None:
        projection = None if with_recipients else {"recipients": 0}
        doc = self._collection.find_one({"_id": campaign_id}, projection)
        return doc

    @translate_errors
    def transition(
        self,
        campaign_id: str,
        allowed_from: Iterable[CampaignStatus],
        to: CampaignStatus,
        now: datetime,
        extra: Doc | None = None,
    ) -> Doc | None:
        """Conditional status change; None if the campaign is not in ``allowed_from``."""
        update: Doc = {"$set": {"status": to.value, "updated_at": now, **(extra or {})}}
        if to not in (CampaignStatus.INITIALIZING,):
            update["$unset"] = {"lease_owner": "", "lease_until": ""}
        return self._collection.find_one_and_update(
            {"_id": campaign_id, "status": {"$in": [s.value for s in allowed_from]}},
            update,
            projection={"recipients": 0},
            return_document=ReturnDocument.AFTER,
        )

    @translate_errors
    def claim_for_initialization(
        self, now: datetime, owner: str, lease_until: datetime, limit: int
    ) -> list[Doc]:
        """Claim due scheduled campaigns (or initializations whose owner died).

        One find_one_and_update per campaign: campaigns are few, and only one poller can
        win each (the filter includes the status it moves away from).
        """
        claimed = []
        due: Doc = {
            "$or": [
                {
                    "status": CampaignStatus.SCHEDULED.value,
                    "$or": [{"start_at": None}, {"start_at": {"$lte": now}}],
                },
                {"status": CampaignStatus.INITIALIZING.value, "lease_until": {"$lte": now}},
            ]
        }
        for _ in range(limit):
            doc = self._collection.find_one_and_update(
                due,
                {
                    "$set": {
                        "status": CampaignStatus.INITIALIZING.value,
                        "lease_owner": owner,
                        "lease_until": lease_until,
                        "updated_at": now,
                    }
                },
                projection={"recipients": 0},
                sort=[("start_at", ASCENDING)],
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:
                break
            claimed.append(doc)
        return claimed

    @translate_errors
    def find_by_status(self, statuses: Iterable[CampaignStatus]) -> list[Doc]:
        """Campaigns in ``statuses`` (cancelled ones only until they are settled)."""
        return list(
            self._collection.find(
                {"status": {"$in": [s.value for s in statuses]}, "settled_at": None},
                {"recipients": 0},
            )
        )

    @translate_errors
    def mark_settled(self, campaign_id: str, now: datetime) -> bool:
        """A cancelled campaign with no active conversation left: the poller stops looking."""
        result = self._collection.update_one(
            {"_id": campaign_id, "status": CampaignStatus.CANCELLED.value, "settled_at": None},
            {"$set": {"settled_at": now, "updated_at": now}},
        )
        return result.modified_count == 1

    @translate_errors
    def iter_recipients(
        self, campaign: Doc, batch_size: int, position: Doc | None = None
    ) -> Iterator[tuple[list[Doc], Doc]]:
        """Yield (batch, position after it), starting after ``position``.

        Inline lists resume by offset; a referenced collection is streamed by cursor in
        ``_id`` order and resumes after the last ``_id`` seen, so a restarted
        initialization never re-reads what it already inserted.
        """
        recipients = campaign.get("recipients")
        position = position or {}
        if isinstance(recipients, list):
            start = int(position.get("offset", 0))
            for begin in range(start, len(recipients), batch_size):
                end = min(begin + batch_size, len(recipients))
                yield recipients[begin:end], {"offset": end}
            return
        if not isinstance(recipients, dict):
            raise InvalidDocumentError(f"campaign {campaign.get('_id')!r} has no recipients")
        query: Doc = recipients.get("query") or {}
        if "after_id" in position:
            query = {"$and": [query, {"_id": {"$gt": position["after_id"]}}]}
        cursor = (
            self._db[recipients["collection"]]
            .find(query, {"user_id": 1, "attributes": 1, "timezone": 1})
            .sort("_id", ASCENDING)
            .batch_size(batch_size)
        )
        batch: list[Doc] = []
        last_id: Any = None
        for doc in cursor:
            last_id = doc.pop("_id")
            batch.append(doc)
            if len(batch) >= batch_size:
                yield batch, {"after_id": last_id}
                batch = []
        if batch:
            yield batch, {"after_id": last_id}

    @translate_errors
    def has_recipients(self, campaign: Doc) -> bool:
        """Whether the audience has at least one row (one indexed probe for a collection)."""
        recipients = campaign.get("recipients")
        if isinstance(recipients, list):
            return bool(recipients)
        if not isinstance(recipients, dict):
            return False
        query: Doc = recipients.get("query") or {}
        return self._db[recipients["collection"]].find_one(query, {"_id": 1}) is not None

    @translate_errors
    def save_init_progress(
        self, campaign_id: str, progress: Doc, lease_until: datetime, now: datetime
    ) -> bool:
        """Checkpoint an initialization and extend its lease; False once the campaign
        left ``initializing`` (paused or cancelled meanwhile)."""
        result = self._collection.update_one(
            {"_id": campaign_id, "status": CampaignStatus.INITIALIZING.value},
            {"$set": {"init_progress": progress, "lease_until": lease_until, "updated_at": now}},
        )
        return result.matched_count == 1


class MongoOutboxRepository:
    """Messages for the delivering service (collection ``outbox``, ``_id`` = message_id)."""

    def __init__(self, db: Database[Doc]) -> None:
        self._collection: Collection[Doc] = db[OUTBOX]

    @translate_errors
    def initialize(self) -> None:
        self._collection.create_index(
            [("status", ASCENDING), ("created_at", ASCENDING)], name="status_created"
        )
        self._collection.create_index([("conversation_id", ASCENDING)], name="conversation")

    @translate_errors
    def enqueue_many(self, envelopes: Sequence[OutboundEnvelope]) -> int:
        """Publish recorded messages; a message_id already there is skipped (idempotent)."""
        docs = [
            {
                "_id": e.message_id,
                "conversation_id": e.conversation_id,
                "campaign_id": e.campaign_id,
                "user_id": e.user_id,
                "channel": e.channel,
                "content": e.content,
                "stage": e.stage,
                "step": e.step,
                "status": "pending",
                "created_at": e.created_at,
            }
            for e in envelopes
        ]
        if not docs:
            return 0
        try:
            return len(self._collection.insert_many(docs, ordered=False).inserted_ids)
        except BulkWriteError as exc:
            return _ignore_duplicates(exc)  # published before (a replay or the sweep)

    @translate_errors
    def find(self, query: Doc, limit: int = 0) -> list[Doc]:
        return list(self._collection.find(query, limit=limit).sort("created_at", ASCENDING))


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


__all__ = [
    "CAMPAIGNS",
    "CONVERSATIONS",
    "DEAD_LETTERS",
    "METRICS",
    "OUTBOX",
    "MongoCampaignRepository",
    "MongoClientProvider",
    "MongoConversationStateRepository",
    "MongoDeadLetterRepository",
    "MongoOutboxRepository",
    "PyMongoError",
    "state_update",
    "translate_errors",
]
