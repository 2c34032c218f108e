"""What a progression decides and what applying it causes: decisions, outbound envelopes,
stage transitions and the campaign metrics delta. Pure data."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Action(StrEnum):
    SEND = "send"
    ADVANCE = "advance"
    COMPLETE = "complete"
    FAIL = "fail"
    OPT_OUT = "opt_out"
    CANCEL = "cancel"
    WAIT = "wait"
    NONE = "none"


TERMINAL_ACTIONS = frozenset({Action.COMPLETE, Action.FAIL, Action.OPT_OUT, Action.CANCEL})


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    next_stage: str | None = None
    step: int | None = None
    next_action_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "reason": self.reason,
            "next_stage": self.next_stage,
            "step": self.step,
            "next_action_at": self.next_action_at,
        }


@dataclass
class MetricsDelta:
    """Changes to one campaign's metrics document caused by some transitions."""

    total_recipients: int = 0
    active: int = 0
    completed: int = 0
    failed: int = 0
    opted_out: int = 0
    cancelled: int = 0
    invalid_recipients: int = 0
    sent: int = 0
    received: int = 0
    stage_entered: Counter[str] = field(default_factory=Counter)
    stage_completed: Counter[str] = field(default_factory=Counter)
    stage_duration: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    # Transitions that happened, (from stage, to stage or "exit:<outcome>") -> count.
    funnel: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Sends held back by a frequency cap (deferred, not dropped).
    deferred: int = 0
    # A/B splits: (stage, variant, counter) -> count, counter e.g. "sent", "intents.buy".
    variants: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    # The holdout's own counts ("conversations", "active", "completed", "replies", ...).
    holdout: Counter[str] = field(default_factory=Counter)
    # Goal conversions, by path under ``goals`` ("purchased.converted", ...: goals.py).
    goals: Counter[str] = field(default_factory=Counter)
    # Replies held for review: "pending" (+1 held, -1 resolved) and "resolved".
    reviews: Counter[str] = field(default_factory=Counter)

    def add(self, other: MetricsDelta) -> None:
        self.total_recipients += other.total_recipients
        self.active += other.active
        self.completed += other.completed
        self.failed += other.failed
        self.opted_out += other.opted_out
        self.cancelled += other.cancelled
        self.invalid_recipients += other.invalid_recipients
        self.sent += other.sent
        self.received += other.received
        self.stage_entered.update(other.stage_entered)
        self.stage_completed.update(other.stage_completed)
        for stage, seconds in other.stage_duration.items():
            self.stage_duration[stage] += seconds
        self.funnel.update(other.funnel)
        self.deferred += other.deferred
        self.variants.update(other.variants)
        self.holdout.update(other.holdout)
        self.goals.update(other.goals)
        self.reviews.update(other.reviews)

    def is_empty(self) -> bool:
        return not (
            self.total_recipients
            or self.active
            or self.completed
            or self.failed
            or self.opted_out
            or self.cancelled
            or self.invalid_recipients
            or self.sent
            or self.received
            or +self.stage_entered
            or +self.stage_completed
            or any(self.stage_duration.values())
            or +self.funnel
            or self.deferred
            or any(self.variants.values())
            or any(self.holdout.values())
            or any(self.goals.values())
            or any(self.reviews.values())
        )


@dataclass(frozen=True)
class OutboundEnvelope:
    """A message the delivering service must send (written to the outbox)."""

    message_id: str
    conversation_id: str
    campaign_id: str
    user_id: str
    channel: str
    content: str
    stage: str
    step: int
    created_at: datetime
    variant: str | None = None  # the A/B split variant it carries, if any

    def outbox_row(self) -> dict[str, Any]:
        """The outbox document that publishes it (``_id`` = message id; ``pending``)."""
        return {
            "_id": self.message_id,
            "conversation_id": self.conversation_id,
            "campaign_id": self.campaign_id,
            "user_id": self.user_id,
            "channel": self.channel,
            "content": self.content,
            "stage": self.stage,
            "step": self.step,
            "status": "pending",
            "created_at": self.created_at,
            # The A/B variant it carries, for the delivering service and reports.
            **({"metadata": {"variant": self.variant}} if self.variant is not None else {}),
        }


@dataclass(frozen=True)
class StageTransition:
    from_stage: str
    to_stage: str | None  # None when the conversation finished in from_stage
    outcome: str | None = None


@dataclass
class Effects:
    outbound: list[OutboundEnvelope] = field(default_factory=list)
    transitions: list[StageTransition] = field(default_factory=list)
    delta: MetricsDelta = field(default_factory=MetricsDelta)
    decisions: list[Decision] = field(default_factory=list)


__all__ = [
    "TERMINAL_ACTIONS",
    "Action",
    "Decision",
    "Effects",
    "MetricsDelta",
    "OutboundEnvelope",
    "StageTransition",
]
