"""The campaign metrics document (collection ``campaign_metrics``, ``_id`` = campaign id),
in the seed's shape: counters, per-stage metrics with derived averages, message metrics."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from campaign_worker.domain.documents import DocumentModel, NonEmptyStr, UtcDatetime


class StageMetrics(DocumentModel):
    entered: int = Field(default=0, ge=0)
    completed: int = Field(default=0, ge=0)
    avg_duration_seconds: float = Field(default=0.0, ge=0)
    # Stored so the average stays exact under concurrent $inc; avg is derived from it.
    total_duration_seconds: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _derive_average(self) -> StageMetrics:
        if "total_duration_seconds" not in self.model_fields_set and self.avg_duration_seconds:
            # A document in the seed's shape carries only the average: keep it.
            total = self.avg_duration_seconds * self.completed
            object.__setattr__(self, "total_duration_seconds", total)
            return self
        if self.completed:
            average = self.total_duration_seconds / self.completed
            if average != self.avg_duration_seconds:
                object.__setattr__(self, "avg_duration_seconds", average)
        return self


class MessageMetrics(DocumentModel):
    total_sent: int = Field(default=0, ge=0)
    total_received: int = Field(default=0, ge=0)
    response_rate: float = Field(default=0.0, ge=0)
    # Sends held back by the cross-campaign frequency cap (each deferral counted).
    deferred: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _derive_rate(self) -> MessageMetrics:
        # The seed's example: 120 received / 250 sent = 0.48.
        rate = self.total_received / self.total_sent if self.total_sent else 0.0
        if rate != self.response_rate:
            object.__setattr__(self, "response_rate", rate)
        return self


class CampaignMetrics(DocumentModel):
    """Per-campaign aggregate (collection ``campaign_metrics``, ``_id`` = campaign_id)."""

    campaign_id: NonEmptyStr
    total_recipients: int = Field(default=0, ge=0)
    active_conversations: int = Field(default=0, ge=0)
    completed_conversations: int = Field(default=0, ge=0)
    failed_conversations: int = Field(default=0, ge=0)
    opted_out_conversations: int = Field(default=0, ge=0)
    cancelled_conversations: int = Field(default=0, ge=0)
    invalid_recipients: int = Field(default=0, ge=0)
    stage_metrics: dict[str, StageMetrics] = Field(default_factory=dict)
    message_metrics: MessageMetrics = Field(default_factory=MessageMetrics)
    # Transitions that happened: from stage -> to stage (or "exit:<outcome>") -> count.
    funnel: dict[str, dict[str, int]] = Field(default_factory=dict)
    # Messages per channel and delivery status ({"webhook": {"sent": 3, "delivered": 2}}),
    # and the recent "<message_id>:<status>" keys already counted (kept out of reads).
    delivery: dict[str, dict[str, int]] = Field(default_factory=dict)
    delivery_counted: list[str] = Field(default_factory=list)
    updated_at: UtcDatetime
    # A/B splits: stage -> variant -> {sent, conversations, replies, advanced, intents}.
    variants: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    # The holdout's conversations by outcome, and its replies.
    holdout: dict[str, int] = Field(default_factory=dict)
    # Goal conversions per goal event: converted, seconds_to_convert, per stage, per
    # variant and for the holdout (domain/goals.py).
    goals: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Replies held for review: {"pending": ..., "resolved": ...}.
    reviews: dict[str, int] = Field(default_factory=dict)
    # Bumped by every write; lets the reconcile detect concurrent increments.
    revision: int = Field(default=0, ge=0)
    # Writers that may have written conversations but not yet their $inc (token -> since).
    inflight: dict[str, UtcDatetime] = Field(default_factory=dict)


Number = int | float


class StoredMetrics(BaseModel):
    """The metrics document as stored, unchecked: a counter may have drifted below zero
    until the reconcile corrects it (``CampaignMetrics`` is the checked view the seed's
    method returns). ``document()`` gives back what was read, unknown fields included."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str = Field(alias="_id")
    campaign_id: str | None = None
    total_recipients: Number = 0
    active_conversations: Number = 0
    completed_conversations: Number = 0
    failed_conversations: Number = 0
    opted_out_conversations: Number = 0
    cancelled_conversations: Number = 0
    invalid_recipients: Number = 0
    stage_metrics: dict[str, dict[str, Number]] = Field(default_factory=dict)
    message_metrics: dict[str, Number] = Field(default_factory=dict)
    funnel: dict[str, dict[str, Number]] = Field(default_factory=dict)
    delivery: dict[str, dict[str, Number]] = Field(default_factory=dict)
    delivery_counted: list[str] = Field(default_factory=list)
    variants: dict[str, dict[str, dict[str, Number | dict[str, Number]]]] = Field(
        default_factory=dict
    )
    holdout: dict[str, Number] = Field(default_factory=dict)
    goals: dict[str, Any] = Field(default_factory=dict)
    reviews: dict[str, Number] = Field(default_factory=dict)
    updated_at: UtcDatetime | None = None
    # Bumped by every write: a reader sees whether anything landed between two reads.
    revision: int = 0
    # Registered writers (token -> since), whose increments are still on their way.
    inflight: dict[str, UtcDatetime] = Field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        """The fields as stored (without ``_id``)."""
        return self.model_dump(exclude_unset=True, exclude={"id"})
