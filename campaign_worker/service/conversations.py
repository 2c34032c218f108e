"""Commands on one conversation: a reply, an explicit advance or completion, a field
update, an evaluation now. Each is a ``StateChange`` written by ``write_one``."""

from __future__ import annotations

from datetime import datetime

from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.campaign_documents import CampaignStatus
from campaign_worker.domain.documents import FINISHED_STATUSES, ConversationState, parse_document
from campaign_worker.domain.effects import Action, Decision, Effects
from campaign_worker.domain.errors import (
    InvalidInputError,
    UnknownStageError,
)
from campaign_worker.domain.transitions import apply
from campaign_worker.service.context import Services
from campaign_worker.service.replies import record_one
from campaign_worker.service.reply_recording import InboundReply
from campaign_worker.service.writes import Current, Outcome, write_one

UPDATABLE_FIELDS = {"context", "next_action_at", "status_reason"}


def record_inbound_message(
    svc: Services,
    campaign_id: str,
    user_id: str,
    message_id: str,
    content: str,
    timestamp: datetime | None = None,
    metadata: Doc | None = None,
) -> Doc:
    """Store a reply (idempotent by message_id) and evaluate the conversation at once
    (a batch of one: see ``service/replies.py``).

    Returns {conversation_id, duplicate, status, current_stage, actions}.
    """
    reply = InboundReply(campaign_id, user_id, message_id, content, timestamp, metadata)
    return record_one(svc, reply)


def advance_conversation_stage(svc: Services, conversation_id: str, next_stage: str) -> Doc:
    """Move to ``next_stage`` (compare-and-set on the current stage).

    Moving to the current or an earlier stage, or advancing a finished conversation,
    is a no-op that returns the state as it is, so replays are harmless.
    """

    def change(c: Current) -> Outcome | None:
        names = c.type_template.stage_names
        if next_stage not in names:
            raise UnknownStageError(next_stage, names)
        if c.state.status in FINISHED_STATUSES or c.state.current_stage not in names:
            return None
        if names.index(next_stage) <= names.index(c.state.current_stage):
            return None
        return _decided(c, Decision(Action.ADVANCE, "advanced by request", next_stage=next_stage))

    return write_one(svc, conversation_id, change).to_mongo()


def mark_conversation_complete(svc: Services, conversation_id: str) -> Doc:
    """Complete the conversation now; a finished one is returned unchanged."""

    def change(c: Current) -> Outcome | None:
        if c.state.status in FINISHED_STATUSES:
            return None
        return _decided(c, Decision(Action.COMPLETE, "marked complete"))

    return write_one(svc, conversation_id, change).to_mongo()


def update_conversation_state(svc: Services, conversation_id: str, updates: Doc) -> Doc:
    """Update ``context`` (merged), ``next_action_at`` or ``status_reason``.

    Progress fields (stage, status, history, metrics) change only through the
    operations that keep campaign metrics right, so they are refused here.
    """
    if not isinstance(updates, dict) or not updates:
        raise InvalidInputError("updates must be a non-empty object")
    refused = sorted(set(updates) - UPDATABLE_FIELDS)
    if refused:
        raise InvalidInputError(
            f"cannot update field(s) {refused}; updatable: {sorted(UPDATABLE_FIELDS)}"
        )

    def change(c: Current) -> Outcome | None:
        return _updated(c.state, updates, c.now), Effects()

    return write_one(svc, conversation_id, change).to_mongo()


def _decided(c: Current, decision: Decision) -> Outcome:
    effects = Effects()
    return apply(c.state, decision, c.template, c.type_template, c.now, effects), effects


def _updated(state: ConversationState, updates: Doc, now: datetime) -> ConversationState:
    merged = state.to_mongo()
    for key, value in updates.items():
        if key == "context":
            if not isinstance(value, dict):
                raise InvalidInputError("context: must be an object")
            merged["context"] = {**merged["context"], **value}
        else:
            merged[key] = value
    merged["last_active"] = now
    new_state = parse_document(ConversationState, merged, what=f"update of conversation {state.id}")
    if new_state.context.available_stages != state.context.available_stages:
        raise InvalidInputError("context.available_stages cannot be changed")
    if new_state.context.template_id != state.context.template_id:
        raise InvalidInputError("context.template_id cannot be changed")
    return new_state


def process_conversation(svc: Services, conversation_id: str) -> Doc:
    """Evaluate one conversation now and apply what is due (the seed's
    "Process Conversation"); returns the new state."""

    def change(c: Current) -> Outcome | None:
        if c.state.status in FINISHED_STATUSES:
            return None
        # As process_due_conversations: a paused or cancelled campaign sends nothing.
        if svc.campaign(c.state.campaign_id).status != CampaignStatus.RUNNING:
            return None
        return c.run(c.state)

    return write_one(svc, conversation_id, change).to_mongo()


__all__ = [
    "UPDATABLE_FIELDS",
    "advance_conversation_stage",
    "mark_conversation_complete",
    "process_conversation",
    "record_inbound_message",
    "update_conversation_state",
]
