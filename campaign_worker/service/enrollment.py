"""Enrollment into a running campaign (``enroll_recipients``, and entry events): people
added to a scheduled, initializing, running or paused campaign, each once per entry.

One call: one read (the campaign, the suppression entries among the people's keys and
their conversations in it so far: ``EnrollmentReads.context``), the registration with
the metrics ledger, one unordered insert of the new conversations (deterministic ids and
the unique (campaign, user, enrollment) index: two enrollers racing insert one), the
pending events of the new conversations (only for a campaign type that reacts to events),
and one metrics increment. Suppressed people are skipped and counted; invalid rows are
counted with their reason; duplicates are "already enrolled".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.campaign_documents import (
    CampaignStatus,
    InvalidRow,
    Recipient,
    StoredCampaign,
    audience_row,
)
from campaign_worker.domain.documents import ConversationState, conversation_id_for
from campaign_worker.domain.enrollment import PriorEntry, next_enrollment, source
from campaign_worker.domain.errors import (
    CampaignNotFoundError,
    InvalidInputError,
    InvalidStateTransitionError,
)
from campaign_worker.domain.partitions import partition_of
from campaign_worker.domain.splits import in_holdout
from campaign_worker.domain.templates import CampaignTypeTemplate
from campaign_worker.service.context import Services
from campaign_worker.service.event_recording import Tally
from campaign_worker.service.events import apply_pending
from campaign_worker.service.initialization import new_conversation
from campaign_worker.service.metrics_ledger import MetricsLedger
from campaign_worker.service.send_guard import SendGuard

log = structlog.get_logger(__name__)

MAX_ENROLL = 10_000  # recipients per call (a task's arguments stay a few MB at most)
INVALID_SAMPLES = 10
ENROLLING = frozenset(
    {
        CampaignStatus.SCHEDULED,
        CampaignStatus.INITIALIZING,
        CampaignStatus.RUNNING,
        CampaignStatus.PAUSED,
    }
)


@dataclass
class EnrollResult:
    """What one enrollment did (returned by the task as JSON)."""

    campaign_id: str
    enrolled: int = 0
    already: int = 0
    suppressed: int = 0
    invalid: int = 0
    invalid_samples: list[Doc] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)  # pending events applied to the new ones

    def as_dict(self) -> Doc:
        return {
            "campaign_id": self.campaign_id,
            "enrolled": self.enrolled,
            "already": self.already,
            "suppressed": self.suppressed,
            "invalid": self.invalid,
            "invalid_samples": list(self.invalid_samples),
        }


@dataclass(frozen=True)
class Person:
    """Someone to enroll and what enrolls them (``enrolled_by``)."""

    recipient: Recipient
    enrolled_by: str


def enroll_recipients(
    svc: Services, campaign_id: str, rows: Sequence[object], idempotency_key: str | None = None
) -> EnrollResult:
    """Enroll ``rows`` (the recipient shape of ``create_campaign``) into the campaign."""
    if idempotency_key is not None and not 0 < len(idempotency_key) <= 512:
        raise InvalidInputError("idempotency_key: must be 1 to 512 characters")
    if len(rows) > MAX_ENROLL:
        raise InvalidInputError(f"recipients: {len(rows)} exceed {MAX_ENROLL} per call")
    result = EnrollResult(campaign_id)
    enrolled_by = source(idempotency_key)
    people: list[Person] = []
    seen: set[str] = set()
    for index, raw in enumerate(rows):
        row = audience_row(raw) if isinstance(raw, Mapping) else InvalidRow("None", "not an object")
        if isinstance(row, InvalidRow):
            result.invalid += 1
            if len(result.invalid_samples) < INVALID_SAMPLES:
                result.invalid_samples.append({"index": index, **row.as_doc()})
        elif row.user_id in seen:
            result.already += 1  # twice in one call
        else:
            seen.add(row.user_id)
            people.append(Person(row, enrolled_by))
    enroll_people(svc, campaign_id, people, result)
    log.info("recipients_enrolled", **{k: v for k, v in result.as_dict().items() if k[0] != "i"})
    return result


def enroll_people(
    svc: Services,
    campaign_id: str,
    people: Sequence[Person],
    result: EnrollResult,
    *,
    strict: bool = True,
) -> list[ConversationState]:
    """Enroll ``people``; returns the conversations created. ``strict``: a campaign that
    takes no enrollment (finished, draft, past ``ends_at``) is an error, else skipped."""
    if not people:
        return []
    keys = svc.send_guard.keys_of(
        [(p.recipient.user_id, p.recipient.user_id, p.recipient.attributes) for p in people]
    )
    context = svc.enrollment_reads.context(
        campaign_id,
        [p.recipient.user_id for p in people],
        sorted({key for ks in keys.values() for key in ks}),
    )
    if context is None:
        raise CampaignNotFoundError(campaign_id)
    now = svc.clock.now()
    refusal = _refusal(context.campaign, now)
    if refusal is not None:
        if strict:
            raise InvalidStateTransitionError(refusal)
        return []
    _, type_template = svc.type_template(context.campaign)
    suppressed = SendGuard.reasons(keys, context.suppressions)
    prior: dict[str, list[PriorEntry]] = {}
    for entry in context.prior:
        prior.setdefault(entry.user_id, []).append(entry)
    states = []
    for person in people:
        user = person.recipient.user_id
        if user in suppressed:
            result.suppressed += 1
            continue
        number = next_enrollment(
            prior.get(user, []), type_template.re_entry, now, person.enrolled_by
        )
        if number is None:
            result.already += 1
            continue
        states.append(new_entry(context.campaign, type_template, person, number, now))
    return _insert(svc, context.campaign, type_template, states, result)


def _refusal(campaign: StoredCampaign, now: datetime) -> str | None:
    if campaign.status not in ENROLLING:
        return f"campaign {campaign.id!r} is {campaign.status.value!r}; it takes no enrollment"
    if campaign.ended(now):
        return f"campaign {campaign.id!r} ended at {campaign.ends_at}; it takes no enrollment"
    return None


def new_entry(
    campaign: StoredCampaign,
    type_template: CampaignTypeTemplate,
    person: Person,
    number: int,
    now: datetime,
) -> ConversationState:
    """The person's conversation for entry ``number`` (0: the first)."""
    user = person.recipient.user_id
    state = new_conversation(campaign, person.recipient, type_template.stage_names, now)
    conversation_id = conversation_id_for(campaign.id, user, number or None)
    goal = type_template.goal
    return state.model_copy(
        update={
            "id": conversation_id,
            "partition": partition_of(conversation_id),
            "enrollment": number or None,
            "enrolled_by": person.enrolled_by,
            "holdout": in_holdout(campaign.id, user, type_template.holdout),
            "goal_until": None if goal is None else now + goal.within,
        }
    )


def _insert(
    svc: Services,
    campaign: StoredCampaign,
    type_template: CampaignTypeTemplate,
    states: list[ConversationState],
    result: EnrollResult,
) -> list[ConversationState]:
    """Insert the new conversations, count them, apply their pending events."""
    if not states:
        return []
    ledger = svc.ledger(campaign.id)
    try:
        ledger.before_write()
        inserted = svc.conversation_state_repository.insert_new(states)
        ledger.after_write()
        new = [state for state in states if state.id in inserted]
        result.enrolled += len(new)
        result.already += len(states) - len(new)
        _count(ledger, new, type_template.stage_names[0])
        svc.metrics.conversations_initialized(campaign.campaign_type, len(new))
        if new and type_template.event_names:
            apply_pending(svc, campaign, new, ledger, result.tally)
    finally:
        ledger.close()
    return new


def _count(ledger: MetricsLedger, new: list[ConversationState], first: str) -> None:
    held = sum(state.holdout for state in new)
    ledger.delta.total_recipients += len(new)
    ledger.delta.active += len(new)
    ledger.delta.stage_entered[first] += len(new)
    ledger.delta.holdout["conversations"] += held
    ledger.delta.holdout["active"] += held


__all__ = [
    "MAX_ENROLL",
    "EnrollResult",
    "Person",
    "enroll_people",
    "enroll_recipients",
    "new_entry",
]
