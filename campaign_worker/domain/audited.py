"""What the invariant checker reads of a conversation and of an outbox row: projections
of the stored documents, unvalidated (the checks look for what a corrupt document may
hold), built by the invariant reads (``service.ports.InvariantReads``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from campaign_worker.domain.documents import to_utc


@dataclass(frozen=True)
class AuditedEntry:
    """One history entry as the checks read it (no content, no metadata but these)."""

    message_id: str
    inbound: bool
    withheld: bool  # a holdout's message: recorded for its timing rules, never sent
    stage: str | None
    step: int | None
    visit: int | None  # the stage entry it was sent in


@dataclass(frozen=True)
class AuditedStage:
    """One stage entry as stored: the checks look for what a corrupt document may hold,
    so nothing here is validated."""

    name: str | None
    entered_at: datetime | None  # None: missing, or not a date
    exited_at: datetime | None
    open: bool  # stored without an exit (``exited_at`` null or absent)
    completed: bool


@dataclass(frozen=True)
class AuditedConversation:
    """A conversation as the invariant checker reads it: the projection of what the
    checks need (never message contents, metadata or attributes), unvalidated."""

    id: str
    user_id: str | None
    status: str | None
    current_stage: str | None
    stages: tuple[AuditedStage, ...]
    history: tuple[AuditedEntry, ...]
    messages_sent: object  # as stored: compared with the history, reported as found
    messages_received: object
    unpublished: tuple[str, ...]
    publish_due_at: datetime | None
    next_action_at: datetime | None
    lease_owner: str | None
    lease_until: datetime | None
    # Always-on campaigns: the person's entry (0: first), what enrolled them, the goal
    # conversion's event name and id (None: none).
    enrollment: object = 0
    enrolled_by: str | None = None
    conversion: tuple[str, str] | None = None

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> AuditedConversation:
        """From a stored document (or its projection), whatever it holds."""
        metrics = _mapping(doc.get("metrics"))
        return cls(
            id=str(doc.get("_id")),
            user_id=_text(doc.get("user_id")),
            status=_text(doc.get("status")),
            current_stage=_text(doc.get("current_stage")),
            stages=tuple(_stage(_mapping(entry)) for entry in doc.get("stages") or ()),
            history=tuple(_entry(_mapping(entry)) for entry in doc.get("message_history") or ()),
            messages_sent=metrics.get("messages_sent", 0),
            messages_received=metrics.get("messages_received", 0),
            unpublished=tuple(str(m) for m in doc.get("unpublished") or ()),
            publish_due_at=_date(doc.get("publish_due_at")),
            next_action_at=_date(doc.get("next_action_at")),
            lease_owner=_text(doc.get("lease_owner")),
            lease_until=_date(doc.get("lease_until")),
            enrollment=doc.get("enrollment") or 0,
            enrolled_by=_text(doc.get("enrolled_by")),
            conversion=_conversion(_mapping(doc.get("conversion"))),
        )


def _conversion(doc: Mapping[str, Any]) -> tuple[str, str] | None:
    if not doc:
        return None
    return str(doc.get("event")), str(doc.get("event_id"))


@dataclass(frozen=True)
class AuditedRow:
    """An outbox row as the invariant checker reads it (no content), unvalidated."""

    id: str
    conversation_id: str
    status: str | None
    stage: str
    step: object  # as stored (an int when sound)
    event_statuses: tuple[str, ...]  # each delivery event's status, in order
    lease_until: datetime | None

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> AuditedRow:
        return cls(
            id=str(doc.get("_id")),
            conversation_id=str(doc.get("conversation_id")),
            status=_text(doc.get("status")),
            stage=str(doc.get("stage")),
            step=doc.get("step"),
            event_statuses=tuple(
                str(_mapping(event).get("status")) for event in doc.get("events") or ()
            ),
            lease_until=_date(doc.get("lease_until")),
        )


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _stage(entry: Mapping[str, Any]) -> AuditedStage:
    return AuditedStage(
        name=_text(entry.get("name")),
        entered_at=_date(entry.get("entered_at")),
        exited_at=_date(entry.get("exited_at")),
        open=entry.get("exited_at") is None,
        completed=bool(entry.get("completed")),
    )


def _entry(entry: Mapping[str, Any]) -> AuditedEntry:
    metadata = _mapping(entry.get("metadata"))
    stage, step, visit = metadata.get("stage"), metadata.get("step"), metadata.get("entry")
    return AuditedEntry(
        message_id=str(entry.get("message_id")),
        inbound=entry.get("direction") == "inbound",
        withheld=metadata.get("withheld") is True,
        stage=stage if isinstance(stage, str) else None,
        step=step if isinstance(step, int) else None,
        visit=visit if isinstance(visit, int) else None,
    )


def _date(value: object) -> datetime | None:
    return to_utc(value) if isinstance(value, datetime) else None


__all__ = ["AuditedConversation", "AuditedEntry", "AuditedRow", "AuditedStage"]
