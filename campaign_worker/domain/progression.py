"""Pure stage progression: (conversation state, template, now) -> decision, and ``run``:
evaluate and apply until the conversation waits or finishes.

Nothing here does I/O or reads a clock; the service layer passes ``now`` in and writes
the resulting state with one conditional update. The decisions and effects are in
``domain.effects``, applying a decision in ``domain.transitions``; the facts about a
stage (rules, waits, send window) in ``domain.rules``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from campaign_worker.domain import journeys
from campaign_worker.domain.branches import Route, next_route
from campaign_worker.domain.documents import (
    FINISHED_STATUSES,
    ConversationState,
    Message,
)
from campaign_worker.domain.effects import TERMINAL_ACTIONS, Action, Decision, Effects
from campaign_worker.domain.journeys import route_decision
from campaign_worker.domain.limits import MAX_HISTORY_MESSAGES
from campaign_worker.domain.rules import (
    inbound_in_stage,
    last_outbound_in_stage,
    next_send_time,
    rule_wakeups,
    should_advance,
    understood,
    wait_after,
)
from campaign_worker.domain.templates import (
    CampaignTypeTemplate,
    Stage,
    Template,
)
from campaign_worker.domain.transitions import apply

# ---------------------------------------------------------------- evaluation


def evaluate(
    state: ConversationState,
    template: Template,
    type_template: CampaignTypeTemplate,
    now: datetime,
    holds: Mapping[str, datetime] | None = None,
) -> Decision:
    """Decide what happens to ``state`` at ``now``. Pure. ``holds``: channel -> no send
    before then (a frequency cap)."""
    over = _over(state, template)
    if over is not None:
        return over
    stage = type_template.stage(state.current_stage)
    if stage is None:
        return Decision(Action.FAIL, f"stage {state.current_stage!r} no longer in template")
    held = journeys.held_for_review(state)
    if held is not None:
        return held
    following = next_route(type_template, stage)
    entered_at = state.current_stage_entry().entered_at
    branched = journeys.reply_branch(state, stage) or journeys.event_branch(state, stage)
    if branched is not None:
        return branched
    paused = journeys.paused_until(state, now)
    if paused is not None:
        return Decision(Action.WAIT, "out of office", next_action_at=paused)

    advance, reason = should_advance(state, stage, now)
    if advance:
        return route_decision(following, reason)
    wait = _Wait(reason)
    timeout, deadline = journeys.timed_out(state, stage, entered_at, now)
    if timeout is not None:
        return timeout
    wait.wakeups += [deadline] if deadline is not None else []
    timed_out = _time_limit(stage, entered_at, now, following, wait)
    if timed_out is not None:
        return timed_out
    if stage.advance_when is not None:
        wait.wakeups += [w for w in rule_wakeups(stage.advance_when, entered_at) if w > now]
    decided = _drip(state, template, stage, now, wait, holds or {})
    if decided is not None:
        return decided
    future = [when for when in wait.wakeups if when > now]
    return Decision(Action.WAIT, wait.reason, next_action_at=min(future) if future else None)


@dataclass
class _Wait:
    """Why the conversation waits, and the moments something may change."""

    reason: str
    wakeups: list[datetime] = field(default_factory=list)


def _over(state: ConversationState, template: Template) -> Decision | None:
    """Finished, at the history limit, or opted out: whatever the stage says."""
    if state.status in FINISHED_STATUSES:
        return Decision(Action.NONE, f"conversation is {state.status.value}")
    if len(state.message_history) >= MAX_HISTORY_MESSAGES:
        return Decision(Action.FAIL, f"message history limit ({MAX_HISTORY_MESSAGES}) reached")
    return journeys.opt_out(state, template)


def _time_limit(
    stage: Stage, entered_at: datetime, now: datetime, following: Route, wait: _Wait
) -> Decision | None:
    """``max_time_in_stage``: reached, advance or fail; else its deadline is a wakeup."""
    if stage.max_time_in_stage is None:
        return None
    deadline = entered_at + stage.max_time_in_stage.after
    if now < deadline:
        wait.wakeups.append(deadline)
        return None
    why = f"max time in stage ({stage.max_time_in_stage.after}) reached"
    if stage.max_time_in_stage.then == "advance":
        return route_decision(following, why)
    return Decision(Action.FAIL, why)


def _drip(
    state: ConversationState,
    template: Template,
    stage: Stage,
    now: datetime,
    wait: _Wait,
    holds: Mapping[str, datetime],
) -> Decision | None:
    """The stage's messages: end after too many follow-ups without reply, send the next
    one when due (inside the send window), or note when that will be."""
    last = last_outbound_in_stage(state, stage.name)
    replied = _answered(state, stage)
    limit = stage.max_followups_without_reply
    if (
        limit is not None
        and not replied
        and last is not None
        and state.stage_step - 1 >= limit.count
    ):
        quiet_until = last.timestamp + wait_after(stage, state.stage_step - 1)
        if now >= quiet_until:
            heard = " an understood" if inbound_in_stage(state, stage.name) else ""
            why = f"{state.stage_step - 1} follow-ups without{heard} reply"
            return Decision(Action.COMPLETE if limit.then == "complete" else Action.FAIL, why)
        wait.wakeups.append(quiet_until)
    elif state.stage_step < len(stage.messages):
        return _next_message(state, template, stage, now, last, wait, holds)
    elif last is not None and (stage.advance_when is None or (limit is not None and not replied)):
        wait.wakeups.append(last.timestamp + wait_after(stage, state.stage_step - 1))
    return None


def _answered(state: ConversationState, stage: Stage) -> bool:
    """A reply that ends the follow-up count: any reply, but under ``reply_received: true``
    only an understood one. An ``other`` reply there neither advances the stage nor would
    count as silence, so the conversation would wait forever."""
    replies = inbound_in_stage(state, stage.name)
    rule = stage.advance_when
    if rule is not None and rule.reply_received is True:
        return any(understood(state, message) for message in replies)
    return bool(replies)


def _next_message(
    state: ConversationState,
    template: Template,
    stage: Stage,
    now: datetime,
    last: Message | None,
    wait: _Wait,
    holds: Mapping[str, datetime],
) -> Decision | None:
    step = state.stage_step
    due_at = now if last is None else last.timestamp + wait_after(stage, step - 1)
    if now < due_at:
        wait.wakeups.append(due_at)
        return None
    opens_at = next_send_time(now, template.send_window, state.context.timezone)
    if opens_at > now:
        wait.wakeups += [opens_at, due_at]
        wait.reason = "outside the recipient's send window"
        return None
    held = holds.get(stage.messages[step].channel)
    if held is not None and held > now:
        wait.wakeups += [held]
        wait.reason = "frequency cap reached for the channel"
        return None
    after_send = now + stage.messages[step].wait
    next_at = min([after_send, *[w for w in wait.wakeups if w > now]])
    reason = "follow-up due" if step else "stage entered"
    return Decision(Action.SEND, reason, step=step, next_action_at=next_at)


def run(
    state: ConversationState,
    template: Template,
    type_template: CampaignTypeTemplate,
    now: datetime,
    *,
    max_steps: int = 32,
    holds: Mapping[str, datetime] | None = None,
) -> tuple[ConversationState, Effects]:
    """Evaluate and apply until the conversation waits or finishes.

    A reply that satisfies a stage advances it and sends the next stage's first message
    in the same pass, so one write covers the whole chain.
    """
    effects = Effects()
    for _ in range(max_steps):
        decision = evaluate(state, template, type_template, now, holds)
        if decision.action == Action.NONE:
            effects.decisions.append(decision)
            break
        state = apply(state, decision, template, type_template, now, effects)
        if decision.action in (Action.WAIT, *TERMINAL_ACTIONS):
            break
    return state, effects


def first_action_at(start_at: datetime | None, now: datetime) -> datetime:
    return max(start_at, now) if start_at else now


__all__ = ["evaluate", "first_action_at", "run"]
