"""Campaigns and their metrics documents in memory (``CampaignRepository``,
``CampaignMetricsRepository``): the same results as ``mongo_campaigns`` and
``mongo_metrics`` for the same calls (``tests/contract``)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime

from campaign_worker.adapters.memory_conversations import sort_key
from campaign_worker.adapters.memory_store import (
    MemoryDatabase,
    apply_update,
    get_path,
    matches,
    set_path,
    unset_path,
)
from campaign_worker.adapters.mongo import CAMPAIGNS, METRICS
from campaign_worker.adapters.mongo_metrics import metrics_inc
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
from campaign_worker.domain.documents import parse_document
from campaign_worker.domain.effects import MetricsDelta
from campaign_worker.domain.errors import InvalidDocumentError
from campaign_worker.domain.metrics_documents import StoredMetrics
from campaign_worker.domain.versions import TemplateVersion

_AUDIENCE_FIELDS = ("user_id", "attributes", "timezone")


class MemoryCampaignRepository:
    def __init__(self, db: MemoryDatabase) -> None:
        self._db = db
        self._docs = db.documents(CAMPAIGNS)

    def insert(self, campaign: Campaign) -> bool:
        with self._db.lock:
            if campaign.id in self._docs:
                return False
            self._docs[campaign.id] = campaign.to_mongo()
            return True

    def get(self, campaign_id: str, *, with_recipients: bool = False) -> StoredCampaign | None:
        with self._db.lock:
            doc = self._docs.get(campaign_id)
            return None if doc is None else _stored(doc, with_recipients)

    def _update(
        self, campaign_id: str, keep: Callable[[Doc], bool], update: Doc
    ) -> StoredCampaign | None:
        """Apply ``update`` if the campaign is there and ``keep`` says so; the result."""
        with self._db.lock:
            doc = self._docs.get(campaign_id)
            if doc is None or not keep(doc):
                return None
            apply_update(doc, update)
            return _stored(doc, with_recipients=False)

    def transition(
        self,
        campaign_id: str,
        allowed_from: Iterable[CampaignStatus],
        to: CampaignStatus,
        now: datetime,
    ) -> StoredCampaign | None:
        return self._move(campaign_id, allowed_from, to, now, {})

    def finish_initialization(
        self,
        campaign_id: str,
        allowed_from: Iterable[CampaignStatus],
        now: datetime,
        total_recipients: int,
        checkpoint: InitCheckpoint,
    ) -> StoredCampaign | None:
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
        allowed = {status.value for status in allowed_from}
        update: Doc = {"$set": {"status": to.value, "updated_at": now, **extra}}
        if to != CampaignStatus.INITIALIZING:
            update["$unset"] = {"lease_owner": "", "lease_until": ""}
        return self._update(campaign_id, lambda doc: doc.get("status") in allowed, update)

    def claim_for_initialization(
        self, now: datetime, owner: str, lease_until: datetime, limit: int
    ) -> list[StoredCampaign]:
        def due(doc: Doc) -> bool:
            if doc.get("status") == CampaignStatus.SCHEDULED.value:
                start = doc.get("start_at")
                return start is None or start <= now
            lease = doc.get("lease_until")
            initializing = doc.get("status") == CampaignStatus.INITIALIZING.value
            return initializing and lease is not None and lease <= now

        claimed = []
        lease = {
            "status": CampaignStatus.INITIALIZING.value,
            "lease_owner": owner,
            "lease_until": lease_until,
            "updated_at": now,
        }
        with self._db.lock:
            for _ in range(limit):
                candidates = [doc for doc in self._docs.values() if due(doc)]
                if not candidates:
                    break
                doc = min(candidates, key=lambda d: sort_key(d.get("start_at")))
                apply_update(doc, {"$set": lease})
                claimed.append(_stored(doc, with_recipients=False))
        return claimed

    def find_by_status(self, statuses: Iterable[CampaignStatus]) -> list[StoredCampaign]:
        wanted = {status.value for status in statuses}
        with self._db.lock:
            return [
                _stored(doc, with_recipients=False)
                for doc in self._docs.values()
                if doc.get("status") in wanted and doc.get("settled_at") is None
            ]

    def with_entry_events(self, events: Sequence[str]) -> list[StoredCampaign]:
        wanted, enrolling = set(events), {"scheduled", "initializing", "running", "paused"}
        with self._db.lock:
            return [
                _stored(doc, with_recipients=False)
                for doc in self._docs.values()
                if doc.get("entry_event") in wanted and doc.get("status") in enrolling
            ]

    def list_recent(self, status: CampaignStatus | None, limit: int) -> list[StoredCampaign]:
        with self._db.lock:
            found = [
                doc
                for doc in self._docs.values()
                if status is None or doc.get("status") == status.value
            ]
            found.sort(key=lambda doc: doc["_id"])
            found.sort(key=lambda doc: sort_key(doc.get("created_at")), reverse=True)
            return [_stored(doc, with_recipients=False) for doc in found[:limit]]

    def mark_settled(self, campaign_id: str, now: datetime) -> bool:
        def cancelled(doc: Doc) -> bool:
            unsettled = doc.get("settled_at") is None
            return doc.get("status") == CampaignStatus.CANCELLED.value and unsettled

        update = {"$set": {"settled_at": now, "updated_at": now}}
        return self._update(campaign_id, cancelled, update) is not None

    def iter_recipients(
        self,
        campaign: StoredCampaign,
        batch_size: int,
        position: AudiencePosition | None = None,
        read_ahead: int = 1,
    ) -> Iterator[tuple[list[AudienceRow], AudiencePosition]]:
        recipients = campaign.recipients
        if isinstance(recipients, list):
            yield from inline_audience(recipients, batch_size, position)
            return
        if not isinstance(recipients, dict):
            raise InvalidDocumentError(f"campaign {campaign.id!r} has no recipients")
        after = None if position is None else position.after_id
        with self._db.lock:
            rows = [
                copy.deepcopy(doc)
                for doc in self._db.documents(str(recipients["collection"])).values()
                if matches(doc, recipients.get("query") or {})
                and (after is None or doc["_id"] > after)
            ]
        rows.sort(key=lambda doc: doc["_id"])
        for begin in range(0, len(rows), batch_size):
            batch = rows[begin : begin + batch_size]
            projected = [{k: row[k] for k in _AUDIENCE_FIELDS if k in row} for row in batch]
            yield (
                [audience_row(row) for row in projected],
                AudiencePosition(after_id=batch[-1]["_id"]),
            )

    def has_recipients(self, campaign: Campaign) -> bool:
        recipients = campaign.recipients
        if isinstance(recipients, list):
            return bool(recipients)
        with self._db.lock:
            rows = self._db.documents(recipients.collection).values()
            return any(matches(row, recipients.query) for row in rows)

    def save_init_progress(
        self, campaign_id: str, checkpoint: InitCheckpoint, lease_until: datetime, now: datetime
    ) -> bool:
        progress = {
            "init_progress": checkpoint.as_doc(),
            "lease_until": lease_until,
            "updated_at": now,
        }
        initializing = CampaignStatus.INITIALIZING.value
        keep = lambda doc: doc.get("status") == initializing  # noqa: E731
        return self._update(campaign_id, keep, {"$set": progress}) is not None

    def begin_migration(
        self, campaign_id: str, record: MigrationRecord, now: datetime
    ) -> StoredCampaign:
        begun = {"$set": {"migrating": record.to_mongo(), "updated_at": now}}
        self._update(campaign_id, lambda doc: doc.get("migrating") is None, begun)
        found = self.get(campaign_id)
        if found is None:
            raise InvalidDocumentError(f"campaign {campaign_id!r} disappeared")
        return found

    def count_migration(
        self, campaign_id: str, migration_id: str, counts: dict[str, dict[str, int]]
    ) -> bool:
        inc = {
            f"migrating.counts.{group}.{key}": count
            for group, values in counts.items()
            for key, count in values.items()
            if count
        }
        update = {"$inc": {"migrating.revision": 1, **inc}}
        keep = lambda doc: get_path(doc, "migrating.id") == migration_id  # noqa: E731
        return self._update(campaign_id, keep, update) is not None

    def finish_migration(
        self, campaign_id: str, record: MigrationRecord, version: TemplateVersion, now: datetime
    ) -> bool:
        def current(doc: Doc) -> bool:
            migrating = doc.get("migrating") or {}
            return migrating.get("id") == record.id and migrating.get("revision") == record.revision

        update = {
            "$set": {
                "template_version": version.version,
                "template_hash": version.content_hash,
                "updated_at": now,
            },
            "$push": {"migrations": record.finished(now)},
            "$unset": {"migrating": ""},
        }
        return self._update(campaign_id, current, update) is not None


def _stored(doc: Doc, with_recipients: bool) -> StoredCampaign:
    shown = doc if with_recipients else {k: v for k, v in doc.items() if k != "recipients"}
    return StoredCampaign.model_validate(copy.deepcopy(shown))


class MemoryCampaignMetricsRepository:
    """Counters by increments; the derived fields recomputed in the same operation, as
    ``mongo_metrics``' update pipelines do."""

    def __init__(self, db: MemoryDatabase) -> None:
        self._db = db
        self._docs = db.documents(METRICS)

    def _upserted(self, campaign_id: str) -> Doc:
        return self._docs.setdefault(campaign_id, {"_id": campaign_id})

    def ensure(self, campaign_id: str, now: datetime) -> None:
        with self._db.lock:
            if campaign_id not in self._docs:
                self._docs[campaign_id] = {
                    "_id": campaign_id,
                    "campaign_id": campaign_id,
                    "updated_at": now,
                }

    def begin(self, campaign_id: str, token: str, now: datetime) -> None:
        with self._db.lock:
            fresh = campaign_id not in self._docs
            doc = self._upserted(campaign_id)
            apply_update(doc, {"$set": {f"inflight.{token}": now}, "$inc": {"revision": 1}})
            if fresh:
                doc.update(campaign_id=campaign_id, updated_at=now)

    def register(self, campaign_id: str, tokens: Sequence[str], now: datetime) -> None:
        if tokens:
            with self._db.lock:
                _increment(self._upserted(campaign_id), campaign_id, {}, now, (), tokens)

    def apply_delta(
        self,
        campaign_id: str,
        delta: MetricsDelta,
        now: datetime,
        *,
        token: str | None = None,
        register: Sequence[str] = (),
    ) -> None:
        inc = metrics_inc(delta)
        if not inc and token is None and not register:
            return
        drop = [token] if token else ()
        with self._db.lock:
            _increment(self._upserted(campaign_id), campaign_id, inc, now, drop, register)

    def get(self, campaign_id: str) -> StoredMetrics | None:
        with self._db.lock:
            doc = copy.deepcopy(self._docs.get(campaign_id))
        if doc is None:
            return None
        return parse_document(StoredMetrics, doc, what=f"metrics of {campaign_id}")

    def correct(
        self,
        campaign_id: str,
        drift: dict[str, float],
        seen_revision: int,
        now: datetime,
        drop: Sequence[str] = (),
    ) -> bool:
        with self._db.lock:
            doc = self._docs.get(campaign_id)
            if doc is None:
                if seen_revision:
                    return False
                doc = self._upserted(campaign_id)
            elif (doc.get("revision") or 0) != seen_revision or (
                not seen_revision and doc.get("revision") is not None
            ):
                return False  # written since it was read
            _increment(doc, campaign_id, drift, now, drop, ())
            return True


def _increment(
    doc: Doc,
    campaign_id: str,
    inc: dict[str, float],
    now: datetime,
    drop: Sequence[str],
    register: Sequence[str],
) -> None:
    """``mongo_metrics.increment_pipeline`` on a document in memory."""
    for path, amount in inc.items():
        current = get_path(doc, path)
        set_path(doc, path, (current if isinstance(current, int | float) else 0) + amount)
    doc["revision"] = (doc.get("revision") or 0) + 1
    doc["updated_at"] = now
    doc["campaign_id"] = campaign_id
    sent = get_path(doc, "message_metrics.total_sent")
    received = get_path(doc, "message_metrics.total_received")
    sent = sent if isinstance(sent, int | float) else 0
    received = received if isinstance(received, int | float) else 0
    set_path(doc, "message_metrics.response_rate", received / sent if sent > 0 else 0.0)
    stages = doc.get("stage_metrics") or {}
    for values in stages.values():
        completed = values.get("completed") or 0
        total = values.get("total_duration_seconds") or 0
        values["avg_duration_seconds"] = total / completed if completed > 0 else 0.0
    doc["stage_metrics"] = stages
    for token in drop:
        unset_path(doc, f"inflight.{token}")
    for token in register:
        set_path(doc, f"inflight.{token}", now)


__all__ = ["MemoryCampaignMetricsRepository", "MemoryCampaignRepository"]
