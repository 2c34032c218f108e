"""What ``campaign-worker demo`` watches while a worker runs its campaign: the campaign's
status, its metrics, where each active conversation is (for the simulated audience), the
outcomes, and the webhook deliveries. Read-only, projected, polled every half second."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pymongo.collection import Collection
from pymongo.database import Database

from campaign_worker.adapters.mongo import CAMPAIGNS, CONVERSATIONS, METRICS, OUTBOX
from campaign_worker.adapters.mongo_suppressions import SUPPRESSIONS
from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.documents import ConversationState, to_utc

# Only what the simulated audience reads: it is polled.
_PLACE_FIELDS = {"user_id": 1, "current_stage": 1, "stage_step": 1, "stages.entered_at": 1}


@dataclass(frozen=True)
class ConversationPlace:
    """Where an active conversation is: its stage, the messages sent in it, and since when."""

    conversation_id: str
    user_id: str
    stage: str
    stage_step: int
    entered_at: datetime

    @classmethod
    def of(cls, state: ConversationState) -> ConversationPlace:
        return cls(
            state.id,
            state.user_id,
            state.current_stage,
            state.stage_step,
            state.stages[-1].entered_at,
        )


class MongoDemoReads:
    def __init__(self, db: Database[Doc]) -> None:
        self._conversations: Collection[Doc] = db[CONVERSATIONS]
        self._campaigns: Collection[Doc] = db[CAMPAIGNS]
        self._metrics: Collection[Doc] = db[METRICS]
        self._outbox: Collection[Doc] = db[OUTBOX]
        self._suppressions: Collection[Doc] = db[SUPPRESSIONS]

    def campaign_status(self, campaign_id: str) -> str | None:
        found = self._campaigns.find_one({"_id": campaign_id}, {"status": 1})
        return None if found is None else str(found["status"])

    def metrics(self, campaign_id: str) -> Doc:
        """The metrics document as stored (empty until the campaign has one)."""
        return self._metrics.find_one({"_id": campaign_id}) or {}

    def active_places(self, campaign_id: str) -> list[ConversationPlace]:
        found = self._conversations.find(
            {"campaign_id": campaign_id, "status": "active"}, _PLACE_FIELDS
        )
        return [
            ConversationPlace(
                str(doc["_id"]),
                str(doc["user_id"]),
                str(doc["current_stage"]),
                int(doc.get("stage_step") or 0),
                to_utc(doc["stages"][-1]["entered_at"]),
            )
            for doc in found
        ]

    def outcomes(self, campaign_id: str) -> dict[str, int]:
        """Conversations by status, counted from the documents."""
        found = self._conversations.aggregate(
            [
                {"$match": {"campaign_id": campaign_id}},
                {"$group": {"_id": "$status", "n": {"$sum": 1}}},
            ]
        )
        return {str(row["_id"]): int(row["n"]) for row in found}

    def deliveries_waiting(self, campaign_id: str) -> int:
        """Outbox rows not yet sent or failed."""
        waiting = {"campaign_id": campaign_id, "status": {"$in": ["pending", "sending"]}}
        return self._outbox.count_documents(waiting)

    def statuses_recorded(self, campaign_id: str, statuses: Sequence[str]) -> int:
        """Outbox rows whose latest delivery status is one of ``statuses``."""
        recorded = {"campaign_id": campaign_id, "delivery.status": {"$in": list(statuses)}}
        return self._outbox.count_documents(recorded)

    def sends_retried(self, campaign_id: str) -> int:
        """Messages sent more than once: a send that failed or timed out is tried again
        under the same Idempotency-Key (the receiver may have taken the first one)."""
        return self._outbox.count_documents({"campaign_id": campaign_id, "attempts": {"$gt": 1}})

    def suppressed_by_delivery(self) -> int:
        """Addresses the delivering side suppressed (bounces, complaints)."""
        return self._suppressions.count_documents({"source": {"$in": ["bounce", "complaint"]}})

    def ended_by_bounce(self, campaign_id: str) -> int:
        reason = {"campaign_id": campaign_id, "status_reason": {"$regex": "^hard bounce"}}
        return self._conversations.count_documents(reason)


__all__ = ["ConversationPlace", "MongoDemoReads"]
