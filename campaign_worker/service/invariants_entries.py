"""The invariant checker's part for always-on campaigns (``service/invariants.py`` calls
it per batch of conversations): one conversation per person and entry, and every goal
conversion and entry enrollment backed by a recorded event.

- ``one_conversation_per_entry``: each person's entries are numbered 0, 1, ... once each;
- ``conversions_recorded``: each conversion names an event recorded in ``events`` for its
  user and goal;
- ``entry_events_recorded``: each conversation an entry event enrolled names an event
  recorded for its user.

It keeps each enrolled person's entry numbers while the conversations stream by (memory:
one small integer per enrolled conversation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from campaign_worker.domain.audited import AuditedConversation
from campaign_worker.domain.documents import conversation_id_for
from campaign_worker.domain.invariants import Findings
from campaign_worker.service.ports import EventRepository

ONE_CONVERSATION_PER_ENTRY = "one_conversation_per_entry"
CONVERSIONS_RECORDED = "conversions_recorded"
ENTRY_EVENTS_RECORDED = "entry_events_recorded"
ENTRY_INVARIANTS = {
    ONE_CONVERSATION_PER_ENTRY: "people whose entries are not numbered 0, 1, ... once each",
    CONVERSIONS_RECORDED: "conversions without a recorded goal event of their user",
    ENTRY_EVENTS_RECORDED: "conversations enrolled by an event that is not recorded",
}
FIGURES = ("enrolled", "conversions", "conversions_unrecorded", "entry_events_unrecorded")


@dataclass
class EntryAudit:
    """Gathers the always-on checks while conversations stream by."""

    events: EventRepository | None
    found: Findings = field(default_factory=Findings)
    figures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FIGURES, 0))
    entries: dict[str, list[int]] = field(default_factory=dict)  # enrolled user -> entries
    enrolled_ids: set[str] = field(default_factory=set)

    def batch(self, conversations: Sequence[AuditedConversation]) -> None:
        wanted: dict[str, list[tuple[AuditedConversation, str, str | None]]] = {}
        for c in conversations:
            number = c.enrollment if isinstance(c.enrollment, int) else -1
            if c.enrolled_by is not None or number:
                self.figures["enrolled"] += 1
                self.enrolled_ids.add(c.id)
                self.entries.setdefault(str(c.user_id), []).append(number)
            if c.conversion is not None:
                self.figures["conversions"] += 1
                event, event_id = c.conversion
                wanted.setdefault(event_id, []).append((c, CONVERSIONS_RECORDED, event))
            if c.enrolled_by is not None and c.enrolled_by.startswith("event:"):
                event_id = c.enrolled_by.removeprefix("event:")
                wanted.setdefault(event_id, []).append((c, ENTRY_EVENTS_RECORDED, None))
        if wanted:
            self._backed(wanted)

    def _backed(self, wanted: dict[str, list[tuple[AuditedConversation, str, str | None]]]) -> None:
        stored = {} if self.events is None else self.events.get_many(sorted(wanted))
        for event_id, uses in wanted.items():
            fact = stored.get(event_id)
            for conversation, invariant, name in uses:
                user = fact is not None and fact.user_id == conversation.user_id
                if user and fact is not None and (name is None or fact.event == name):
                    continue
                figure = "conversions" if invariant == CONVERSIONS_RECORDED else "entry_events"
                self.figures[f"{figure}_unrecorded"] += 1
                self.found.add(invariant, conversation.id)

    def first(self, campaign_id: str, conversation_id: str, user_id: str) -> bool:
        """Whether the conversation is a person's first entry (an audience row's)."""
        return conversation_id == conversation_id_for(campaign_id, user_id) or (
            conversation_id not in self.enrolled_ids
        )

    def into(self, found: Findings, note: Callable[[str, str], None]) -> None:
        """Add what was found to the report's findings (samples) and sentences."""
        for invariant, what in ENTRY_INVARIANTS.items():
            for item in self.found.sample(invariant):
                found.add(invariant, item, 0)
            if self.found.counts[invariant]:
                note(invariant, f"{self.found.counts[invariant]} {what}")

    def finish(self) -> None:
        """Each enrolled person's entries are 0..n-1 (their first entry may be an
        audience row's: 0 is then not in ``entries``, and is looked for among theirs)."""
        for user, numbers in self.entries.items():
            expected = list(range(len(numbers)))
            if sorted(numbers) not in (expected, [n + 1 for n in expected]):
                self.found.add(ONE_CONVERSATION_PER_ENTRY, user)


__all__ = ["ENTRY_INVARIANTS", "FIGURES", "EntryAudit"]
