"""The invariant checker: what must hold for a campaign whatever crashed, restarted or was
delivered twice (issue 15; docs/architecture.md, "Invariants").

One pass over the campaign's conversations (projected, in batches: bounded memory however
many there are), each batch joined with its outbox rows; one pass over the audience in
batches, each joined with its conversations; the metrics document against the reconcile's
recount (``reconcile.recount``, the one recomputation). ``quiet`` adds what only holds
once nothing runs: no lease past its expiry, no overdue work, a finished campaign over.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from campaign_worker.domain.audited import AuditedConversation, AuditedRow
from campaign_worker.domain.campaign_documents import CampaignStatus, Recipient, StoredCampaign
from campaign_worker.domain.documents import to_utc
from campaign_worker.domain.errors import ConfigurationError
from campaign_worker.domain.invariants import (
    CAMPAIGN_OVER_WHEN_DONE,
    CAMPAIGN_TOTAL_RECIPIENTS,
    CONVERSATION_COUNTERS,
    COUNTED_SENTENCES,
    DELIVERY_RECORDED_ONCE,
    FIGURES,
    INBOUND_RECORDED_ONCE,
    INVALID_RECIPIENTS_COUNTED,
    METRICS_MATCH_RECOUNT,
    NO_OVERDUE_WORK,
    NO_STALE_LEASES,
    ONE_CONVERSATION_PER_RECIPIENT,
    OUTBOUND_IN_OUTBOX,
    OUTBOUND_RECORDED_ONCE,
    OUTBOX_ROWS_RECORDED,
    REPORT_ORDER,
    STAGE_TIMELINE,
    Findings,
    InvariantReport,
    Violation,
    counter_fault,
    expired,
    history_facts,
    timeline_fault,
)
from campaign_worker.domain.metrics_documents import StoredMetrics
from campaign_worker.service.context import Services
from campaign_worker.service.invariants_entries import ENTRY_INVARIANTS, EntryAudit
from campaign_worker.service.polling import always_on_until
from campaign_worker.service.ports import InvariantReads
from campaign_worker.service.reconcile import difference, recount, stored_counts

CONVERSATION_BATCH = 500
# Figures beside the fixed ones (``domain.invariants.FIGURES``), always present too.
EXTRA_FIGURES = (
    "active",
    "invalid_recipients",
    "conversations_unexpected",
    "messages_failed",
    "messages_unpublished",
    "outbox_unrecorded",
    "overdue",
)
RECIPIENT_BATCH = 1000
SHOWN = 5  # metrics paths shown in a drift sentence
# Outbox row statuses that account for a recorded message: deliverable, delivered, or
# failed by delivery (reported, counted in ``messages_failed``; the engine lost nothing).
DELIVERABLE = frozenset({"pending", "sending"})
DELIVERED = frozenset({"sent"})
FAILED = frozenset({"failed"})


def check_invariants(svc: Services, campaign_id: str, *, quiet: bool = True) -> InvariantReport:
    """Check every invariant of the campaign; ``quiet=False`` skips those that only hold
    on a quiet system (leases, overdue work, a finished campaign over) and tolerates what
    is in flight (messages not yet published, metrics while writers are registered)."""
    reads = svc.invariant_reads
    if reads is None:
        raise ConfigurationError("this manager has no invariant reads (see bootstrap.py)")
    campaign = svc.campaign(campaign_id)
    audit = _Audit(svc, reads, campaign, to_utc(svc.clock.now()), quiet)
    audit.conversations()
    audit.recipients()
    audit.metrics()
    if quiet:
        audit.quiet_system()
    return audit.report()


@dataclass
class _Batch:
    """One batch of conversations: what they recorded, for the join with the outbox."""

    recorded: dict[str, set[str]] = field(default_factory=dict)
    steps: dict[str, frozenset[tuple[str, int]]] = field(default_factory=dict)
    unpublished: dict[str, set[str]] = field(default_factory=dict)


class _Audit:
    def __init__(
        self,
        svc: Services,
        reads: InvariantReads,
        campaign: StoredCampaign,
        now: datetime,
        quiet: bool,
    ) -> None:
        self.svc = svc
        self.reads = reads
        self.campaign = campaign
        self.now = now
        self.quiet = quiet
        self.figures: Counter[str] = Counter({name: 0 for name in (*FIGURES, *EXTRA_FIGURES)})
        self.found = Findings()
        self.notes: dict[str, list[str]] = {}  # invariant -> sentences
        self.reasons: dict[str, str] = {}  # invariant -> the first offender and why
        self.registrations: dict[str, datetime] = {}
        self.rows_seen = 0
        self.initialized = campaign.initialized_at is not None
        self.entries = EntryAudit(svc._events)  # always-on: enrolled people, their events

    # ------------------------------------------------------------ conversations

    def conversations(self) -> None:
        for conversations in self.reads.conversations(self.campaign.id, CONVERSATION_BATCH):
            batch = _Batch()
            for conversation in conversations:
                self._conversation(conversation, batch)
            self._join_outbox(batch)
            self.entries.batch(conversations)
        self.entries.finish()
        if self.quiet:
            elsewhere = self.reads.count_outbox(self.campaign.id) - self.rows_seen
            if elsewhere > 0:
                self.figures["outbox_unrecorded"] += elsewhere
                sentence = f"{elsewhere} outbox rows belong to no conversation of the campaign"
                self._note(OUTBOX_ROWS_RECORDED, sentence)

    def _conversation(self, conversation: AuditedConversation, batch: _Batch) -> None:
        cid = conversation.id
        self.figures["conversations"] += 1
        if conversation.status == "active":
            self.figures["active"] += 1
        fault = timeline_fault(conversation)
        if fault:
            self._found(STAGE_TIMELINE, cid, fault)
        facts = history_facts(conversation)
        self.figures["messages_recorded"] += len(facts.outbound)
        self.figures["replies_recorded"] += facts.inbound
        twice = facts.outbound_repeated + facts.step_repeated
        if twice:
            self.figures["messages_sent_twice"] += twice
            self.found.add(OUTBOUND_RECORDED_ONCE, cid, twice)
        if facts.inbound_repeated:
            self.figures["replies_recorded_twice"] += facts.inbound_repeated
            self.found.add(INBOUND_RECORDED_ONCE, cid, facts.inbound_repeated)
        fault = counter_fault(conversation, facts)
        if fault:
            self._found(CONVERSATION_COUNTERS, cid, fault)
        if self.quiet:
            self._conversation_quiet(conversation)
        batch.recorded[cid] = set(facts.outbound)
        batch.steps[cid] = facts.steps
        marked = set(conversation.unpublished)
        if marked:
            # Still marked: the sweep publishes them, however late it comes; never lost.
            batch.unpublished[cid] = marked
            if self._publication_overdue(conversation):
                self.figures["overdue"] += 1
                self.found.add(NO_OVERDUE_WORK, f"publication:{cid}")

    def _publication_overdue(self, conversation: AuditedConversation) -> bool:
        """Once quiet, messages a write left marked are overdue when the poller's sweep
        should have published them (``publish_grace`` after the write, twice that for
        the sweep to come round): a liveness fault (is a beat running?), not a loss."""
        if not self.quiet:
            return False
        due = conversation.publish_due_at
        return due is None or due < self.now - 2 * self.svc.publish_grace

    def _conversation_quiet(self, conversation: AuditedConversation) -> None:
        cid = conversation.id
        if conversation.lease_owner is not None and expired(conversation.lease_until, self.now):
            self._stale(f"conversation:{cid}")
        grace = timedelta(seconds=self.svc.lease_seconds)
        if (
            conversation.status == "active"
            and self.campaign.status == CampaignStatus.RUNNING
            and expired(conversation.next_action_at, self.now - grace)
        ):
            self.figures["overdue"] += 1
            self.found.add(NO_OVERDUE_WORK, cid)

    def _join_outbox(self, batch: _Batch) -> None:
        rows = self.reads.outbox_rows(list(batch.recorded))
        self.rows_seen += len(rows)
        delivered: set[str] = set()
        unrecorded = []
        for row in rows:
            mid, cid = row.id, row.conversation_id
            if mid in batch.recorded.get(cid, ()):
                delivered.add(mid)
                self._row(row)
            else:
                unrecorded.append(row)
            if self.quiet and row.status == "sending" and expired(row.lease_until, self.now):
                self._stale(f"outbox:{mid}")
        for cid, ids in batch.recorded.items():
            for mid in sorted(ids - delivered):
                if mid in batch.unpublished.get(cid, ()):
                    self.figures["messages_unpublished"] += 1  # publication in flight
                    continue
                self.figures["messages_lost"] += 1
                self.found.add(OUTBOUND_IN_OUTBOX, mid)
        self._unrecorded(unrecorded, batch)

    def _row(self, row: AuditedRow) -> None:
        mid, status = row.id, row.status
        if status in FAILED:
            self.figures["messages_failed"] += 1
        elif status not in DELIVERABLE | DELIVERED:
            self.figures["messages_lost"] += 1
            self._found(OUTBOUND_IN_OUTBOX, mid, f"its outbox row is {status!r}")
        events = row.event_statuses
        repeated = len(events) - len(set(events))
        if repeated:
            self.figures["messages_sent_twice"] += repeated
            self.found.add(DELIVERY_RECORDED_ONCE, mid, repeated)

    def _unrecorded(self, rows: list[AuditedRow], batch: _Batch) -> None:
        """Outbox rows of these conversations that their histories do not hold. While
        the system runs, a write may have landed (and published) after the batch was
        read: those conversations are read again first."""
        if rows and not self.quiet:
            fresh = self.reads.conversations_by_id(sorted({r.conversation_id for r in rows}))
            for conversation in fresh:
                facts = history_facts(conversation)
                batch.recorded[conversation.id] = set(facts.outbound)
                batch.steps[conversation.id] = facts.steps
        for row in rows:
            mid, cid = row.id, row.conversation_id
            if mid in batch.recorded.get(cid, ()):
                continue
            step = (row.stage, row.step)
            if step in batch.steps.get(cid, frozenset()):
                self.figures["messages_sent_twice"] += 1  # a second message for one step
            else:
                self.figures["outbox_unrecorded"] += 1
            self.found.add(OUTBOX_ROWS_RECORDED, mid)

    # ------------------------------------------------------------ recipients

    def recipients(self) -> None:
        """Every valid audience row has exactly one conversation (once initialized);
        invalid rows are counted on the campaign. Duplicate rows of one user are counted
        once within a batch of ``RECIPIENT_BATCH`` rows (a collection in ``_id`` order)."""
        full = self.svc.campaigns.get(self.campaign.id, with_recipients=True)
        if full is None or full.recipients is None:
            return
        matched = 0
        for rows, _ in self.svc.campaigns.iter_recipients(full, RECIPIENT_BATCH):
            users: set[str] = set()
            for row in rows:
                if isinstance(row, Recipient):
                    users.add(row.user_id)
                else:
                    self.figures["invalid_recipients"] += 1
            self.figures["recipients"] += len(users)
            if self.initialized:
                matched += self._probe(sorted(users))
        if not self.initialized:
            return
        enrolled = self.entries.figures["enrolled"]
        unexpected = self.figures["conversations"] - matched - enrolled
        unexpected += self.figures.pop("enrolled_matched", 0)
        if unexpected > 0:
            self.figures["conversations_unexpected"] += unexpected
            sentence = f"{unexpected} conversations belong to no recipient"
            self._note(ONE_CONVERSATION_PER_RECIPIENT, sentence)
        invalid, counted = self.figures["invalid_recipients"], self.campaign.invalid_recipients
        if invalid != counted:
            sentence = f"{invalid} audience rows are invalid; the campaign counts {counted}"
            self._note(INVALID_RECIPIENTS_COUNTED, sentence)
        total, conversations = (
            self.campaign.total_recipients,
            self.figures["conversations"] - enrolled,
        )
        if total != conversations:
            sentence = (
                f"the campaign counts {total} recipients; {conversations} conversations exist"
            )
            self._note(CAMPAIGN_TOTAL_RECIPIENTS, sentence)

    def _probe(self, users: Sequence[str]) -> int:
        found = self.reads.conversations_of_users(self.campaign.id, users)
        found = [
            (cid, user) for cid, user in found if self.entries.first(self.campaign.id, cid, user)
        ]
        self.figures["enrolled_matched"] += sum(
            cid in self.entries.enrolled_ids for cid, _ in found
        )
        per_user = Counter(user for _, user in found)
        for user in users:
            count = per_user[user]
            if count == 0:
                self.figures["conversations_lost"] += 1
                self.found.add(ONE_CONVERSATION_PER_RECIPIENT, user, 0)
            elif count > 1:
                self.figures["conversations_duplicated"] += count - 1
                self.found.add(ONE_CONVERSATION_PER_RECIPIENT, user, 0)
        return len(found)

    # ------------------------------------------------------------ metrics

    def metrics(self) -> None:
        """The stored counters against the reconcile's recount. While the system runs, a
        registered writer or an increment landing meanwhile makes a difference expected:
        it is measured (``metrics_drift``) but not a violation."""
        empty = StoredMetrics(id=self.campaign.id)
        before = self.svc.campaign_metrics.get(self.campaign.id) or empty
        expected = recount(self.svc, self.campaign)
        after = self.svc.campaign_metrics.get(self.campaign.id) or empty
        drift = difference(expected, stored_counts(after))
        self.figures["metrics_drift"] = math.ceil(sum(abs(v) for v in drift.values()) - 1e-6)
        settled = before.revision == after.revision and not after.inflight
        if drift and (self.quiet or settled):
            paths = sorted(drift)
            shown = ", ".join(f"{path} {drift[path]:+g}" for path in paths[:SHOWN])
            sentence = f"{len(paths)} counters differ from a recount (recount - stored: {shown})"
            self._note(METRICS_MATCH_RECOUNT, sentence, paths)
        self.registrations = dict(after.inflight)

    # ------------------------------------------------------------ quiet system

    def quiet_system(self) -> None:
        # A registration expires when the reconcile takes its writer for dead (a
        # dispatched task's too: it may still run, long after the poller moved on).
        for token, since in self.registrations.items():
            if isinstance(since, datetime) and to_utc(since) + self.svc.inflight_timeout < self.now:
                self._stale(f"registration:{token}")
        if self.campaign.lease_owner is not None and expired(self.campaign.lease_until, self.now):
            self._stale(f"campaign:{self.campaign.id}")
        status, active = self.campaign.status, self.figures["active"]
        always_on = always_on_until(self.campaign, self.now)  # completes past ends_at only
        if status == CampaignStatus.RUNNING and self.initialized and not active and not always_on:
            self._note(CAMPAIGN_OVER_WHEN_DONE, "running with no active conversation left")
        elif status == CampaignStatus.CANCELLED and active:
            self._note(CAMPAIGN_OVER_WHEN_DONE, f"cancelled with {active} active conversations")
        elif status == CampaignStatus.INITIALIZING and expired(self.campaign.lease_until, self.now):
            self._note(CAMPAIGN_OVER_WHEN_DONE, "initializing, its initializer's lease expired")

    def _found(self, invariant: str, item: str, reason: str) -> None:
        self.found.add(invariant, item)
        self.reasons.setdefault(invariant, f"{item}: {reason}")

    def _stale(self, what: str) -> None:
        self.figures["stale_leases"] += 1
        self.found.add(NO_STALE_LEASES, what)

    # ------------------------------------------------------------ report

    def _note(self, invariant: str, sentence: str, sample: Sequence[str] = ()) -> None:
        self.notes.setdefault(invariant, []).append(sentence)
        for item in sample:
            self.found.add(invariant, item, 0)

    def report(self) -> InvariantReport:
        f, found = self.figures, self.found
        f.update(self.entries.figures)
        self.entries.into(found, self._note)
        sentences = {
            invariant: f"{found.counts[invariant]} {what}"
            for invariant, what in COUNTED_SENTENCES.items()
            if found.counts[invariant]
        }
        lost, extra = f["conversations_lost"], f["conversations_duplicated"]
        sentences[ONE_CONVERSATION_PER_RECIPIENT] = _join(
            f"{lost} of {f['recipients']} recipients have no conversation" if lost else "",
            f"{extra} surplus conversations of recipients" if extra else "",
        )
        violations = []
        for invariant in (*REPORT_ORDER, *ENTRY_INVARIANTS):
            first = self.reasons.get(invariant)
            count = sentences.get(invariant, "")
            parts = [f"{count} (first: {first})" if first else count]
            parts += self.notes.get(invariant, [])
            detail = _join(*parts)
            if detail:
                violations.append(Violation(invariant, detail, found.sample(invariant)))
        return InvariantReport(self.campaign.id, tuple(violations), dict(f))


def _join(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


__all__ = ["InvariantReport", "Violation", "check_invariants"]
