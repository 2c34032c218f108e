"""The campaign metrics repository (collection ``campaign_metrics``, ``_id`` = campaign id).

Counters change by increments only, in update pipelines that also store the derived
fields (``message_metrics.response_rate``, per-stage ``avg_duration_seconds``) in the same
atomic write, so the stored document always has the documented shape.

Writers register before they write conversations (``begin``) and deregister with their
increment (``apply_delta(token=...)``); the reconcile defers while a registration is
live, so it never counts a batch whose states landed but whose increment has not.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from campaign_worker.adapters.mongo import METRICS, translate_errors
from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.documents import parse_document
from campaign_worker.domain.effects import MetricsDelta
from campaign_worker.domain.metrics_documents import StoredMetrics


def metrics_inc(delta: MetricsDelta) -> dict[str, float]:
    """Field path -> increment for a metrics delta (zero entries left out)."""
    inc: dict[str, float] = {
        "total_recipients": delta.total_recipients,
        "active_conversations": delta.active,
        "completed_conversations": delta.completed,
        "failed_conversations": delta.failed,
        "opted_out_conversations": delta.opted_out,
        "cancelled_conversations": delta.cancelled,
        "invalid_recipients": delta.invalid_recipients,
        "message_metrics.total_sent": delta.sent,
        "message_metrics.total_received": delta.received,
        "message_metrics.deferred": delta.deferred,
    }
    for (from_stage, to_stage), count in delta.funnel.items():
        inc[f"funnel.{from_stage}.{to_stage}"] = count
    for stage, count in delta.stage_entered.items():
        inc[f"stage_metrics.{stage}.entered"] = count
    for stage, count in delta.stage_completed.items():
        inc[f"stage_metrics.{stage}.completed"] = count
    for stage, seconds in delta.stage_duration.items():
        inc[f"stage_metrics.{stage}.total_duration_seconds"] = seconds
    for (stage, variant, counter), count in delta.variants.items():
        inc[f"variants.{stage}.{variant}.{counter}"] = count
    for counter, count in delta.holdout.items():
        inc[f"holdout.{counter}"] = count
    for path, count in delta.goals.items():
        inc[f"goals.{path}"] = count
    for counter, count in delta.reviews.items():
        inc[f"reviews.{counter}"] = count
    return {key: value for key, value in inc.items() if value}


# Derived fields, recomputed from the counters in the same write.
_DERIVE: Doc = {
    "$set": {
        "message_metrics.response_rate": {
            "$cond": [
                {"$gt": [{"$ifNull": ["$message_metrics.total_sent", 0]}, 0]},
                {
                    "$divide": [
                        {"$ifNull": ["$message_metrics.total_received", 0]},
                        "$message_metrics.total_sent",
                    ]
                },
                0.0,
            ]
        },
        "stage_metrics": {
            "$arrayToObject": {
                "$map": {
                    "input": {"$objectToArray": {"$ifNull": ["$stage_metrics", {}]}},
                    "as": "s",
                    "in": {
                        "k": "$$s.k",
                        "v": {
                            "$mergeObjects": [
                                "$$s.v",
                                {
                                    "avg_duration_seconds": {
                                        "$cond": [
                                            {"$gt": [{"$ifNull": ["$$s.v.completed", 0]}, 0]},
                                            {
                                                "$divide": [
                                                    {
                                                        "$ifNull": [
                                                            "$$s.v.total_duration_seconds",
                                                            0,
                                                        ]
                                                    },
                                                    "$$s.v.completed",
                                                ]
                                            },
                                            0.0,
                                        ]
                                    }
                                },
                            ]
                        },
                    },
                }
            }
        },
    }
}


def increment_pipeline(
    campaign_id: str,
    inc: dict[str, float],
    now: datetime,
    drop: Sequence[str] = (),
    register: Sequence[str] = (),
) -> list[Doc]:
    """An update pipeline: add ``inc``, bump ``revision``, re-derive, drop registrations,
    add registrations (``register``: tasks the writer hands its work over to)."""
    added: Doc = {
        path: {"$add": [{"$ifNull": [f"${path}", 0]}, amount]} for path, amount in inc.items()
    }
    pipeline: list[Doc] = [
        {
            "$set": {
                **added,
                "revision": {"$add": [{"$ifNull": ["$revision", 0]}, 1]},
                "updated_at": now,
                "campaign_id": campaign_id,
            }
        },
        _DERIVE,
    ]
    if drop:
        pipeline.append({"$unset": [f"inflight.{token}" for token in drop]})
    if register:
        pipeline.append({"$set": {f"inflight.{token}": now for token in register}})
    return pipeline


class MongoCampaignMetricsRepository:
    def __init__(self, db: Database[Doc]) -> None:
        self._collection: Collection[Doc] = db[METRICS]

    def initialize(self) -> None:
        return None  # _id is the campaign id; no other lookups

    @translate_errors
    def ensure(self, campaign_id: str, now: datetime) -> None:
        self._collection.update_one(
            {"_id": campaign_id},
            {"$setOnInsert": {"campaign_id": campaign_id, "updated_at": now}},
            upsert=True,
        )

    @translate_errors
    def begin(self, campaign_id: str, token: str, now: datetime) -> None:
        """Register a writer about to change conversations of this campaign."""
        self._collection.update_one(
            {"_id": campaign_id},
            {
                "$set": {f"inflight.{token}": now},
                "$inc": {"revision": 1},
                "$setOnInsert": {"campaign_id": campaign_id, "updated_at": now},
            },
            upsert=True,
        )

    @translate_errors
    def register(self, campaign_id: str, tokens: Sequence[str], now: datetime) -> None:
        """Register writers that are about to be dispatched (one write for all)."""
        if tokens:
            pipeline = increment_pipeline(campaign_id, {}, now, register=tokens)
            self._collection.update_one({"_id": campaign_id}, pipeline, upsert=True)

    @translate_errors
    def apply_delta(
        self,
        campaign_id: str,
        delta: MetricsDelta,
        now: datetime,
        *,
        token: str | None = None,
        register: Sequence[str] = (),
    ) -> None:
        """One atomic increment for a whole batch's changes (and its deregistration, and
        the registration of what it hands over)."""
        inc = metrics_inc(delta)
        if not inc and token is None and not register:
            return
        drop = [token] if token else ()
        pipeline = increment_pipeline(campaign_id, inc, now, drop, register)
        self._collection.update_one({"_id": campaign_id}, pipeline, upsert=True)

    @translate_errors
    def get(self, campaign_id: str) -> StoredMetrics | None:
        doc = self._collection.find_one({"_id": campaign_id})
        return (
            None
            if doc is None
            else parse_document(StoredMetrics, doc, what=f"metrics of {campaign_id}")
        )

    @translate_errors
    def correct(
        self,
        campaign_id: str,
        drift: dict[str, float],
        seen_revision: int,
        now: datetime,
        drop: Sequence[str] = (),
    ) -> bool:
        """Add the drift (and drop dead registrations), only if no other write touched
        the document since it was read (every write bumps ``revision``)."""
        try:
            result = self._collection.update_one(
                {"_id": campaign_id, "revision": seen_revision if seen_revision else None},
                increment_pipeline(campaign_id, drift, now, drop),
                upsert=not seen_revision,
            )
        except DuplicateKeyError:
            return False  # seen without a revision, and written meanwhile: not ours to correct
        return bool(result.modified_count or result.upserted_id is not None)


__all__ = ["MongoCampaignMetricsRepository", "increment_pipeline", "metrics_inc"]
