"""Documents stored in MongoDB, as pydantic v2 models.

Field names and nesting follow the seed's *Conversation State Document* and *Campaign
Metrics Document*. Datetimes are timezone-aware UTC, truncated to milliseconds because
that is what a BSON date holds; ``model_dump()`` keeps them as ``datetime`` so PyMongo
stores BSON dates, never strings.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from campaign_worker.domain.errors import InvalidDocumentError
from campaign_worker.domain.limits import MAX_ATTRIBUTES_BYTES, check_size


def to_utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC (that is how BSON stores them)."""
    if value.tzinfo is UTC and not value.microsecond % 1000:
        return value  # what a tz-aware client reads back: every stored date, every step
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


UtcDatetime = Annotated[datetime, AfterValidator(to_utc)]


def _known_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {value!r}") from exc
    return value


TimezoneName = Annotated[str, AfterValidator(_known_timezone)]
NonEmptyStr = Annotated[str, Field(min_length=1, max_length=512)]


def _bounded_attributes(value: dict[str, Any]) -> dict[str, Any]:
    check_size(value, MAX_ATTRIBUTES_BYTES, "attributes")
    return value


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)


def _without_empty(data: Any, names: tuple[str, ...]) -> Any:
    """Fields added after the seed are left out of stored documents while empty, so a
    document that never used them keeps the seed's shape."""
    if isinstance(data, dict):
        for name in names:
            if name in data and not data[name]:
                del data[name]
    return data


class ConversationStatus(StrEnum):
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    OPTED_OUT = "opted_out"
    CANCELLED = "cancelled"  # its campaign was cancelled while it was active


FINISHED_STATUSES = frozenset(
    {
        ConversationStatus.COMPLETED,
        ConversationStatus.FAILED,
        ConversationStatus.OPTED_OUT,
        ConversationStatus.CANCELLED,
    }
)


class CampaignStatus(StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    INITIALIZING = "initializing"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


# Allowed campaign status moves; anything else is an InvalidStateTransitionError.
CAMPAIGN_TRANSITIONS: dict[CampaignStatus, frozenset[CampaignStatus]] = {
    CampaignStatus.DRAFT: frozenset({CampaignStatus.SCHEDULED, CampaignStatus.CANCELLED}),
    CampaignStatus.SCHEDULED: frozenset(
        {CampaignStatus.INITIALIZING, CampaignStatus.PAUSED, CampaignStatus.CANCELLED}
    ),
    CampaignStatus.INITIALIZING: frozenset(
        {
            CampaignStatus.RUNNING,
            CampaignStatus.SCHEDULED,
            CampaignStatus.PAUSED,
            CampaignStatus.CANCELLED,
        }
    ),
    CampaignStatus.RUNNING: frozenset(
        {CampaignStatus.COMPLETED, CampaignStatus.PAUSED, CampaignStatus.CANCELLED}
    ),
    CampaignStatus.PAUSED: frozenset(
        {CampaignStatus.SCHEDULED, CampaignStatus.RUNNING, CampaignStatus.CANCELLED}
    ),
    CampaignStatus.COMPLETED: frozenset(),
    CampaignStatus.CANCELLED: frozenset(),
}


class Direction(StrEnum):
    OUTBOUND = "outbound"
    INBOUND = "inbound"


class StageEntry(_Doc):
    name: NonEmptyStr
    entered_at: UtcDatetime
    exited_at: UtcDatetime | None = None
    completed: bool = False
    # Names this entry had before a migration renamed its stage (oldest first): its
    # messages and replies recorded under those names still count in it.
    formerly: list[NonEmptyStr] = Field(default_factory=list)

    @property
    def names(self) -> set[str]:
        return {self.name, *self.formerly}

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        return _without_empty(handler(self), ("formerly",))


class Message(_Doc):
    message_id: NonEmptyStr
    direction: Direction
    content: str
    timestamp: UtcDatetime
    metadata: dict[str, Any] = Field(default_factory=dict)


class ConversationContext(_Doc):
    template_id: NonEmptyStr
    available_stages: list[NonEmptyStr] = Field(min_length=1)
    # Recipient attributes fill message placeholders such as {first_name}.
    attributes: dict[str, Any] = Field(default_factory=dict)
    timezone: TimezoneName = "UTC"
    # The template version this conversation runs on; None: its campaign's pin (documents
    # from before versions, and while nothing migrated it).
    template_version: int | None = Field(default=None, ge=1)

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        return _without_empty(handler(self), ("template_version",))


class ConversationMetrics(_Doc):
    messages_sent: int = Field(default=0, ge=0)
    messages_received: int = Field(default=0, ge=0)
    stage_progressions: int = Field(default=0, ge=0)


class ConversationState(_Doc):
    """One recipient's conversation in one campaign (collection ``conversation_states``)."""

    id: NonEmptyStr = Field(alias="_id")
    user_id: NonEmptyStr
    campaign_id: NonEmptyStr
    campaign_type: NonEmptyStr
    current_stage: NonEmptyStr
    stages: list[StageEntry] = Field(min_length=1)
    message_history: list[Message] = Field(default_factory=list)
    context: ConversationContext
    metrics: ConversationMetrics = Field(default_factory=ConversationMetrics)
    status: ConversationStatus = ConversationStatus.ACTIVE
    created_at: UtcDatetime
    last_active: UtcDatetime
    # Beyond the seed: scheduling, leasing and optimistic concurrency.
    next_action_at: UtcDatetime | None = None
    stage_step: int = Field(default=0, ge=0, description="outbound messages sent in this stage")
    status_reason: str | None = None
    finished_at: UtcDatetime | None = None
    # Leases are gone (processing is partitioned); still read on documents that have them.
    lease_owner: str | None = None
    lease_until: UtcDatetime | None = None
    # The bucket that assigns it to a processing range (domain/partitions.py); None on
    # documents created before partitions, which the first range picks up.
    partition: int | None = Field(default=None, ge=0)
    version: int = Field(default=0, ge=0)
    # Tokens of the most recent compare-and-set writes, newest last (capped): lets a
    # writer tell that its write landed even when others have written on top since.
    last_write: list[str] = Field(default_factory=list)
    # Outbound message ids this conversation recorded whose outbox publication has not
    # been confirmed yet, and the write that last added some (see docs/architecture.md,
    # "Outbound path"). A sweep publishes what a crash left here.
    unpublished: list[str] = Field(default_factory=list)
    publish_token: str | None = None
    publish_due_at: UtcDatetime | None = None
    # In the campaign's holdout (domain/splits.py): sent nothing, counted apart. Decided
    # once, when the conversation is created.
    holdout: bool = False

    @field_validator("last_write", mode="before")
    @classmethod
    def _tokens(cls, value: Any) -> Any:
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _stage_consistency(self) -> ConversationState:
        if self.current_stage not in self.context.available_stages:
            raise ValueError(
                f"current_stage {self.current_stage!r} is not in context.available_stages"
            )
        return self

    def current_stage_entry(self) -> StageEntry:
        for entry in reversed(self.stages):
            if entry.name == self.current_stage:
                return entry
        return self.stages[-1]

    def to_mongo(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="python")


def conversation_id_for(campaign_id: str, user_id: str) -> str:
    """Deterministic id: re-initializing a campaign can never mint a second conversation."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"campaign-worker:{campaign_id}:{user_id}").hex


def message_id_for(conversation_id: str, stage: str, step: int, visit: int = 0) -> str:
    """Deterministic outbound message id per (conversation, stage, step): replays dedupe.
    A stage entered again after a branch back (``visit`` > 0) sends under new ids."""
    key = (
        f"{conversation_id}|{stage}|{step}"
        if not visit
        else f"{conversation_id}|{stage}#{visit}|{step}"
    )
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"out-{digest[:32]}"


class Recipient(_Doc):
    user_id: NonEmptyStr
    attributes: Annotated[dict[str, Any], AfterValidator(_bounded_attributes)] = Field(
        default_factory=dict
    )
    timezone: TimezoneName = "UTC"


class RecipientsReference(_Doc):
    """Recipients kept in their own collection (for large campaigns).

    Each document there has the ``Recipient`` shape; ``query`` selects this campaign's.
    """

    collection: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,120}$")] = "recipients"
    query: dict[str, Any] = Field(default_factory=dict)


# Inline recipients live inside the campaign document, which MongoDB caps at 16 MB.
MAX_INLINE_RECIPIENTS = 50_000


class Campaign(_Doc):
    """A campaign (collection ``campaigns``)."""

    id: NonEmptyStr = Field(alias="_id", default_factory=lambda: uuid.uuid4().hex)
    name: NonEmptyStr
    campaign_type: NonEmptyStr
    template_id: NonEmptyStr
    recipients: list[Recipient] | RecipientsReference
    start_at: UtcDatetime | None = None
    status: CampaignStatus = CampaignStatus.SCHEDULED
    total_recipients: int = Field(default=0, ge=0)
    initialized_at: UtcDatetime | None = None
    # Checkpoint of a running initialization: recipient position and counts.
    init_progress: dict[str, Any] | None = None
    created_at: UtcDatetime = Field(default_factory=lambda: to_utc(datetime.now(UTC)))
    updated_at: UtcDatetime = Field(default_factory=lambda: to_utc(datetime.now(UTC)))
    # Set while an initializer owns the campaign, so a crashed one can be taken over.
    lease_owner: str | None = None
    lease_until: UtcDatetime | None = None
    # Audience rows that failed validation at initialization (skipped, counted) and the
    # first few of them with their position and error.
    invalid_recipients: int = Field(default=0, ge=0)
    # When a cancelled campaign had no active conversation left.
    settled_at: UtcDatetime | None = None
    invalid_samples: list[dict[str, Any]] = Field(default_factory=list)
    # A client's idempotency key and a fingerprint of its request (create_campaign).
    idempotency_key: str | None = Field(default=None, max_length=512)
    request_fingerprint: str | None = None
    # The template version the campaign runs on (pinned at create; a migration moves it)
    # and that version's content hash. A request may name a stored version to pin.
    template_version: int | None = Field(default=None, ge=1)
    template_hash: str | None = None
    # Applied migrations, oldest first, and the one being applied (domain/migrations.py).
    migrations: list[dict[str, Any]] = Field(default_factory=list)
    migrating: dict[str, Any] | None = None

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        return _without_empty(
            handler(self), ("template_version", "template_hash", "migrations", "migrating")
        )

    @field_validator("recipients")
    @classmethod
    def _unique_users(
        cls, value: list[Recipient] | RecipientsReference
    ) -> list[Recipient] | RecipientsReference:
        if isinstance(value, list):
            if not value:
                raise ValueError("the audience is empty: give at least one recipient")
            if len(value) > MAX_INLINE_RECIPIENTS:
                raise ValueError(
                    f"{len(value)} inline recipients exceed {MAX_INLINE_RECIPIENTS}; keep large "
                    "audiences in a collection and pass {'collection': ..., 'query': ...}"
                )
            seen: set[str] = set()
            for index, recipient in enumerate(value):
                if recipient.user_id in seen:
                    raise ValueError(
                        f"recipients[{index}].user_id {recipient.user_id!r} is duplicated"
                    )
                seen.add(recipient.user_id)
        return value

    def to_mongo(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="python")


class StoredCampaign(BaseModel):
    """A stored campaign as the flows read it: the ``Campaign`` fields and what the worker
    adds to them. ``recipients`` only when asked for, and unvalidated (an invalid row is
    counted at initialization, not a reason to refuse the whole campaign)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str = Field(alias="_id")
    name: str = ""
    campaign_type: str
    template_id: str
    status: CampaignStatus
    recipients: list[dict[str, Any]] | dict[str, Any] | None = None
    start_at: UtcDatetime | None = None
    total_recipients: int = 0
    initialized_at: UtcDatetime | None = None
    init_progress: dict[str, Any] | None = None
    created_at: UtcDatetime | None = None
    updated_at: UtcDatetime | None = None
    invalid_recipients: int = 0
    invalid_samples: list[dict[str, Any]] = Field(default_factory=list)
    settled_at: UtcDatetime | None = None
    lease_owner: str | None = None
    lease_until: UtcDatetime | None = None
    idempotency_key: str | None = None
    request_fingerprint: str | None = None
    template_version: int | None = None
    template_hash: str | None = None
    migrations: list[dict[str, Any]] = Field(default_factory=list)
    migrating: dict[str, Any] | None = None

    def to_mongo(self) -> dict[str, Any]:
        unread = {"recipients"} if self.recipients is None else set()
        return self.model_dump(by_alias=True, mode="python", exclude=unread)


class StageMetrics(_Doc):
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


class MessageMetrics(_Doc):
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


class CampaignMetrics(_Doc):
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
    # Bumped by every write; lets the reconcile detect concurrent increments.
    revision: int = Field(default=0, ge=0)
    # Writers that may have written conversations but not yet their $inc (token -> since).
    inflight: dict[str, UtcDatetime] = Field(default_factory=dict)


Outcome = Literal["completed", "failed", "opted_out", "cancelled"]


M = TypeVar("M", bound=BaseModel)


def parse_document(model: type[M], data: Any, *, what: str) -> M:
    """Validate ``data`` as ``model``; raise InvalidDocumentError naming each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidDocumentError(f"invalid {what}: {describe_validation_error(exc)}") from exc


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "<root>"
        message, value = error["msg"], error.get("input")
        if isinstance(value, str) and value and value in message:
            message = message.replace(value, "...")  # a validator echoed the input: a body
        parts.append(f"{location}: {message}")
    return "; ".join(parts)
