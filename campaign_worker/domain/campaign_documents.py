"""Campaign documents (collection ``campaigns``): the request a client sends (``Campaign``),
its recipients, and the campaign as the flows read it back (``StoredCampaign``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
)

from campaign_worker.domain.documents import (
    DocumentModel,
    NonEmptyStr,
    TimezoneName,
    UtcDatetime,
    to_utc,
    without_empty,
)
from campaign_worker.domain.limits import MAX_ATTRIBUTES_BYTES, check_size


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


def _bounded_attributes(value: dict[str, Any]) -> dict[str, Any]:
    check_size(value, MAX_ATTRIBUTES_BYTES, "attributes")
    return value


class Recipient(DocumentModel):
    user_id: NonEmptyStr
    attributes: Annotated[dict[str, Any], AfterValidator(_bounded_attributes)] = Field(
        default_factory=dict
    )
    timezone: TimezoneName = "UTC"


class RecipientsReference(DocumentModel):
    """Recipients kept in their own collection (for large campaigns).

    Each document there has the ``Recipient`` shape; ``query`` selects this campaign's.
    """

    collection: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,120}$")] = "recipients"
    query: dict[str, Any] = Field(default_factory=dict)


# Inline recipients live inside the campaign document, which MongoDB caps at 16 MB.
MAX_INLINE_RECIPIENTS = 50_000


class Campaign(DocumentModel):
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
        return without_empty(
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
