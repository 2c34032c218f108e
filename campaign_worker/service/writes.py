"""One conversation's state change: read, compute, compare-and-set, publish, account.

A ``StateChange`` is the pure part: given the current state, its template and ``now``,
it returns the new state and its effects, or None when there is nothing to do (a
replay). ``write_one`` retries it from a fresh read when a concurrent writer won.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from campaign_worker.domain.documents import ConversationState
from campaign_worker.domain.errors import ConcurrencyConflictError, InvalidDocumentError
from campaign_worker.domain.progression import Action, Decision, Effects, apply, run
from campaign_worker.domain.templates import CampaignTypeTemplate, Template
from campaign_worker.service.context import Services
from campaign_worker.service.ledger import MetricsLedger

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

    def progress(self, state: ConversationState) -> Outcome:
        """Run ``state``'s steps as the guard allows: a suppressed recipient's
        conversation opts out instead of sending; held channels wait."""
        if self.suppressed is not None:
            effects = Effects()
            decision = Decision(Action.OPT_OUT, self.suppressed)
            return apply(
                state, decision, self.template, self.type_template, self.now, effects
            ), effects
        return run(state, self.template, self.type_template, self.now, holds=self.holds)


StateChange = Callable[[Current], Outcome | None]
CAS_ATTEMPTS = 8


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
            template, type_template = svc.type_template(state)
            now = svc.clock.now()
            current = Current(state, template, type_template, now)
            outcome = _guarded(svc, change, current, change(current))
            if outcome is None:
                svc.publisher.leftovers([state])  # a replay after a crash
                return state
            stored = _attempt(svc, ledger, state, outcome, now)
            if stored is not None:
                return stored
    finally:
        if ledger is not None:
            ledger.close()
    raise ConcurrencyConflictError(
        f"conversation {conversation_id!r} kept changing under us; try again later"
    )


def _guarded(
    svc: Services, change: StateChange, current: Current, outcome: Outcome | None
) -> Outcome | None:
    """If the change sends, ask the send guard; recompute the change as it rules."""
    if outcome is None or not outcome[1].outbound:
        return outcome
    verdict = svc.send_guard.check([(current.state, outcome[1])], current.now).get(current.state.id)
    if verdict is None:
        return outcome
    ruled = replace(current, suppressed=verdict.suppressed, holds=verdict.holds)
    outcome = change(ruled)
    if outcome is not None and verdict.holds:
        outcome[1].delta.deferred += len(verdict.holds)
        for channel in verdict.holds:
            svc.metrics.messages_deferred(channel, 1)
    if verdict.suppressed is not None:
        svc.metrics.suppressed(current.state.campaign_type, 1)
    return outcome


def _read(
    svc: Services, conversation_id: str, first_read: ConversationState | None
) -> ConversationState:
    return svc.load(conversation_id) if first_read is None else first_read


def _attempt(
    svc: Services,
    ledger: MetricsLedger,
    state: ConversationState,
    outcome: Outcome,
    now: datetime,
) -> ConversationState | None:
    """One compare-and-set; the stored state, or None when a concurrent writer won (then
    nothing was recorded, so nothing needs withdrawing)."""
    new_state, effects = outcome
    # A write that changes no count cannot be counted twice: no registration.
    counts = not effects.delta.is_empty()
    if counts:
        ledger.before_write()
    written = svc.conversation_state_repository.write_transitions([(state, new_state)], now)
    if counts:
        ledger.after_write()
    if state.id in written.failed:
        raise InvalidDocumentError(
            f"conversation {state.id!r} cannot store this change: {written.failed[state.id]}"
        )
    token = written.applied.get(state.id)
    if token is None:
        return None
    ledger.add(effects.delta)
    svc.publisher.after_writes([(state, new_state, token)])
    svc.send_guard.record_opt_outs([(state, new_state)], now)
    svc.record_counters(state.campaign_type, [effects])
    # What is stored now: the write bumped the version and dropped any lease.
    return new_state.model_copy(
        update={
            "version": state.version + 1,
            "lease_owner": None,
            "lease_until": None,
            "unpublished": [],
        }
    )


__all__ = ["CAS_ATTEMPTS", "Current", "Outcome", "StateChange", "write_one"]
