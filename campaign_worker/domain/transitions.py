"""Applying a decision to a conversation, pure: a new state and its effects (the message
recorded and its outbox envelope, the stage entered or the conversation finished, the
campaign metrics delta). ``progression.evaluate`` decides; this module applies."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from campaign_worker.domain import splits
from campaign_worker.domain.documents import (
    ConversationState,
    ConversationStatus,
    Direction,
    Message,
    StageEntry,
    message_id_for,
)
from campaign_worker.domain.effects import (
    TERMINAL_ACTIONS,
    Action,
    Decision,
    Effects,
    MetricsDelta,
    OutboundEnvelope,
    StageTransition,
)
from campaign_worker.domain.errors import InvalidTemplateError
from campaign_worker.domain.limits import MAX_CONTENT_BYTES, truncate_utf8
from campaign_worker.domain.placeholders import placeholder_problem
from campaign_worker.domain.rules import entry_index, visit_of
from campaign_worker.domain.templates import (
    CampaignTypeTemplate,
    OutboundMessage,
    Stage,
    Template,
)


class _Blank(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return ""


def render(text: str, attributes: dict[str, Any], defaults: dict[str, Any] | None = None) -> str:
    """Fill ``{placeholders}`` from recipient attributes; unknown ones render empty. A
    text with anything but plain placeholders (``placeholders.placeholder_problem``) is
    refused (``InvalidTemplateError``), whoever built it."""
    values = _Blank({**(defaults or {}), **attributes})
    # str.format_map: the same fields as string.Formatter, in C (a few us per message);
    # the text is checked once per distinct text.
    return _checked_text(text).format_map(values)


@functools.lru_cache(maxsize=4096)
def _checked_text(text: str) -> str:
    problem = placeholder_problem(text)
    if problem is not None:
        raise InvalidTemplateError(f"message text refused: {problem}")
    return text


def _close_stage(state: ConversationState, now: datetime, *, completed: bool) -> list[StageEntry]:
    """The stage entries with the current one closed: a copy of that entry only, the
    others shared with ``state`` (nothing mutates an entry in place)."""
    return [
        entry.model_copy(update={"exited_at": now, "completed": completed})
        if entry.name == state.current_stage and entry.exited_at is None
        else entry
        for entry in state.stages
    ]


def enter_stage(state: ConversationState, stage: str, now: datetime) -> ConversationState:
    """Close the current stage entry and open ``stage``. Returns a new state."""
    stages = _close_stage(state, now, completed=True)
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
    stages = _close_stage(state, now, completed=stage_completed)
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
    if decision.action == Action.SEND:
        return _send(state, decision, template, type_template, now, effects)
    if decision.action == Action.ADVANCE:
        assert decision.next_stage is not None
        _stage_done(state, now, effects.delta)
        effects.delta.stage_entered[decision.next_stage] += 1
        effects.delta.funnel[(state.current_stage, decision.next_stage)] += 1
        effects.transitions.append(StageTransition(state.current_stage, decision.next_stage))
        return enter_stage(state, decision.next_stage, now)
    if decision.action in TERMINAL_ACTIONS:
        return _end(state, decision, now, effects)
    if decision.action == Action.WAIT:
        if decision.next_action_at == state.next_action_at:
            return state  # nothing changes: no copy
        return state.model_copy(update={"next_action_at": decision.next_action_at})
    return state


def _stage_done(state: ConversationState, now: datetime, delta: MetricsDelta) -> None:
    """The current stage completed now: counted, with its duration (and for the variant
    this visit was sent, as advanced)."""
    entered_at = state.current_stage_entry().entered_at
    delta.stage_completed[state.current_stage] += 1
    delta.stage_duration[state.current_stage] += max(0.0, (now - entered_at).total_seconds())
    variant = splits.entry_variant(state, state.current_stage, entry_index(state))
    if variant is not None:
        delta.variants[(state.current_stage, variant, "advanced")] += 1


def _send(
    state: ConversationState,
    decision: Decision,
    template: Template,
    type_template: CampaignTypeTemplate,
    now: datetime,
    effects: Effects,
) -> ConversationState:
    """Record the stage's message ``decision.step`` and its outbox envelope (for a holdout
    conversation: recorded as withheld, for the timing rules, and never published)."""
    stage = type_template.stage(state.current_stage)
    assert stage is not None and decision.step is not None
    spec = stage.messages[decision.step]
    entry = entry_index(state)
    metadata: dict[str, Any] = {
        "stage": stage.name,
        "step": decision.step,
        "channel": spec.channel,
        "entry": entry,
    }
    message_id = message_id_for(state.id, stage.name, decision.step, visit_of(state))
    if state.holdout:
        metadata["withheld"] = True
        message = Message(
            message_id=message_id,
            direction=Direction.OUTBOUND,
            content="",
            timestamp=now,
            metadata=metadata,
        )
        return _recorded(state, message, decision, now, sent=0)
    content = _content(state, stage, spec, entry, template, metadata, effects)
    message = Message(
        message_id=message_id,
        direction=Direction.OUTBOUND,
        content=content,
        timestamp=now,
        metadata=metadata,
    )
    effects.outbound.append(envelope_of(state, message))
    effects.delta.sent += 1
    return _recorded(state, message, decision, now, sent=1)


def _content(
    state: ConversationState,
    stage: Stage,
    spec: OutboundMessage,
    entry: int,
    template: Template,
    metadata: dict[str, Any],
    effects: Effects,
) -> str:
    """The message's text for this recipient: its A/B variant's (counted, and named in
    ``metadata``), rendered, cut to the size limit (and marked so)."""
    text = spec.text
    if spec.variants is not None:
        variant = splits.variant_for(state, stage.name, entry, spec.variants)
        splits.count_sent(state, stage.name, entry, variant.id, effects.delta)
        metadata["variant"] = variant.id
        text = variant.text
    assert text is not None  # a validated message has text or variants
    content = render(text, state.context.attributes, template.attribute_defaults)
    # 4 bytes per character at most: a short text needs no encoding to know it fits.
    if len(content) * 4 > MAX_CONTENT_BYTES:
        content, size = truncate_utf8(content, MAX_CONTENT_BYTES)
        if size > MAX_CONTENT_BYTES:
            metadata.update(truncated=True, original_bytes=size)
    return content


def _recorded(
    state: ConversationState, message: Message, decision: Decision, now: datetime, *, sent: int
) -> ConversationState:
    metrics = state.metrics.model_copy(update={"messages_sent": state.metrics.messages_sent + sent})
    return state.model_copy(
        update={
            "message_history": [*state.message_history, message],
            "stage_step": state.stage_step + 1,
            "metrics": metrics,
            "next_action_at": decision.next_action_at,
            "last_active": now,
        }
    )


_OUTCOME_FIELD = {
    ConversationStatus.COMPLETED: "completed",
    ConversationStatus.FAILED: "failed",
    ConversationStatus.OPTED_OUT: "opted_out",
    ConversationStatus.CANCELLED: "cancelled",
}


def _end(
    state: ConversationState, decision: Decision, now: datetime, effects: Effects
) -> ConversationState:
    """Finish the conversation with the decision's outcome."""
    status = _OUTCOME_STATUS[decision.action]
    stage_completed = decision.action == Action.COMPLETE
    if stage_completed:
        _stage_done(state, now, effects.delta)
    effects.delta.active -= 1
    field_name = _OUTCOME_FIELD[status]
    setattr(effects.delta, field_name, getattr(effects.delta, field_name) + 1)
    if state.holdout:
        effects.delta.holdout[field_name] += 1
        effects.delta.holdout["active"] -= 1
    effects.delta.funnel[(state.current_stage, f"exit:{status.value}")] += 1
    effects.transitions.append(StageTransition(state.current_stage, None, outcome=status.value))
    return finish(state, status, decision.reason, now, stage_completed=stage_completed)


def envelopes_for(state: ConversationState, message_ids: list[str]) -> list[OutboundEnvelope]:
    """Outbox envelopes of the recorded outbound messages ``message_ids`` (the history is
    the source of truth: an envelope is only ever built from a message the conversation
    holds)."""
    wanted = set(message_ids)
    return [
        envelope_of(state, message)
        for message in state.message_history
        if message.direction == Direction.OUTBOUND
        and message.message_id in wanted
        and not splits.is_withheld(message)
    ]


def envelope_of(state: ConversationState, message: Message) -> OutboundEnvelope:
    return OutboundEnvelope(
        message_id=message.message_id,
        conversation_id=state.id,
        campaign_id=state.campaign_id,
        user_id=state.user_id,
        channel=str(message.metadata.get("channel", "default")),
        content=message.content,
        stage=str(message.metadata.get("stage", "")),
        step=int(message.metadata.get("step", 0)),
        created_at=message.timestamp,
        variant=splits.variant_of(message),
    )


__all__ = [
    "apply",
    "enter_stage",
    "envelope_of",
    "envelopes_for",
    "finish",
    "render",
]
