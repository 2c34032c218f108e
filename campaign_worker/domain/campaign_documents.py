"""Campaign documents (collection ``campaigns``): the request a client sends (``Campaign``),
its recipients, and the campaign as the flows read it back (``StoredCampaign``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

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

from campaign_worker.domain.documents import (
    DocumentModel,
    NonEmptyStr,
    TimezoneName,
    UtcDatetime,
    describe_validation_error,
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
    recipients: list[Recipient] | RecipientsReference = Field(default_factory=list)
    start_at: UtcDatetime | None = None
    # Always-on (``open``): may start with no recipient, people enroll while it runs, and
    # it completes only past ``ends_at`` (when set) with nothing active. Set from the
    # campaign type when the request does not say; ``entry_event`` likewise (its trigger).
    audience: Literal["fixed", "open"] | None = None
    ends_at: UtcDatetime | None = None
    entry_event: str | None = None
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
            handler(self),
            (
                "template_version",
                "template_hash",
                "migrations",
                "migrating",
                "audience",
                "ends_at",
                "entry_event",
            ),
        )

    @model_validator(mode="after")
    def _some_audience(self) -> Campaign:
        if self.recipients == [] and self.audience != "open":
            raise ValueError(
                "recipients: the audience is empty: give at least one recipient "
                "(or make the campaign audience: open)"
            )
        return self

    @field_validator("recipients")
    @classmethod
    def _unique_users(
        cls, value: list[Recipient] | RecipientsReference
    ) -> list[Recipient] | RecipientsReference:
        if isinstance(value, list):
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
    migrating: MigrationRecord | None = None
    audience: str | None = None
    ends_at: UtcDatetime | None = None
    entry_event: str | None = None

    @property
    def open(self) -> bool:
        return self.audience == "open"

    def ended(self, now: datetime) -> bool:
        """Past its ``ends_at``: no one enrolls any more."""
        return self.ends_at is not None and now >= self.ends_at

    def to_mongo(self) -> dict[str, Any]:
        unread = {"recipients"} if self.recipients is None else set()
        unread |= {
            name for name in ("audience", "ends_at", "entry_event") if not getattr(self, name)
        }
        return self.model_dump(by_alias=True, mode="python", exclude=unread)


@dataclass(frozen=True)
class InvalidRow:
    """An audience row that fails validation: counted and sampled, never messaged."""

    user_id: str  # as the row gives it (text, cut to 512 characters), "None" if absent
    error: str  # which fields fail and why (no values)

    @classmethod
    def of(cls, raw: Mapping[str, object], exc: ValidationError) -> InvalidRow:
        return cls(str(raw.get("user_id"))[:512], describe_validation_error(exc)[:500])

    def as_doc(self) -> dict[str, str]:
        return {"user_id": self.user_id, "error": self.error}


#: One audience row as read: a recipient, or a row that fails validation.
AudienceRow = Recipient | InvalidRow


def audience_row(raw: Mapping[str, object]) -> AudienceRow:
    try:
        return Recipient.model_validate(raw)
    except ValidationError as exc:
        return InvalidRow.of(raw, exc)


def inline_audience(
    rows: Sequence[Mapping[str, object]], batch_size: int, position: AudiencePosition | None
) -> Iterator[tuple[list[AudienceRow], AudiencePosition]]:
    """An inline audience in batches, from ``position``'s offset on."""
    start = 0 if position is None else position.offset
    for begin in range(start, len(rows), batch_size):
        end = min(begin + batch_size, len(rows))
        yield [audience_row(row) for row in rows[begin:end]], AudiencePosition(end)


@dataclass(frozen=True)
class AudiencePosition:
    """Where a walk through an audience is: an offset into an inline list, or the last
    ``_id`` read from a recipients collection (any value a collection's ``_id`` holds)."""

    offset: int = 0
    after_id: object = None

    def as_doc(self) -> dict[str, object]:
        return {"offset": self.offset} if self.after_id is None else {"after_id": self.after_id}

    @classmethod
    def of(cls, doc: object) -> AudiencePosition | None:
        if not isinstance(doc, Mapping) or not doc:
            return None
        if "after_id" in doc:
            return cls(after_id=doc["after_id"])
        return cls(offset=int(doc.get("offset", 0)))


@dataclass
class InitCheckpoint:
    """An initialization's checkpoint (``init_progress`` on the campaign): where in the
    audience, and the invalid rows so far (the first few kept as samples)."""

    position: AudiencePosition | None = None
    invalid: int = 0
    samples: list[InvalidRow] = field(default_factory=list)

    @classmethod
    def of(cls, campaign: StoredCampaign) -> InitCheckpoint:
        saved: Mapping[str, Any] = campaign.init_progress or {}
        samples = [
            InvalidRow(str(sample.get("user_id")), str(sample.get("error")))
            for sample in saved.get("invalid_samples") or []
            if isinstance(sample, Mapping)
        ]
        return cls(
            AudiencePosition.of(saved.get("position")), int(saved.get("invalid", 0)), samples
        )

    def as_doc(self) -> dict[str, object]:
        return {
            "position": None if self.position is None else self.position.as_doc(),
            "invalid": self.invalid,
            "invalid_samples": [sample.as_doc() for sample in self.samples],
        }


class MigrationRecord(BaseModel):
    """A migration of the campaign's conversations to another template version: being
    applied (``migrating``) or done (in ``migrations``, with ``finished_at``)."""

    model_config = ConfigDict(extra="allow")

    id: str
    from_version: int | None = None
    to_version: int
    to_hash: str | None = None
    map: dict[str, str] = Field(default_factory=dict)  # old stage -> its target
    default: str | None = None  # the target of removed stages the map does not name
    started_at: UtcDatetime | None = None
    revision: int = 0  # bumped by every count: the finish is a compare-and-set on it
    counts: dict[str, dict[str, int]] = Field(default_factory=dict)
    finished_at: UtcDatetime | None = None

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        return without_empty(handler(self), ("finished_at",))

    def to_mongo(self) -> dict[str, Any]:
        return self.model_dump(mode="python")

    def finished(self, now: datetime) -> dict[str, Any]:
        """The record kept in ``migrations`` once every conversation is across."""
        return {**self.model_dump(mode="python", exclude={"revision"}), "finished_at": now}


StoredCampaign.model_rebuild()  # it names MigrationRecord, defined after it
