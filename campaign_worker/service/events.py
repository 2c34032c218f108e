"""Users' events, recorded in batches: each event once (``events``, by event id), then
applied to every conversation of its user that listens, in every campaign, in a handful
of round trips per batch.

1. Record the batch (one unordered insert; an id seen before is a duplicate, applied
   again all the same: a crash after the insert must not lose its effects; conversations
   keep the event ids they hold, so nothing is applied twice).
2. Enroll: campaigns whose ``entry`` is one of the batch's events enroll their users
   (``enrollment.enroll_people``, one conversation per person and entry).
3. Apply: one read of the users' listening conversations (active ones; finished ones
   whose goal window is open), each campaign read once; per conversation, its user's
   events in order: the goal converts it (``domain/goals.py``), an event its stages react
   to is recorded in its stage visit and the conversation evaluated (``on_event``,
   ``event`` rules); then one bulk compare-and-set, published and accounted
   (``writes.write_changes``); conversations that lost a race are re-read and recomputed.

An event that arrives before its conversation exists is applied when the conversation is
created (``apply_pending``, called by the enrollment after its insert): the event was
stored before this flow read the conversations, so one of the two sees the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from campaign_worker.domain import goals
from campaign_worker.domain.campaign_documents import CampaignStatus, StoredCampaign
from campaign_worker.domain.documents import ConversationState, Unreadable
from campaign_worker.domain.effects import Effects
from campaign_worker.domain.enrollment import EventFact, event_window, record_event
from campaign_worker.domain.errors import ConcurrencyConflictError, InvalidInputError
from campaign_worker.service.context import Services
from campaign_worker.service.event_recording import Tally
from campaign_worker.service.metrics_ledger import MetricsLedger
from campaign_worker.service.send_guard import Verdict
from campaign_worker.service.template_versions import Pair
from campaign_worker.service.writes import CAS_ATTEMPTS, Current, Evaluated, Rerun, guard_sends
from campaign_worker.service.writes import write_changes as _write_changes

log = structlog.get_logger(__name__)
_WOUND_DOWN = frozenset({CampaignStatus.CANCELLED, CampaignStatus.COMPLETED})
LedgerOf = Callable[[str], MetricsLedger]


@dataclass
class Target:
    """One conversation and the events of its user to apply to it, in order."""

    campaign: StoredCampaign
    state: ConversationState
    templates: Pair
    facts: list[EventFact] = field(default_factory=list)
    verdict: Verdict | None = None


def apply_events(
    svc: Services, targets: dict[str, Target], ledger_of: LedgerOf, tally: Tally
) -> None:
    """Apply each target's events, write, and re-read and retry those that lost a race."""
    pending = dict(targets)
    for attempt in range(CAS_ATTEMPTS):
        if attempt:
            _reread(svc, pending)
        now = svc.clock.now()
        counts: dict[str, Tally] = {cid: Tally() for cid in pending}
        changes: list[Evaluated] = []
        for target in pending.values():
            target.verdict = None
            change = _change(target, now, counts[target.state.id])
            if change is None:
                svc.publisher.leftovers([target.state])
            else:
                changes.append(change)
        rerun = _rerun(pending, now, counts)
        guarded = guard_sends(svc, changes, now, rerun)
        written = _write_changes(svc, guarded, ledger_of, now)
        for conversation_id in [*written.applied, *written.failed]:
            _merge(tally, counts.get(conversation_id))
            pending.pop(conversation_id, None)
        for conversation_id, reason in written.failed.items():
            log.error("event_not_stored", conversation_id=conversation_id, reason=reason)
        tried = {c.old.id for c in guarded}
        for conversation_id in [cid for cid in pending if cid not in tried]:
            pending.pop(conversation_id)  # nothing to do for it
        if not pending:
            return
        log.info("events_conflict", conversations=len(pending), attempt=attempt + 1)
    raise ConcurrencyConflictError(f"{len(pending)} conversations kept changing; try again")


def _rerun(pending: dict[str, Target], now: datetime, counts: dict[str, Tally]) -> Rerun:
    """Re-run a change as the send guard ruled (a suppressed recipient opts out)."""

    def rerun(change: Evaluated, verdict: Verdict) -> Evaluated | None:
        target = pending[change.old.id]
        target.verdict = verdict
        return _change(target, now, counts[target.state.id])

    return rerun


def _merge(into: Tally, counts: Tally | None) -> None:
    if counts is None:
        return
    for name in ("applied", "converted"):
        for event_id, count in getattr(counts, name).items():
            Tally.add(getattr(into, name), event_id, count)


def _change(target: Target, now: datetime, counts: Tally) -> Evaluated | None:
    """The target's state with its events applied (and evaluated), or None if none of
    them changes it (all recorded already, or none it listens to)."""
    counts.applied.clear()
    counts.converted.clear()
    state, effects = target.state, Effects()
    for fact in target.facts:
        step = _applied(target, state, fact, now)
        if step is None:
            continue
        state, changed, converted = step
        Tally.add(counts.applied, fact.event_id)
        if converted:
            Tally.add(counts.converted, fact.event_id)
        effects.outbound += changed.outbound
        effects.transitions += changed.transitions
        effects.decisions += changed.decisions
        effects.delta.add(changed.delta)
    return None if state is target.state else Evaluated(target.state, state, effects)


def _applied(
    target: Target, state: ConversationState, fact: EventFact, now: datetime
) -> tuple[ConversationState, Effects, bool] | None:
    """One event applied to ``state``: a conversion, and (active) recorded and evaluated."""
    template, type_template = target.templates
    effects = Effects()
    new = state
    conversion = goals.conversion_for(
        state, type_template.goal, fact.event, fact.event_id, fact.timestamp
    )
    if conversion is not None:
        new = new.model_copy(update={"conversion": conversion})
        goals.count_conversion(conversion, effects.delta)
    recorded = record_event(new, fact, type_template) if state.status == "active" else None
    if recorded is not None:
        new = recorded
        status = target.campaign.status
        if status == CampaignStatus.RUNNING:
            verdict = target.verdict or Verdict()
            current = Current(
                state, template, type_template, now, verdict.suppressed, verdict.holds
            )
            new, ran = current.run(new)
            effects.outbound += ran.outbound
            effects.transitions += ran.transitions
            effects.decisions += ran.decisions
            effects.delta.add(ran.delta)
        elif status not in _WOUND_DOWN:
            new = new.model_copy(update={"next_action_at": now})  # evaluated on resume
    return None if new is state else (new, effects, conversion is not None)


def _reread(svc: Services, pending: dict[str, Target]) -> None:
    fresh = {s.id: s for s in svc.conversation_state_repository.get_many(sorted(pending))}
    for conversation_id in list(pending):
        found = fresh.get(conversation_id)
        if isinstance(found, ConversationState):
            pending[conversation_id].state = found
        else:
            pending.pop(conversation_id)


def targets_for(
    svc: Services, states: Sequence[ConversationState | Unreadable], facts: Sequence[EventFact]
) -> dict[str, Target]:
    """Each readable conversation with its user's events (one read per campaign)."""
    by_user: dict[str, list[EventFact]] = {}
    for fact in facts:
        by_user.setdefault(fact.user_id, []).append(fact)
    campaigns: dict[str, StoredCampaign | None] = {}
    targets: dict[str, Target] = {}
    for state in states:
        if isinstance(state, Unreadable):
            log.warning("conversation_unreadable", conversation_id=state.id)
            continue
        if state.campaign_id not in campaigns:
            campaigns[state.campaign_id] = svc.campaigns.get(state.campaign_id)
        campaign = campaigns[state.campaign_id]
        trigger = state.enrolled_by or ""
        mine = [f for f in by_user.get(state.user_id, []) if f"event:{f.event_id}" != trigger]
        if campaign is None or not mine:
            continue
        try:
            templates = svc.type_template(state)
        except InvalidInputError as exc:  # its template is gone: it alone misses the event
            log.error("conversation_template_unusable", conversation_id=state.id, error=str(exc))
            continue
        targets[state.id] = Target(campaign, state, templates, mine)
    return targets


def apply_pending(
    svc: Services,
    campaign: StoredCampaign,
    states: Sequence[ConversationState],
    ledger: MetricsLedger,
    tally: Tally,
) -> None:
    """Events that arrived (at most the first stage's window) before these new
    conversations were created: applied now (one read; a write only if any)."""
    if not states:
        return
    templates = svc.type_template(campaign)
    window = event_window(templates[1])
    since = min(state.created_at for state in states) - window
    facts = svc.events.recent_of_users(sorted({s.user_id for s in states}), since)
    if not facts:
        return
    targets = {}
    for state in states:
        trigger = state.enrolled_by or ""
        mine = [
            f
            for f in facts
            if f.user_id == state.user_id
            and f"event:{f.event_id}" != trigger
            and f.timestamp >= state.created_at - window
        ]
        if mine:
            targets[state.id] = Target(campaign, state, templates, mine)
    apply_events(svc, targets, lambda _: ledger, tally)


__all__ = ["Target", "apply_events", "apply_pending", "targets_for"]
