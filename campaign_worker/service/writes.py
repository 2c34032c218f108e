"""Writing conversations: the steps every flow shares.

- ``guard_sends``: the one send-guard step (ask about the sends, re-run what it refuses,
  count deferrals and suppressions);
- ``write_changes``: the one write sequence (metrics ledger, bulk compare-and-set, then
  for what landed: increment, outbox, opt-outs, counters);
- ``write_one``: one conversation's ``StateChange`` (the pure part: given the current
  state, its template and ``now``, the new state and its effects, or None when there is
  nothing to do, a replay) through both, retried from a fresh read when a concurrent
  writer won.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from campaign_worker.domain.documents import ConversationState
from campaign_worker.domain.effects import Action, Decision, Effects
from campaign_worker.domain.errors import ConcurrencyConflictError, InvalidDocumentError
from campaign_worker.domain.progression import run
from campaign_worker.domain.templates import CampaignTypeTemplate, Template
from campaign_worker.domain.transitions import apply
from campaign_worker.service.context import Services
from campaign_worker.service.metrics_ledger import MetricsLedger
from campaign_worker.service.ports import WriteOutcome
from campaign_worker.service.send_guard import Verdict

Outcome = tuple[ConversationState, Effects]


@dataclass(frozen=True)
class Current:
    """What a state change sees: the stored state, its template and the time; and, when
    the send guard refused its sends, why (suppressed) or which channels wait (holds)."""

    state: ConversationState
    template: Template
    type_template: CampaignTypeTemplate
    now: datetime
    suppressed: str | None = None
    holds: Mapping[str, datetime] = field(default_factory=dict)

    def run(self, state: ConversationState) -> Outcome:
        """Run ``state``'s due steps as the guard allows (``progression.run``): a
        suppressed recipient's conversation opts out instead of sending; held channels
        wait."""
        if self.suppressed is not None:
            effects = Effects()
            decision = Decision(Action.OPT_OUT, self.suppressed)
            return apply(
                state, decision, self.template, self.type_template, self.now, effects
            ), effects
        return run(state, self.template, self.type_template, self.now, holds=self.holds)


StateChange = Callable[[Current], Outcome | None]
CAS_ATTEMPTS = 8


@dataclass(frozen=True)
class Evaluated:
    """One conversation's evaluated change, ready to be written."""

    old: ConversationState
    new: ConversationState
    effects: Effects


#: Re-run a change as the send guard ruled (suppressed: opt out; holds: wait).
Rerun = Callable[[Evaluated, Verdict], Evaluated | None]


def guard_sends(
    svc: Services, changes: list[Evaluated], now: datetime, rerun: Rerun
) -> list[Evaluated]:
    """The one send-guard step of every flow: ask the guard about the changes' sends
    (one suppression query, the frequency cap's slots; a change that sends nothing is not
    asked about), re-run each change it rules on, and count what it deferred and
    suppressed. Returns the changes to write."""
    verdicts = svc.send_guard.check([(c.old, c.effects) for c in changes], now)
    if not verdicts:
        return changes
    ruled: list[Evaluated] = []
    for change in changes:
        verdict = verdicts.get(change.old.id)
        if verdict is None:
            ruled.append(change)
            continue
        again = rerun(change, verdict)
        if again is not None:
            again.effects.delta.deferred += len(verdict.holds)
            ruled.append(again)
        for channel in verdict.holds:
            svc.metrics.messages_deferred(channel, 1)
        if verdict.suppressed is not None:
            svc.metrics.suppressed(change.old.campaign_type, 1)
    return ruled


def write_one(
    svc: Services,
    conversation_id: str,
    change: StateChange,
    first_read: ConversationState | None = None,
) -> ConversationState:
    """Apply ``change`` to one conversation; returns the state as stored afterwards.
    ``first_read`` saves the first read when the caller has just loaded the document."""
    ledger: MetricsLedger | None = None  # one registration across the attempts
    try:
        for _ in range(CAS_ATTEMPTS):
            state = _read(svc, conversation_id, first_read)
            first_read = None
            ledger = ledger or svc.ledger(state.campaign_id)
            now = svc.clock.now()
            evaluated = _evaluate(svc, state, change, now)
            if evaluated is None:
                svc.publisher.leftovers([state])  # a replay after a crash
                return state
            stored = _attempt(svc, ledger, evaluated, now)
            if stored is not None:
                return stored
    finally:
        if ledger is not None:
            ledger.close()
    raise ConcurrencyConflictError(
        f"conversation {conversation_id!r} kept changing under us; try again later"
    )


def _evaluate(
    svc: Services, state: ConversationState, change: StateChange, now: datetime
) -> Evaluated | None:
    """``change`` of ``state`` at ``now``, as the send guard allows; None: nothing to do."""
    template, type_template = svc.type_template(state)
    current = Current(state, template, type_template, now)
    outcome = change(current)
    if outcome is None:
        return None

    def rerun(_: Evaluated, verdict: Verdict) -> Evaluated | None:
        ruled = change(replace(current, suppressed=verdict.suppressed, holds=verdict.holds))
        return None if ruled is None else Evaluated(state, *ruled)

    guarded = guard_sends(svc, [Evaluated(state, *outcome)], now, rerun)
    return guarded[0] if guarded else None


def _read(
    svc: Services, conversation_id: str, first_read: ConversationState | None
) -> ConversationState:
    return svc.load(conversation_id) if first_read is None else first_read


def _attempt(
    svc: Services, ledger: MetricsLedger, change: Evaluated, now: datetime
) -> ConversationState | None:
    """One compare-and-set; the stored state, or None when a concurrent writer won (then
    nothing was recorded, so nothing needs withdrawing)."""
    old = change.old
    written = write_changes(svc, [change], lambda _: ledger, now)
    if old.id in written.failed:
        raise InvalidDocumentError(
            f"conversation {old.id!r} cannot store this change: {written.failed[old.id]}"
        )
    if old.id not in written.applied:
        return None
    # What is stored now: the write bumped the version and dropped any lease.
    return change.new.model_copy(
        update={
            "version": old.version + 1,
            "lease_owner": None,
            "lease_until": None,
            "unpublished": [],
        }
    )


def write_changes(
    svc: Services,
    changes: Sequence[Evaluated],
    ledger_of: Callable[[str], MetricsLedger],
    now: datetime,
) -> WriteOutcome:
    """The one write sequence of every flow: write ``changes`` in one bulk
    compare-and-set (registered with each campaign's metrics ledger first, when they
    count), then for those that landed: the ledger's increment, the outbox, the opt-outs
    on the suppression list, the operational counters. ``ledger_of(campaign_id)``: the
    caller's ledger per campaign, closed by the caller. Returns which applied, which the
    store refused; the rest lost a race (nothing of theirs is recorded)."""
    if not changes:
        return WriteOutcome()
    # A write that changes no count cannot be counted twice: no registration.
    counting = {c.old.campaign_id for c in changes if not c.effects.delta.is_empty()}
    for campaign_id in sorted(counting):
        ledger_of(campaign_id).before_write()
    written = svc.conversation_state_repository.write_transitions(
        [(c.old, c.new) for c in changes], now
    )
    for campaign_id in counting:
        ledger_of(campaign_id).after_write()
    landed = [c for c in changes if c.old.id in written.applied]
    for change in landed:
        ledger_of(change.old.campaign_id).add(change.effects.delta)
    svc.publisher.after_writes([(c.old, c.new, written.applied[c.old.id]) for c in landed])
    svc.send_guard.record_opt_outs([(c.old, c.new) for c in landed], now)
    by_type: dict[str, list[Effects]] = {}
    for change in landed:
        by_type.setdefault(change.old.campaign_type, []).append(change.effects)
    for campaign_type, effects in by_type.items():
        svc.record_counters(campaign_type, effects)
    return written


__all__ = [
    "CAS_ATTEMPTS",
    "Current",
    "Evaluated",
    "Outcome",
    "Rerun",
    "StateChange",
    "guard_sends",
    "write_changes",
    "write_one",
]
