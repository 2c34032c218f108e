"""Documents stored in MongoDB, as pydantic v2 models.

Field names and nesting follow the seed's *Conversation State Document* and *Campaign
Metrics Document*. Datetimes are timezone-aware UTC, truncated to milliseconds because
that is what a BSON date holds; ``model_dump()`` keeps them as ``datetime`` so PyMongo
stores BSON dates, never strings.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
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


class DocumentModel(BaseModel):
    """A stored document's model: unknown fields refused, assignments validated."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)


def without_empty(data: Any, names: tuple[str, ...]) -> Any:
    """Fields added after the seed are left out of stored documents while empty, so a
    document that never used them keeps the seed's shape."""
    if isinstance(data, dict):
        for name in names:
            if name in data and not data[name]:
                del data[name]
    return data


# Fields of always-on campaigns, left out of documents while empty (the seed's shape).
_LATER_FIELDS = ("enrollment", "enrolled_by", "events", "conversion", "goal_until")


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


class Direction(StrEnum):
    OUTBOUND = "outbound"
    INBOUND = "inbound"


class StageEntry(DocumentModel):
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
        return without_empty(handler(self), ("formerly",))


class Message(DocumentModel):
    message_id: NonEmptyStr
    direction: Direction
    content: str
    timestamp: UtcDatetime
    metadata: dict[str, Any] = Field(default_factory=dict)


class ReplyReview(DocumentModel):
    """A reply held for a person (its classification was not sure enough to act on): the
    conversation holds until it is ``resolved`` with the intent it really is
    (``domain/reviews.py``)."""

    message_id: NonEmptyStr
    status: Literal["pending", "resolved"] = "pending"
    held_at: UtcDatetime
    suggested: str  # the classifier's best reading, a hint for the reviewer
    reason: str | None = None  # low_confidence, opt_out_risk, review_intent
    intent: str | None = None  # the resolution: what the flows act on from then
    resolved_by: str | None = None
    resolved_at: UtcDatetime | None = None
    resume_at: UtcDatetime | None = None  # resolved out_of_office: follow-ups resume then


class ConversationContext(DocumentModel):
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
        return without_empty(handler(self), ("template_version",))


class ConversationMetrics(DocumentModel):
    messages_sent: int = Field(default=0, ge=0)
    messages_received: int = Field(default=0, ge=0)
    stage_progressions: int = Field(default=0, ge=0)


class ConversationEvent(DocumentModel):
    """An event of the user (``record_event``) recorded on a conversation whose stages
    react to it: when it happened and arrived, and the stage visit it arrived in."""

    event_id: NonEmptyStr
    event: NonEmptyStr
    timestamp: UtcDatetime
    received_at: UtcDatetime
    stage: NonEmptyStr
    entry: int = Field(ge=0)


class Conversion(DocumentModel):
    """The goal event that converted the conversation (once), and what it is counted by."""

    event: NonEmptyStr
    event_id: NonEmptyStr
    at: UtcDatetime
    seconds: float = Field(ge=0)  # from the conversation's entry (created_at)
    stage: NonEmptyStr  # the stage the conversation was in
    variants: list[dict[str, str]] = Field(default_factory=list)  # [{stage, variant}]
    holdout: bool = False


class ConversationState(DocumentModel):
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
    # Always-on campaigns: which entry of the person this is (None: the first; n: the n-th
    # re-entry), what enrolled them ("enroll", "enroll:<key>", "event:<event id>"; None:
    # the campaign's audience), the events recorded on it, its goal conversion and until
    # when a goal event can convert it.
    enrollment: int | None = Field(default=None, ge=1)
    enrolled_by: str | None = Field(default=None, max_length=600)
    events: list[ConversationEvent] = Field(default_factory=list)
    conversion: Conversion | None = None
    goal_until: UtcDatetime | None = None
    # Replies held for review and their resolutions (the history is append-only; the
    # messages keep what the classifier recorded), and since when the oldest still pending
    # was held (None: none is; the review queue's index). Always stored: a resolution sets
    # ``review_pending_since`` back to None, which an omitted field could not say.
    reviews: list[ReplyReview] = Field(default_factory=list)
    review_pending_since: UtcDatetime | None = None

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        return without_empty(handler(self), _LATER_FIELDS)

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


def conversation_id_for(campaign_id: str, user_id: str, enrollment: int | None = None) -> str:
    """Deterministic id: re-initializing a campaign can never mint a second conversation,
    nor two enrollers racing a second entry (``enrollment``: the n-th re-entry)."""
    key = f"campaign-worker:{campaign_id}:{user_id}"
    return uuid.uuid5(uuid.NAMESPACE_URL, key if not enrollment else f"{key}#{enrollment}").hex


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


@dataclass(frozen=True)
class Unreadable:
    """A stored conversation that no longer validates (say, a field edited by hand): its
    id, its campaign and user as stored, and which fields fail and why (no values). Reads
    return it beside the valid states, so it is failed or refused alone rather than
    sinking the batch it was read with."""

    id: str
    error: str
    campaign_id: str | None = None
    user_id: str | None = None

    def problem(self) -> InvalidDocumentError:
        return InvalidDocumentError(f"invalid conversation {self.id}: {self.error}")


#: A conversation as read from the store: valid, or not (``Unreadable``).
StoredState = ConversationState | Unreadable


def read_state(doc: Mapping[str, object]) -> StoredState:
    """A stored conversation document as a ``ConversationState``, or ``Unreadable``."""
    try:
        return ConversationState.model_validate(doc)
    except ValidationError as exc:
        campaign_id, user_id = doc.get("campaign_id"), doc.get("user_id")
        return Unreadable(
            str(doc.get("_id")),
            describe_validation_error(exc),
            campaign_id if isinstance(campaign_id, str) else None,
            user_id if isinstance(user_id, str) else None,
        )
