"""Builders for the contract suite: conversations, campaigns, envelopes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from campaign_worker.bootstrap import Repositories
from campaign_worker.domain.campaign_documents import Campaign, CampaignStatus
from campaign_worker.domain.documents import (
    ConversationContext,
    ConversationState,
    Direction,
    Message,
    StageEntry,
    conversation_id_for,
)
from campaign_worker.domain.effects import OutboundEnvelope
from campaign_worker.domain.partitions import partition_of
from campaign_worker.service.delivery_ports import DeliveryRows, DeliveryStatuses

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
STAGES = ["awareness", "consideration", "decision"]


@dataclass
class Store:
    """The ports of one backend, and its raw documents (``db[collection]``)."""

    kind: str
    db: Any
    repos: Repositories
    rows: DeliveryRows
    statuses: DeliveryStatuses


def state(
    user_id: str,
    *,
    campaign_id: str = "camp-1",
    next_action_at: datetime | None = START,
    status: str = "active",
    stage: str = STAGES[0],
    **fields: Any,
) -> ConversationState:
    conversation_id = conversation_id_for(campaign_id, user_id)
    return ConversationState(
        id=conversation_id,
        partition=partition_of(conversation_id),
        user_id=user_id,
        campaign_id=campaign_id,
        campaign_type="sales",
        current_stage=stage,
        stages=[StageEntry(name=stage, entered_at=START)],
        context=ConversationContext(template_id="default", available_stages=STAGES),
        created_at=START,
        last_active=START,
        next_action_at=next_action_at,
        status=status,
        **fields,
    )


def users(n: int, prefix: str = "user") -> list[str]:
    return [f"{prefix}-{i:04d}" for i in range(n)]


def replied(old: ConversationState, message_id: str, at: datetime = START) -> ConversationState:
    """``old`` with one reply appended (what a reply write changes)."""
    reply = Message(message_id=message_id, direction=Direction.INBOUND, content="hi", timestamp=at)
    metrics = old.metrics.model_copy(
        update={"messages_received": old.metrics.messages_received + 1}
    )
    return old.model_copy(
        update={"message_history": [*old.message_history, reply], "metrics": metrics}
    )


def sent(old: ConversationState, message_id: str, at: datetime = START) -> ConversationState:
    """``old`` with one outbound message recorded (to be published)."""
    message = Message(
        message_id=message_id,
        direction=Direction.OUTBOUND,
        content="hello",
        timestamp=at,
        metadata={"stage": old.current_stage, "step": 0, "entry": 0},
    )
    metrics = old.metrics.model_copy(update={"messages_sent": old.metrics.messages_sent + 1})
    return old.model_copy(
        update={"message_history": [*old.message_history, message], "metrics": metrics}
    )


def campaign(
    campaign_id: str = "camp-1",
    *,
    status: CampaignStatus = CampaignStatus.SCHEDULED,
    start_at: datetime | None = None,
    created_at: datetime = START,
    recipients: Any = None,
) -> Campaign:
    return Campaign.model_validate(
        {
            "_id": campaign_id,
            "name": "Spring sale",
            "campaign_type": "sales",
            "template_id": "default",
            "recipients": recipients
            if recipients is not None
            else [{"user_id": f"user-{i:04d}"} for i in range(3)],
            "status": status.value,
            "start_at": start_at,
            "created_at": created_at,
            "updated_at": created_at,
        }
    )


def envelope(
    message_id: str,
    *,
    conversation_id: str = "conv-1",
    campaign_id: str = "camp-1",
    user_id: str = "user-0000",
    channel: str = "webhook",
    created_at: datetime = START,
    variant: str | None = None,
) -> OutboundEnvelope:
    return OutboundEnvelope(
        message_id=message_id,
        conversation_id=conversation_id,
        campaign_id=campaign_id,
        user_id=user_id,
        channel=channel,
        content="hello",
        stage="awareness",
        step=0,
        created_at=created_at,
        variant=variant,
    )
