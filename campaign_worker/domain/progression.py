"""Pure stage progression: (conversation state, template, now) -> decision -> new state.

Nothing here does I/O or reads a clock; the service layer passes ``now`` in and writes
the resulting state with one conditional update.
"""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from campaign_worker.domain.documents import (
    FINISHED_STATUSES,
    ConversationState,
    ConversationStatus,
    Direction,
    Message,
    StageEntry,
    message_id_for,
    to_utc,
)
from campaign_worker.domain.limits import MAX_HISTORY_MESSAGES
from campaign_worker.domain.templates import (
    CampaignTypeTemplate,
    Rule,
    SendWindow,
    Stage,
    Template,
)


class Action(StrEnum):
    SEND = "send"
    ADVANCE = "advance"
    COMPLETE = "complete"
    FAIL = "fail"
    OPT_OUT = "opt_out"
    CANCEL = "cancel"
    WAIT = "wait"
    NONE = "none"


TERMINAL_ACTIONS = frozenset({Action.COMPLETE, Action.FAIL, Action.OPT_OUT, Action.CANCEL})


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    next_stage: str | None = None
    step: int | None = None
    next_action_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "reason": self.reason,
            "next_stage": self.next_stage,
            "step": self.step,
            "next_action_at": self.next_action_at,
        }


@dataclass
class MetricsDelta:
    """Changes to one campaign's metrics document caused by some transitions."""

    total_recipients: int = 0
    active: int = 0
    completed: int = 0
    failed: int = 0
    opted_out: int = 0
    cancelled: int = 0
    invalid_recipients: int = 0
    sent: int = 0
    received: int = 0
    stage_entered: Counter[str] = field(default_factory=Counter)
    stage_completed: Counter[str] = field(default_factory=Counter)
    stage_duration: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, other: MetricsDelta) -> None:
        self.total_recipients += other.total_recipients
        self.active += other.active
        self.completed += other.completed
        self.failed += other.failed
        self.opted_out += other.opted_out
        self.cancelled += other.cancelled
        self.invalid_recipients += other.invalid_recipients
        self.sent += other.sent
        self.received += other.received
        self.stage_entered.update(other.stage_entered)
        self.stage_completed.update(other.stage_completed)
        for stage, seconds in other.stage_duration.items():
            self.stage_duration[stage] += seconds

    def is_empty(self) -> bool:
        return not (
            self.total_recipients
            or self.active
            or self.completed
            or self.failed
            or self.opted_out
            or self.cancelled
            or self.invalid_recipients
            or self.sent
            or self.received
            or +self.stage_entered
            or +self.stage_completed
            or any(self.stage_duration.values())
        )


@dataclass(frozen=True)
class OutboundEnvelope:
    """A message the delivering service must send (written to the outbox)."""

    message_id: str
    conversation_id: str
    campaign_id: str
    user_id: str
    channel: str
    content: str
    stage: str
    step: int
    created_at: datetime


@dataclass(frozen=True)
class StageTransition:
    from_stage: str
    to_stage: str | None  # None when the conversation finished in from_stage
    outcome: str | None = None


@dataclass
class Effects:
    outbound: list[OutboundEnvelope] = field(default_factory=list)
    transitions: list[StageTransition] = field(default_factory=list)
    delta: MetricsDelta = field(default_factory=MetricsDelta)
    decisions: list[Decision] = field(default_factory=list)


# ---------------------------------------------------------------- facts about a stage


def _normalise(text: str) -> str:
    return re.sub(r"[\s\W_]+$", "", text.strip()).upper()


def is_opt_out(content: str, keywords: list[str]) -> bool:
    """Carrier practice: the keyword is the whole message (case and trailing punctuation aside)."""
    normalised = _normalise(content)
    return any(normalised == _normalise(keyword) for keyword in keywords)


def inbound_in_stage(state: ConversationState, stage: str) -> list[Message]:
    return [
        message
        for message in state.message_history
        if message.direction == Direction.INBOUND and message.metadata.get("stage") == stage
    ]


def _last_outbound_in_stage(state: ConversationState, stage: str) -> Message | None:
    for message in reversed(state.message_history):
        if message.direction == Direction.OUTBOUND and message.metadata.get("stage") == stage:
            return message
    return None


def evaluate_rule(rule: Rule, state: ConversationState, now: datetime) -> tuple[bool, str]:
    """Evaluate one (possibly composite) rule against the current stage."""
    stage = state.current_stage
    if rule.any is not None:
        for child in rule.any:
            matched, reason = evaluate_rule(child, state, now)
            if matched:
                return True, reason
        return False, "no 'any' condition met"
    if rule.all is not None:
        reasons = []
        for child in rule.all:
            matched, reason = evaluate_rule(child, state, now)
            if not matched:
                return False, reason
            reasons.append(reason)
        return True, " and ".join(reasons)
    if rule.reply_received:
        replied = bool(inbound_in_stage(state, stage))
        return replied, "reply received" if replied else "no reply yet"
    if rule.keywords is not None:
        for message in inbound_in_stage(state, stage):
            for keyword in rule.keywords:
                if re.search(rf"(?<!\w){re.escape(keyword)}(?!\w)", message.content, re.I):
                    return True, f"reply matched keyword {keyword!r}"
        return False, "no reply matched the keywords"
    if rule.regex is not None:
        pattern = re.compile(rule.regex, re.I)
        for message in inbound_in_stage(state, stage):
            if pattern.search(message.content):
                return True, f"reply matched /{rule.regex}/"
        return False, "no reply matched the regex"
    if rule.min_messages_sent is not None:
        enough = state.stage_step >= rule.min_messages_sent
        return enough, f"{state.stage_step} of {rule.min_messages_sent} messages sent"
    if rule.min_time_in_stage is not None:
        elapsed = now - state.current_stage_entry().entered_at
        enough = elapsed >= rule.min_time_in_stage
        return enough, f"{int(elapsed.total_seconds())}s in stage (min {rule.min_time_in_stage})"
    raise AssertionError("validated Rule has exactly one condition")  # pragma: no cover


def _rule_wakeups(rule: Rule, entered_at: datetime) -> list[datetime]:
    """Times at which a time-based rule may flip to true; worth waking up for."""
    if rule.min_time_in_stage is not None:
        return [entered_at + rule.min_time_in_stage]
    children = rule.any or rule.all or []
    return [when for child in children for when in _rule_wakeups(child, entered_at)]


def should_advance(state: ConversationState, stage: Stage, now: datetime) -> tuple[bool, str]:
    """The stage's ``advance_when`` rule; a stage without one advances when its drip ends."""
    if stage.advance_when is not None:
        return evaluate_rule(stage.advance_when, state, now)
    if not stage.messages:
        return True, "stage has no messages and no rule"
    last = _last_outbound_in_stage(state, stage.name)
    drip_done = state.stage_step >= len(stage.messages) and last is not None
    if drip_done and last is not None and now >= last.timestamp + stage.messages[-1].wait:
        return True, "all stage messages sent and the last wait elapsed"
    return False, "stage messages still running"


# ---------------------------------------------------------------- evaluation


def evaluate(
    state: ConversationState,
    template: Template,
    type_template: CampaignTypeTemplate,
    now: datetime,
) -> Decision:
    """Decide what happens to ``state`` at ``now``. Pure."""
    if state.status in FINISHED_STATUSES:
        return Decision(Action.NONE, f"conversation is {state.status.value}")
    if len(state.message_history) >= MAX_HISTORY_MESSAGES:
        return Decision(Action.FAIL, f"message history limit ({MAX_HISTORY_MESSAGES}) reached")
    for message in state.message_history:
        if message.direction == Direction.INBOUND and is_opt_out(
            message.content, template.opt_out_keywords
        ):
            return Decision(Action.OPT_OUT, f"opt-out keyword in {message.message_id}")

    stage = type_template.stage(state.current_stage)
    if stage is None:
        return Decision(Action.FAIL, f"stage {state.current_stage!r} no longer in template")
    names = type_template.stage_names
    index = names.index(stage.name)
    following = names[index + 1] if index + 1 < len(names) else None
    entered_at = state.current_stage_entry().entered_at

    advance, reason = should_advance(state, stage, now)
    if advance:
        return _advance_or_complete(following, reason)

    deadline = None
    if stage.max_time_in_stage is not None:
        deadline = entered_at + stage.max_time_in_stage.after
        if now >= deadline:
            why = f"max time in stage ({stage.max_time_in_stage.after}) reached"
            if stage.max_time_in_stage.then == "advance":
                return _advance_or_complete(following, why)
            return Decision(Action.FAIL, why)

    wakeups: list[datetime] = [deadline] if deadline else []
    if stage.advance_when is not None:
        wakeups += [when for when in _rule_wakeups(stage.advance_when, entered_at) if when > now]

    last = _last_outbound_in_stage(state, stage.name)
    replied = bool(inbound_in_stage(state, stage.name))
    limit = stage.max_followups_without_reply
    followups_exhausted = (
        limit is not None
        and not replied
        and last is not None
        and state.stage_step - 1 >= limit.count
    )
    if followups_exhausted and limit is not None and last is not None:
        quiet_until = last.timestamp + _wait_after(stage, state.stage_step - 1)
        if now >= quiet_until:
            why = f"{state.stage_step - 1} follow-ups without reply"
            return Decision(Action.COMPLETE if limit.then == "complete" else Action.FAIL, why)
        wakeups.append(quiet_until)
    elif state.stage_step < len(stage.messages):
        step = state.stage_step
        due_at = now if last is None else last.timestamp + _wait_after(stage, step - 1)
        opens_at = next_send_time(now, template.send_window, state.context.timezone)
        if now >= due_at and opens_at > now:
            wakeups.append(opens_at)
            reason = "outside the recipient's send window"
        elif now >= due_at:
            after_send = now + stage.messages[step].wait
            next_at = min([after_send, *[w for w in wakeups if w > now]])
            return Decision(
                Action.SEND,
                "follow-up due" if step else "stage entered",
                step=step,
                next_action_at=next_at,
            )
        wakeups.append(due_at)
    elif last is not None and (stage.advance_when is None or (limit is not None and not replied)):
        wakeups.append(last.timestamp + _wait_after(stage, state.stage_step - 1))

    future = [when for when in wakeups if when > now]
    return Decision(Action.WAIT, reason, next_action_at=min(future) if future else None)


def _wait_after(stage: Stage, step: int) -> timedelta:
    """The wait after message ``step`` of ``stage``. A template edit may have removed
    messages a conversation already sent: then the last remaining wait applies (none if
    the stage has no messages left), so progress never depends on a message that is gone."""
    if not stage.messages:
        return timedelta(0)
    return stage.messages[max(0, min(step, len(stage.messages) - 1))].wait


def next_send_time(now: datetime, window: SendWindow | None, timezone: str) -> datetime:
    """``now`` if a message may go out now in the recipient's local time, else the UTC
    time the window next opens."""
    if window is None:
        return now
    zone = ZoneInfo(timezone)
    local = now.astimezone(zone)
    clock = local.time().replace(tzinfo=None)
    if window.start < window.end:
        inside = window.start <= clock < window.end
    else:  # across midnight
        inside = clock >= window.start or clock < window.end
    if inside:
        return now
    day = local.date() if clock < window.start else local.date() + timedelta(days=1)
    opens = datetime.combine(day, window.start, tzinfo=zone)
    return to_utc(opens)


def _advance_or_complete(following: str | None, reason: str) -> Decision:
    if following is None:
        return Decision(Action.COMPLETE, f"{reason}; last stage done")
    return Decision(Action.ADVANCE, reason, next_stage=following)


# ---------------------------------------------------------------- applying decisions


class _Blank(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return ""


def render(text: str, attributes: dict[str, Any], defaults: dict[str, Any] | None = None) -> str:
    """Fill ``{placeholders}`` from recipient attributes; unknown ones render empty."""
    values = _Blank({**(defaults or {}), **attributes})
    return string.Formatter().vformat(text, (), values)


def enter_stage(state: ConversationState, stage: str, now: datetime) -> ConversationState:
    """Close the current stage entry and open ``stage``. Returns a new state."""
    stages = [entry.model_copy() for entry in state.stages]
    for entry in stages:
        if entry.name == state.current_stage and entry.exited_at is None:
            entry.exited_at = now
            entry.completed = True
    stages.append(StageEntry(name=stage, entered_at=now))
    metrics = state.metrics.model_copy(
        update={"stage_progressions": state.metrics.stage_progressions + 1}
    )
    return state.model_copy(
        update={
            "current_stage": stage,
            "stages": stages,
            "stage_step": 0,
            "metrics": metrics,
            "next_action_at": now,
            "last_active": now,
        }
    )


def finish(
    state: ConversationState,
    status: ConversationStatus,
    reason: str,
    now: datetime,
    *,
    stage_completed: bool,
) -> ConversationState:
    stages = [entry.model_copy() for entry in state.stages]
    for entry in stages:
        if entry.name == state.current_stage and entry.exited_at is None:
            entry.exited_at = now
            entry.completed = stage_completed
    return state.model_copy(
        update={
            "stages": stages,
            "status": status,
            "status_reason": reason,
            "finished_at": now,
            "next_action_at": None,
            "last_active": now,
        }
    )


_OUTCOME_STATUS = {
    Action.COMPLETE: ConversationStatus.COMPLETED,
    Action.FAIL: ConversationStatus.FAILED,
    Action.OPT_OUT: ConversationStatus.OPTED_OUT,
    Action.CANCEL: ConversationStatus.CANCELLED,
}


def apply(
    state: ConversationState,
    decision: Decision,
    template: Template,
    type_template: CampaignTypeTemplate,
    now: datetime,
    effects: Effects,
) -> ConversationState:
    """Apply one decision to ``state``; record side effects in ``effects``."""
    effects.decisions.append(decision)
    delta = effects.delta
    entered_at = state.current_stage_entry().entered_at
    seconds_in_stage = max(0.0, (now - entered_at).total_seconds())

    if decision.action == Action.SEND:
        stage = type_template.stage(state.current_stage)
        assert stage is not None and decision.step is not None
        spec = stage.messages[decision.step]
        message_id = message_id_for(state.id, stage.name, decision.step)
        content = render(spec.text, state.context.attributes, template.attribute_defaults)
        message = Message(
            message_id=message_id,
            direction=Direction.OUTBOUND,
            content=content,
            timestamp=now,
            metadata={"stage": stage.name, "step": decision.step, "channel": spec.channel},
        )
        effects.outbound.append(
            OutboundEnvelope(
                message_id=message_id,
                conversation_id=state.id,
                campaign_id=state.campaign_id,
                user_id=state.user_id,
                channel=spec.channel,
                content=content,
                stage=stage.name,
                step=decision.step,
                created_at=now,
            )
        )
        delta.sent += 1
        metrics = state.metrics.model_copy(
            update={"messages_sent": state.metrics.messages_sent + 1}
        )
        return state.model_copy(
            update={
                "message_history": [*state.message_history, message],
                "stage_step": state.stage_step + 1,
                "metrics": metrics,
                "next_action_at": decision.next_action_at,
                "last_active": now,
            }
        )

    if decision.action == Action.ADVANCE:
        assert decision.next_stage is not None
        delta.stage_completed[state.current_stage] += 1
        delta.stage_duration[state.current_stage] += seconds_in_stage
        delta.stage_entered[decision.next_stage] += 1
        effects.transitions.append(StageTransition(state.current_stage, decision.next_stage))
        return enter_stage(state, decision.next_stage, now)

    if decision.action in TERMINAL_ACTIONS:
        status = _OUTCOME_STATUS[decision.action]
        stage_completed = decision.action == Action.COMPLETE
        if stage_completed:
            delta.stage_completed[state.current_stage] += 1
            delta.stage_duration[state.current_stage] += seconds_in_stage
        delta.active -= 1
        if status == ConversationStatus.COMPLETED:
            delta.completed += 1
        elif status == ConversationStatus.FAILED:
            delta.failed += 1
        elif status == ConversationStatus.CANCELLED:
            delta.cancelled += 1
        else:
            delta.opted_out += 1
        effects.transitions.append(StageTransition(state.current_stage, None, outcome=status.value))
        return finish(state, status, decision.reason, now, stage_completed=stage_completed)

    if decision.action == Action.WAIT:
        return state.model_copy(update={"next_action_at": decision.next_action_at})
    return state


def run(
    state: ConversationState,
    template: Template,
    type_template: CampaignTypeTemplate,
    now: datetime,
    *,
    max_steps: int = 32,
) -> tuple[ConversationState, Effects]:
    """Evaluate and apply until the conversation waits or finishes.

    A reply that satisfies a stage advances it and sends the next stage's first message
    in the same pass, so one write covers the whole chain.
    """
    effects = Effects()
    for _ in range(max_steps):
        decision = evaluate(state, template, type_template, now)
        if decision.action == Action.NONE:
            effects.decisions.append(decision)
            break
        state = apply(state, decision, template, type_template, now, effects)
        if decision.action in (Action.WAIT, *TERMINAL_ACTIONS):
            break
    return state, effects


def envelopes_for(state: ConversationState, message_ids: list[str]) -> list[OutboundEnvelope]:
    """Outbox envelopes of the recorded outbound messages ``message_ids`` (the history is
    the source of truth: an envelope is only ever built from a message the conversation
    holds)."""
    wanted = set(message_ids)
    return [
        OutboundEnvelope(
            message_id=message.message_id,
            conversation_id=state.id,
            campaign_id=state.campaign_id,
            user_id=state.user_id,
            channel=str(message.metadata.get("channel", "default")),
            content=message.content,
            stage=str(message.metadata.get("stage", "")),
            step=int(message.metadata.get("step", 0)),
            created_at=message.timestamp,
        )
        for message in state.message_history
        if message.direction == Direction.OUTBOUND and message.message_id in wanted
    ]


def first_action_at(start_at: datetime | None, now: datetime) -> datetime:
    return max(start_at, now) if start_at else now


__all__ = [
    "Action",
    "Decision",
    "Effects",
    "MetricsDelta",
    "OutboundEnvelope",
    "StageTransition",
    "apply",
    "envelopes_for",
    "evaluate",
    "evaluate_rule",
    "first_action_at",
    "is_opt_out",
    "render",
    "run",
    "should_advance",
]
