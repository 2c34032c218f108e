"""The campaign repository (collection ``campaigns``): conditional status moves, the
poller's claim, the audience stream and the initialization checkpoint."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from campaign_worker.adapters.mongo import CAMPAIGNS, translate_errors
from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.campaign_documents import (
    AudiencePosition,
    AudienceRow,
    Campaign,
    CampaignStatus,
    InitCheckpoint,
    MigrationRecord,
    StoredCampaign,
    audience_row,
    inline_audience,
)
from campaign_worker.domain.errors import InvalidDocumentError
from campaign_worker.domain.versions import TemplateVersion

# Statuses a campaign takes enrollments in, and the projection that leaves its audience out.
ENROLLING = ["scheduled", "initializing", "running", "paused"]
_NO_AUDIENCE = {"recipients": 0}


def _stored(doc: Doc | None) -> StoredCampaign | None:
    return None if doc is None else StoredCampaign.model_validate(doc)


class MongoCampaignRepository:
    def __init__(self, db: Database[Doc]) -> None:
        self._db = db
        self._collection: Collection[Doc] = db[CAMPAIGNS]

    @translate_errors
    def initialize(self) -> None:
        self._collection.create_index(
            [("status", ASCENDING), ("start_at", ASCENDING)], name="status_start"
        )
        # Serves the campaigns an entry event enrolls into (most campaigns have none).
        self._collection.create_index([("entry_event", ASCENDING)], name="entry_event")

    @translate_errors
    def insert(self, campaign: Campaign) -> bool:
        """Insert; False if a campaign with that id exists already (replay-safe)."""
        try:
            self._collection.insert_one(campaign.to_mongo())
        except DuplicateKeyError:
            return False
        return True

    @translate_errors
    def get(self, campaign_id: str, *, with_recipients: bool = False) -> StoredCampaign | None:
        projection = None if with_recipients else {"recipients": 0}
        return _stored(self._collection.find_one({"_id": campaign_id}, projection))

    @translate_errors
    def transition(
        self,
        campaign_id: str,
        allowed_from: Iterable[CampaignStatus],
        to: CampaignStatus,
        now: datetime,
    ) -> StoredCampaign | None:
        """Conditional status change; None if the campaign is not in ``allowed_from``."""
        return self._move(campaign_id, allowed_from, to, now, {})

    @translate_errors
    def finish_initialization(
        self,
        campaign_id: str,
        allowed_from: Iterable[CampaignStatus],
        now: datetime,
        total_recipients: int,
        checkpoint: InitCheckpoint,
    ) -> StoredCampaign | None:
        """Running, with the total and the final checkpoint set in the same update."""
        done = {
            "total_recipients": total_recipients,
            "initialized_at": now,
            "init_progress": {**checkpoint.as_doc(), "done": True},
            "invalid_recipients": checkpoint.invalid,
            "invalid_samples": [sample.as_doc() for sample in checkpoint.samples],
        }
        return self._move(campaign_id, allowed_from, CampaignStatus.RUNNING, now, done)

    def _move(
        self,
        campaign_id: str,
        allowed_from: Iterable[CampaignStatus],
        to: CampaignStatus,
        now: datetime,
        extra: Doc,
    ) -> StoredCampaign | None:
        update: Doc = {"$set": {"status": to.value, "updated_at": now, **extra}}
        if to not in (CampaignStatus.INITIALIZING,):
            update["$unset"] = {"lease_owner": "", "lease_until": ""}
        return _stored(
            self._collection.find_one_and_update(
                {"_id": campaign_id, "status": {"$in": [s.value for s in allowed_from]}},
                update,
                projection={"recipients": 0},
                return_document=ReturnDocument.AFTER,
            )
        )

    @translate_errors
    def claim_for_initialization(
        self, now: datetime, owner: str, lease_until: datetime, limit: int
    ) -> list[StoredCampaign]:
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
            claimed.append(StoredCampaign.model_validate(doc))
        return claimed

    @translate_errors
    def find_by_status(self, statuses: Iterable[CampaignStatus]) -> list[StoredCampaign]:
        """Campaigns in ``statuses`` (cancelled ones only until they are settled)."""
        return [
            StoredCampaign.model_validate(doc)
            for doc in self._collection.find(
                {"status": {"$in": [s.value for s in statuses]}, "settled_at": None},
                {"recipients": 0},
            )
        ]

    @translate_errors
    def with_entry_events(self, events: Sequence[str]) -> list[StoredCampaign]:
        """Campaigns that enroll on one of ``events`` and may still take people."""
        if not events:
            return []
        query = {"entry_event": {"$in": sorted(set(events))}, "status": {"$in": ENROLLING}}
        found = self._collection.find(query, _NO_AUDIENCE)
        return [StoredCampaign.model_validate(doc) for doc in found]

    @translate_errors
    def list_recent(self, status: CampaignStatus | None, limit: int) -> list[StoredCampaign]:
        """Newest first (by ``created_at``), optionally in one status; no recipients."""
        query: Doc = {} if status is None else {"status": status.value}
        cursor = self._collection.find(query, {"recipients": 0})
        return [
            StoredCampaign.model_validate(doc)
            for doc in cursor.sort([("created_at", DESCENDING), ("_id", ASCENDING)]).limit(limit)
        ]

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
        self,
        campaign: StoredCampaign,
        batch_size: int,
        position: AudiencePosition | None = None,
        read_ahead: int = 1,
    ) -> Iterator[tuple[list[AudienceRow], AudiencePosition]]:
        """Yield (batch, position after it), starting after ``position``. A referenced
        collection is read ``read_ahead`` batches per round trip (still a bounded
        amount in memory).

        Inline lists resume by offset; a referenced collection is streamed by cursor in
        ``_id`` order and resumes after the last ``_id`` seen, so a restarted
        initialization never re-reads what it already inserted.
        """
        recipients = campaign.recipients
        if isinstance(recipients, list):
            yield from inline_audience(recipients, batch_size, position)
            return
        if not isinstance(recipients, dict):
            raise InvalidDocumentError(f"campaign {campaign.id!r} has no recipients")
        query: Doc = recipients.get("query") or {}
        if position is not None and position.after_id is not None:
            query = {"$and": [query, {"_id": {"$gt": position.after_id}}]}
        cursor = (
            self._db[recipients["collection"]]
            .find(query, {"user_id": 1, "attributes": 1, "timezone": 1})
            .sort("_id", ASCENDING)
            .batch_size(batch_size * read_ahead)
        )
        batch: list[AudienceRow] = []
        last_id: object = None
        for doc in cursor:
            last_id = doc.pop("_id")
            batch.append(audience_row(doc))
            if len(batch) >= batch_size:
                yield batch, AudiencePosition(after_id=last_id)
                batch = []
        if batch:
            yield batch, AudiencePosition(after_id=last_id)

    @translate_errors
    def has_recipients(self, campaign: Campaign) -> bool:
        """Whether the audience has at least one row (one indexed probe for a collection)."""
        recipients = campaign.recipients
        if isinstance(recipients, list):
            return bool(recipients)
        found = self._db[recipients.collection].find_one(recipients.query, {"_id": 1})
        return found is not None

    @translate_errors
    def save_init_progress(
        self, campaign_id: str, checkpoint: InitCheckpoint, lease_until: datetime, now: datetime
    ) -> bool:
        """Checkpoint an initialization and extend its lease; False once the campaign
        left ``initializing`` (paused or cancelled meanwhile)."""
        result = self._collection.update_one(
            {"_id": campaign_id, "status": CampaignStatus.INITIALIZING.value},
            {
                "$set": {
                    "init_progress": checkpoint.as_doc(),
                    "lease_until": lease_until,
                    "updated_at": now,
                }
            },
        )
        return result.matched_count == 1

    # ------------------------------------------------------------ migrations

    @translate_errors
    def begin_migration(
        self, campaign_id: str, record: MigrationRecord, now: datetime
    ) -> StoredCampaign:
        """Set ``migrating`` to ``record`` unless a migration is being applied already;
        returns the campaign either way (its ``migrating`` says whose it is)."""
        self._collection.update_one(
            {"_id": campaign_id, "migrating": None},
            {"$set": {"migrating": record.to_mongo(), "updated_at": now}},
        )
        found = self.get(campaign_id)
        if found is None:
            raise InvalidDocumentError(f"campaign {campaign_id!r} disappeared")
        return found

    @translate_errors
    def count_migration(
        self, campaign_id: str, migration_id: str, counts: dict[str, dict[str, int]]
    ) -> bool:
        """Add one batch's counts to the migration being applied (``$inc``, so resumed
        or concurrent appliers add up); bumps its revision."""
        inc: Doc = {"migrating.revision": 1}
        for group, values in counts.items():
            for key, count in values.items():
                if count:
                    inc[f"migrating.counts.{group}.{key}"] = count
        result = self._collection.update_one(
            {"_id": campaign_id, "migrating.id": migration_id}, {"$inc": inc}
        )
        return result.matched_count == 1

    @translate_errors
    def finish_migration(
        self, campaign_id: str, record: MigrationRecord, version: TemplateVersion, now: datetime
    ) -> bool:
        """Record the finished migration and pin ``version``, if the migration is still
        at the revision ``record`` was read at (nothing counted since)."""
        pin = {"template_version": version.version, "template_hash": version.content_hash}
        result = self._collection.update_one(
            {"_id": campaign_id, "migrating.id": record.id, "migrating.revision": record.revision},
            {
                "$set": {**pin, "updated_at": now},
                "$push": {"migrations": record.finished(now)},
                "$unset": {"migrating": ""},
            },
        )
        return result.matched_count == 1


__all__ = ["MongoCampaignRepository"]
