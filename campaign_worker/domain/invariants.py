"""The invariant checker's pure parts: its report types, the names of the invariants, and
the checks of one (projected) conversation document: its stage timeline, its history and
its counters. The service flow (``service/invariants.py``) streams the documents and joins
them with the outbox, the audience and the metrics document.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from campaign_worker.domain.audited import AuditedConversation
from campaign_worker.domain.documents import to_utc

# Stable names (scripts and the fault suite match on them).
ONE_CONVERSATION_PER_RECIPIENT = "one_conversation_per_recipient"
INVALID_RECIPIENTS_COUNTED = "invalid_recipients_counted"
CAMPAIGN_TOTAL_RECIPIENTS = "campaign_total_recipients"
METRICS_MATCH_RECOUNT = "metrics_match_recount"
STAGE_TIMELINE = "stage_timeline"
CONVERSATION_COUNTERS = "conversation_counters"
OUTBOUND_RECORDED_ONCE = "outbound_recorded_once"
OUTBOUND_IN_OUTBOX = "outbound_in_outbox"
OUTBOX_ROWS_RECORDED = "outbox_rows_recorded"
DELIVERY_RECORDED_ONCE = "delivery_recorded_once"
INBOUND_RECORDED_ONCE = "inbound_recorded_once"
NO_STALE_LEASES = "no_stale_leases"
CAMPAIGN_OVER_WHEN_DONE = "campaign_over_when_done"
NO_OVERDUE_WORK = "no_overdue_work"

# Figures every report carries (ints), whatever else it adds.
FIGURES = (
    "recipients",
    "conversations",
    "conversations_lost",
    "conversations_duplicated",
    "messages_recorded",
    "messages_lost",
    "messages_sent_twice",
    "replies_recorded",
    "replies_recorded_twice",
    "metrics_drift",
    "stale_leases",
)
SAMPLE_SIZE = 5


# What a count of offenders says, per invariant, in a report's detail sentence.
COUNTED_SENTENCES = {
    STAGE_TIMELINE: "conversations have an inconsistent stage timeline",
    CONVERSATION_COUNTERS: "conversations' counters disagree with their history",
    OUTBOUND_RECORDED_ONCE: "outbound messages recorded twice in a history",
    OUTBOUND_IN_OUTBOX: "recorded messages are not deliverable or delivered in the outbox",
    OUTBOX_ROWS_RECORDED: "outbox rows are recorded in no history",
    DELIVERY_RECORDED_ONCE: "delivery statuses recorded twice",
    INBOUND_RECORDED_ONCE: "replies recorded twice",
    NO_STALE_LEASES: "leases held past their expiry",
    NO_OVERDUE_WORK: "work overdue: active conversations due that nothing processed, or "
    "recorded messages the sweep has not published",
}
# The order of a report's violations.
REPORT_ORDER = (
    ONE_CONVERSATION_PER_RECIPIENT,
    INVALID_RECIPIENTS_COUNTED,
    CAMPAIGN_TOTAL_RECIPIENTS,
    METRICS_MATCH_RECOUNT,
    STAGE_TIMELINE,
    CONVERSATION_COUNTERS,
    OUTBOUND_RECORDED_ONCE,
    OUTBOUND_IN_OUTBOX,
    OUTBOX_ROWS_RECORDED,
    DELIVERY_RECORDED_ONCE,
    INBOUND_RECORDED_ONCE,
    NO_STALE_LEASES,
    NO_OVERDUE_WORK,
    CAMPAIGN_OVER_WHEN_DONE,
)


@dataclass(frozen=True)
class Violation:
    """One invariant that does not hold: its stable name, a sentence with counts, and up
    to ``SAMPLE_SIZE`` offending ids."""

    invariant: str
    detail: str
    sample: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"invariant": self.invariant, "detail": self.detail, "sample": list(self.sample)}


@dataclass(frozen=True)
class InvariantReport:
    """What ``CampaignManager.check_invariants`` found for one campaign."""

    campaign_id: str
    violations: tuple[Violation, ...]
    figures: Mapping[str, int]

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign_id": self.campaign_id,
            "ok": self.ok,
            "figures": dict(self.figures),
            "violations": [violation.as_dict() for violation in self.violations],
        }


@dataclass
class Findings:
    """Counts and sample ids per invariant, gathered while documents stream by."""

    counts: Counter[str] = field(default_factory=Counter)
    samples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, invariant: str, item: str, count: int = 1) -> None:
        self.counts[invariant] += count
        sample = self.samples.setdefault(invariant, [])
        if len(sample) < SAMPLE_SIZE and item not in sample:
            sample.append(item)

    def sample(self, invariant: str) -> tuple[str, ...]:
        return tuple(self.samples.get(invariant, ()))


@dataclass(frozen=True)
class HistoryFacts:
    """What one conversation's history holds, by message id."""

    outbound: tuple[str, ...]  # distinct outbound ids, in history order
    inbound: int  # distinct inbound ids
    outbound_entries: int
    inbound_entries: int
    outbound_repeated: int  # entries beyond the first of an outbound id
    inbound_repeated: int  # entries beyond the first of an inbound id
    # Outbound entries beyond the first for one (stage, step, stage entry) under
    # different ids: the same message recorded twice.
    step_repeated: int
    steps: frozenset[tuple[str, int]]  # (stage, step) of the recorded outbound messages


def history_facts(conversation: AuditedConversation) -> HistoryFacts:
    """The history facts of a conversation."""
    outbound: Counter[str] = Counter()
    inbound: Counter[str] = Counter()
    step_ids: dict[tuple[str, int, int], set[str]] = {}
    steps: set[tuple[str, int]] = set()
    for entry in conversation.history:
        if entry.inbound:
            inbound[entry.message_id] += 1
            continue
        if entry.withheld:
            continue
        outbound[entry.message_id] += 1
        if entry.stage is not None and entry.step is not None:
            steps.add((entry.stage, entry.step))
            if entry.visit is not None:
                step_ids.setdefault((entry.stage, entry.step, entry.visit), set()).add(
                    entry.message_id
                )
    return HistoryFacts(
        outbound=tuple(outbound),
        inbound=len(inbound),
        outbound_entries=sum(outbound.values()),
        inbound_entries=sum(inbound.values()),
        outbound_repeated=sum(n - 1 for n in outbound.values()),
        inbound_repeated=sum(n - 1 for n in inbound.values()),
        step_repeated=sum(len(ids) - 1 for ids in step_ids.values()),
        steps=frozenset(steps),
    )


def counter_fault(conversation: AuditedConversation, facts: HistoryFacts) -> str | None:
    """Why the conversation's own counters disagree with its history (None: they agree)."""
    sent, received = conversation.messages_sent, conversation.messages_received
    if sent != facts.outbound_entries:
        return f"messages_sent {sent} but {facts.outbound_entries} outbound entries"
    if received != facts.inbound_entries:
        return f"messages_received {received} but {facts.inbound_entries} inbound entries"
    return None


def timeline_fault(conversation: AuditedConversation) -> str | None:
    """Why the stage timeline is inconsistent (None: it is consistent).

    An active conversation has exactly one open stage entry, the last, named
    ``current_stage``; a finished one has none. Every entry exits no earlier than it was
    entered, and the next one is entered no earlier than the previous exit.
    """
    stages = conversation.stages
    if not stages:
        return "no stage entries"
    open_entries = [i for i, entry in enumerate(stages) if entry.open]
    if conversation.status == "active":
        if len(open_entries) != 1:
            return f"{len(open_entries)} open stage entries in an active conversation"
        if open_entries[0] != len(stages) - 1:
            return "the open stage entry is not the last"
        if stages[-1].name != conversation.current_stage:
            return f"open stage {stages[-1].name!r} is not {conversation.current_stage!r}"
    elif open_entries:
        return f"{len(open_entries)} open stage entries in a {conversation.status} conversation"
    previous: datetime | None = None
    for index, entry in enumerate(stages):
        entered, exited = entry.entered_at, entry.exited_at
        if entered is None:
            return f"stage entry {index} has no entered_at"
        if previous is not None and entered < previous:
            return f"stage entry {index} entered before the previous one ended"
        if exited is not None and exited < entered:
            return f"stage entry {index} exited before it was entered"
        if entry.completed and exited is None:
            return f"stage entry {index} is completed but open"
        previous = exited or entered
    return None


def expired(moment: datetime | None, now: datetime) -> bool:
    """Whether a stored lease time is in the past."""
    return moment is not None and moment < now


def _date(value: object) -> datetime | None:
    return to_utc(value) if isinstance(value, datetime) else None


__all__ = [
    "CAMPAIGN_OVER_WHEN_DONE",
    "CAMPAIGN_TOTAL_RECIPIENTS",
    "CONVERSATION_COUNTERS",
    "COUNTED_SENTENCES",
    "DELIVERY_RECORDED_ONCE",
    "FIGURES",
    "INBOUND_RECORDED_ONCE",
    "INVALID_RECIPIENTS_COUNTED",
    "METRICS_MATCH_RECOUNT",
    "NO_OVERDUE_WORK",
    "NO_STALE_LEASES",
    "ONE_CONVERSATION_PER_RECIPIENT",
    "OUTBOUND_IN_OUTBOX",
    "OUTBOUND_RECORDED_ONCE",
    "OUTBOX_ROWS_RECORDED",
    "REPORT_ORDER",
    "SAMPLE_SIZE",
    "STAGE_TIMELINE",
    "Findings",
    "HistoryFacts",
    "InvariantReport",
    "Violation",
    "counter_fault",
    "expired",
    "history_facts",
    "timeline_fault",
]
