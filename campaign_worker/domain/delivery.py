"""Delivery rules, pure: statuses, retry timing, webhook signatures, what a status does.

An outbox row moves ``pending -> sending -> sent | failed`` (``sending`` is leased: a row
whose lease expired is claimed again). Providers then report ``delivered``, ``bounced``,
``failed`` or ``complained`` through ``record_delivery_status``; a hard bounce or a
complaint ends the conversation and suppresses the address.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from campaign_worker.domain.documents import UtcDatetime

SIGNATURE_HEADER = "X-Campaign-Signature"
TIMESTAMP_HEADER = "X-Campaign-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
# Channels this worker sends itself; any other name is left in the outbox for an
# external deliverer ("outbox", or a name such as "sms" that only that service knows).
DISPATCHED_CHANNELS = frozenset({"webhook", "smtp"})
DEFAULT_CHANNEL = "default"


class RowStatus(StrEnum):
    """Where an outbox row is in dispatch."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class DeliveryStatus(StrEnum):
    """What is known of a message's delivery (latest kept on its history entry)."""

    SENT = "sent"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    FAILED = "failed"
    COMPLAINED = "complained"


# What a provider may report through record_delivery_status.
REPORTED_STATUSES = frozenset(
    {
        DeliveryStatus.DELIVERED,
        DeliveryStatus.BOUNCED,
        DeliveryStatus.FAILED,
        DeliveryStatus.COMPLAINED,
    }
)


def inherit_channels(data: Any) -> Any:
    """Give each message that names no ``channel`` the nearest one named above it
    (stage, campaign type, template): messages carry the channel they go out on."""
    if not isinstance(data, dict) or not isinstance(data.get("campaign_types"), dict):
        return data
    types = {}
    for name, type_data in data["campaign_types"].items():
        if isinstance(type_data, dict) and isinstance(type_data.get("stages"), list):
            inherited = type_data.get("channel") or data.get("channel")
            stages = [_stage_channels(stage, inherited) for stage in type_data["stages"]]
            type_data = {**type_data, "stages": stages}
        types[name] = type_data
    return {**data, "campaign_types": types}


def _stage_channels(stage: Any, inherited: Any) -> Any:
    if not isinstance(stage, dict) or not isinstance(stage.get("messages"), list):
        return stage
    channel = stage.get("channel") or inherited
    if channel is None:
        return stage
    messages = [
        {**message, "channel": channel}
        if isinstance(message, dict) and "channel" not in message
        else message
        for message in stage["messages"]
    ]
    return {**stage, "messages": messages}


def status_rank(status: DeliveryStatus) -> int:
    """Which status is the latest: a higher rank wins, then the later time. ``sent`` ranks
    below what a provider reports, which it always precedes, whatever the clocks say."""
    return 0 if status == DeliveryStatus.SENT else 1


def resolve_channel(channel: str, default_channel: str) -> str:
    """The channel a row goes out on: a template's ``default`` is the configured one."""
    return default_channel if channel == DEFAULT_CHANNEL else channel


def ends_conversation(status: DeliveryStatus, detail: Any) -> bool:
    """A complaint, or a bounce that is not marked soft (``{"bounce_type": "soft"}``)."""
    if status == DeliveryStatus.COMPLAINED:
        return True
    if status != DeliveryStatus.BOUNCED:
        return False
    return not (isinstance(detail, Mapping) and detail.get("bounce_type") == "soft")


def retry_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds before attempt ``attempt + 1``: exponential backoff with full jitter,
    capped; never sooner than a provider's ``Retry-After``."""
    ceiling = min(cap, base * (2 ** max(attempt - 1, 0)))
    delay = (rng or random).uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` as seconds from ``now`` (delta-seconds or an HTTP date)."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max((when - now) / timedelta(seconds=1), 0.0)


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>.<body>"`` (sent as ``v1=<hex>``)."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


__all__ = [
    "DEFAULT_CHANNEL",
    "DISPATCHED_CHANNELS",
    "IDEMPOTENCY_HEADER",
    "REPORTED_STATUSES",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Attempt",
    "DeliveryEvent",
    "DeliveryStatus",
    "LatestStatus",
    "OutboxRow",
    "Outgoing",
    "RowStatus",
    "ends_conversation",
    "inherit_channels",
    "parse_retry_after",
    "resolve_channel",
    "retry_delay",
    "signature",
    "status_rank",
]


@dataclass(frozen=True)
class Outgoing:
    """One message as a channel sends it."""

    message_id: str
    campaign_id: str
    conversation_id: str
    user_id: str
    channel: str
    address: str
    content: str
    stage: str
    step: int
    created_at: datetime

    def payload(self) -> dict[str, Any]:
        """The webhook's JSON body."""
        return {
            "message_id": self.message_id,
            "campaign_id": self.campaign_id,
            "conversation_id": self.conversation_id,
            "user_id": self.user_id,
            "stage": self.stage,
            "step": self.step,
            "content": self.content,
            "created_at": self.created_at.isoformat(),
        }


class DeliveryEvent(BaseModel):
    """A delivery status recorded for a message (once per status)."""

    model_config = ConfigDict(extra="ignore")

    status: str
    at: UtcDatetime
    detail: JsonValue = None  # what the provider or the dispatcher said
    recorded_at: UtcDatetime | None = None


class LatestStatus(BaseModel):
    """The latest status of a message (higher rank, then later time wins)."""

    model_config = ConfigDict(extra="ignore")

    status: str
    rank: int
    at: UtcDatetime
    detail: JsonValue = None


class OutboxRow(BaseModel):
    """An outbox row (collection ``outbox``, ``_id`` = message id) as delivery reads it."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str = Field(alias="_id")
    conversation_id: str
    campaign_id: str
    user_id: str
    channel: str
    content: str = ""  # left out where delivery does not send
    stage: str
    step: int
    created_at: UtcDatetime
    status: str = RowStatus.PENDING.value
    attempts: int = 0
    delivered_via: str | None = None
    address: str | None = None
    events: list[DeliveryEvent] = Field(default_factory=list)
    delivery: LatestStatus | None = None


@dataclass(frozen=True)
class Attempt:
    """What a send attempt records on its row as it starts."""

    delivered_via: str
    address: str
    attempted_at: datetime
    attempted_by: str


@dataclass(frozen=True)
class RowMove:
    """A leased row's move out of ``sending``: to ``sent``, ``failed``, or back to
    ``pending`` (a retry at ``next_attempt_at``, a deferral, a hand-back)."""

    message_id: str
    status: RowStatus
    at: datetime | None = None  # sent_at or failed_at
    provider_id: str | None = None
    reason: str | None = None  # last_error
    channel: str | None = None  # delivered_via, on a failure
    next_attempt_at: datetime | None = None
    uncount_attempt: bool = False  # an attempt was counted but no send started


@dataclass(frozen=True)
class StatusWrite:
    """A status the dispatcher records for one message: the event on its row (once per
    status) and the latest status on the row and on its history entry."""

    message_id: str
    conversation_id: str
    event: DeliveryEvent
    latest: LatestStatus


@dataclass(frozen=True)
class StatusCount:
    """One message in ``delivery.<channel>.<status>`` of its campaign, once per key."""

    channel: str
    status: str
    key: str
