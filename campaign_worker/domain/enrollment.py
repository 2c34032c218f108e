"""Enrollment into a running campaign, pure: who enters (a first entry, a re-entry the
campaign type's ``re_entry`` allows, or nobody: already enrolled), the attributes an
entry event gives, and recording a user's event on a conversation whose stages react
to it.

A person enters a campaign once, as conversation ``conversation_id_for(campaign, user)``;
with ``re_entry: {after: D}``, again once their latest conversation finished and ``D``
passed since it started: the n-th re-entry is conversation ``conversation_id_for(campaign,
user, n)`` (``enrollment`` n), the old ones kept. Ids are deterministic, so two enrollers
racing (``enroll_recipients`` and an entry event) compute the same id and one insert wins.
One source (an idempotency key, an event id) never enrolls a person twice, however late
it is replayed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from campaign_worker.domain.campaign_documents import StoredCampaign
from campaign_worker.domain.documents import ConversationEvent, ConversationState
from campaign_worker.domain.rules import entry_index
from campaign_worker.domain.suppressions import Suppression
from campaign_worker.domain.templates import CampaignTypeTemplate, Entry, ReEntry

# Events a conversation keeps (those its stages react to): a bound on the document.
MAX_CONVERSATION_EVENTS = 100
# How far before a conversation's creation an event still applies to it (the race with
# its enrollment), when its first stage sets no window of its own.
DEFAULT_EVENT_WINDOW = timedelta(hours=1)
PLAIN = "enroll"  # what enrolled a person through enroll_recipients without a key


@dataclass(frozen=True)
class PriorEntry:
    """An existing conversation of the person in the campaign, as enrollment reads it."""

    user_id: str
    enrollment: int  # 0: the first entry
    active: bool
    created_at: datetime
    enrolled_by: str | None


@dataclass(frozen=True)
class EnrollmentContext:
    """What enrolling people into a campaign reads first, in one round trip: the
    campaign, the suppression entries among the people's keys, and their conversations
    in it so far."""

    campaign: StoredCampaign
    suppressions: dict[str, Suppression]
    prior: list[PriorEntry]


@dataclass(frozen=True)
class EventFact:
    """One event of a user, as recorded (``record_event``)."""

    event_id: str
    user_id: str
    event: str
    timestamp: datetime
    received_at: datetime
    properties: Mapping[str, Any]


def source(idempotency_key: str | None) -> str:
    """``enrolled_by`` of an ``enroll_recipients`` call."""
    return PLAIN if idempotency_key is None else f"enroll:{idempotency_key}"


def next_enrollment(
    prior: Sequence[PriorEntry], re_entry: ReEntry | None, now: datetime, enrolled_by: str
) -> int | None:
    """The entry number the person gets now (0: the first), or None: already enrolled."""
    if not prior:
        return 0
    if enrolled_by != PLAIN and any(p.enrolled_by == enrolled_by for p in prior):
        return None  # this key or event enrolled them already
    latest = max(prior, key=lambda p: p.enrollment)
    if re_entry is None or latest.active or now - latest.created_at < re_entry.after:
        return None
    return latest.enrollment + 1


def entry_attributes(entry: Entry, properties: Mapping[str, Any]) -> dict[str, Any]:
    """The recipient attributes an entry event gives: the named properties it has."""
    return {name: properties[name] for name in entry.attributes if name in properties}


def event_window(type_template: CampaignTypeTemplate) -> timedelta:
    """How long before its creation a user's event still applies to a new conversation:
    its first stage's ``on_timeout.after`` (how long it waits for an event), else its
    ``max_time_in_stage.after``, else ``DEFAULT_EVENT_WINDOW``."""
    first = type_template.stages[0]
    if first.on_timeout is not None:
        return first.on_timeout.after
    if first.max_time_in_stage is not None:
        return first.max_time_in_stage.after
    return DEFAULT_EVENT_WINDOW


def record_event(
    state: ConversationState, fact: EventFact, type_template: CampaignTypeTemplate
) -> ConversationState | None:
    """``state`` with the event recorded in its current stage visit; None if its stages
    do not react to it, it is recorded already, or the conversation holds the most."""
    if fact.event not in type_template.event_names:
        return None
    if any(event.event_id == fact.event_id for event in state.events):
        return None
    if len(state.events) >= MAX_CONVERSATION_EVENTS:
        return None
    recorded = ConversationEvent(
        event_id=fact.event_id,
        event=fact.event,
        timestamp=fact.timestamp,
        received_at=fact.received_at,
        stage=state.current_stage,
        entry=entry_index(state),
    )
    return state.model_copy(update={"events": [*state.events, recorded]})


__all__ = [
    "DEFAULT_EVENT_WINDOW",
    "MAX_CONVERSATION_EVENTS",
    "PLAIN",
    "EnrollmentContext",
    "EventFact",
    "PriorEntry",
    "entry_attributes",
    "event_window",
    "next_enrollment",
    "record_event",
    "source",
]
