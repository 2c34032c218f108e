"""``record_event`` in batches (see ``events.py`` for the steps): record, enroll on entry
events, apply to the users' listening conversations; one outcome per event, in order."""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from campaign_worker.domain.campaign_documents import Recipient
from campaign_worker.domain.enrollment import EventFact, entry_attributes
from campaign_worker.domain.errors import InvalidInputError
from campaign_worker.domain.templates import Entry
from campaign_worker.service.context import Services
from campaign_worker.service.enrollment import EnrollResult, Person, enroll_people
from campaign_worker.service.event_recording import EventOutcome, InboundEvent, Tally
from campaign_worker.service.events import apply_events, targets_for
from campaign_worker.service.metrics_ledger import MetricsLedger

log = structlog.get_logger(__name__)


def record_events(svc: Services, events: Sequence[InboundEvent]) -> list[EventOutcome]:
    """Record and apply ``events`` (idempotent by event id); one outcome per event."""
    now = svc.clock.now()
    outcomes = [EventOutcome() for _ in events]
    facts: dict[int, EventFact] = {}
    for index, event in enumerate(events):
        try:
            facts[index] = event.checked(now)
        except InvalidInputError as exc:
            outcomes[index].error = exc
    unique = list({fact.event_id: fact for fact in reversed(facts.values())}.values())[::-1]
    new = svc.events.record(unique)
    stored = svc.events.get_many([f.event_id for f in unique if f.event_id not in new])
    # A duplicate is the event as first recorded (its user, name and time), applied again.
    recorded = [stored.get(fact.event_id, fact) for fact in unique]
    tally = Tally()
    _enroll(svc, recorded, tally)
    _apply(svc, recorded, tally)
    for index, fact in facts.items():
        event_id = fact.event_id
        outcomes[index].result = {
            "event_id": event_id,
            "duplicate": event_id not in new or _earlier(facts, index),
            "enrolled": tally.enrolled.get(event_id, 0),
            "applied": tally.applied.get(event_id, 0),
            "converted": tally.converted.get(event_id, 0),
        }
    log.info("events_recorded", events=len(events), new=len(new))
    return outcomes


def _earlier(facts: dict[int, EventFact], index: int) -> bool:
    """Another event of the batch before this one has its id."""
    return any(i < index and f.event_id == facts[index].event_id for i, f in facts.items())


def _enroll(svc: Services, facts: list[EventFact], tally: Tally) -> None:
    """Campaigns whose ``entry`` is one of these events enroll the events' users."""
    names = sorted({fact.event for fact in facts})
    for campaign in svc.campaigns.with_entry_events(names):
        try:
            entry = svc.type_template(campaign)[1].entry
        except InvalidInputError as exc:  # its template is gone: that campaign alone waits
            log.error("entry_campaign_unusable", campaign_id=campaign.id, error=str(exc))
            continue
        if entry is None:
            continue
        people: dict[str, Person] = {}
        for fact in facts:
            if fact.event == entry.event and fact.user_id not in people:
                people[fact.user_id] = _person(fact, entry)
        result = EnrollResult(campaign.id)
        created = enroll_people(svc, campaign.id, list(people.values()), result, strict=False)
        for state in created:
            Tally.add(tally.enrolled, (state.enrolled_by or "").removeprefix("event:"))
        for name in ("applied", "converted"):
            for event_id, count in getattr(result.tally, name).items():
                Tally.add(getattr(tally, name), event_id, count)


def _person(fact: EventFact, entry: Entry) -> Person:
    attributes = entry_attributes(entry, fact.properties)
    try:
        recipient = Recipient(user_id=fact.user_id, attributes=attributes)
    except ValueError:  # attributes over the limit: enrolled without them
        recipient = Recipient(user_id=fact.user_id)
    return Person(recipient, f"event:{fact.event_id}")


def _apply(svc: Services, facts: list[EventFact], tally: Tally) -> None:
    """The events applied to their users' listening conversations, in every campaign."""
    if not facts:
        return
    since = min(fact.timestamp for fact in facts)
    states = svc.conversation_state_repository.find_listening(
        sorted({fact.user_id for fact in facts}), since
    )
    targets = targets_for(svc, states, sorted(facts, key=lambda f: f.timestamp))
    ledgers: dict[str, MetricsLedger] = {}

    def ledger_of(campaign_id: str) -> MetricsLedger:
        if campaign_id not in ledgers:
            ledgers[campaign_id] = svc.ledger(campaign_id)
        return ledgers[campaign_id]

    try:
        apply_events(svc, targets, ledger_of, tally)
    finally:
        for ledger in ledgers.values():
            ledger.close()


__all__ = ["record_events"]
