"""Commands on one conversation: a reply, an explicit advance or completion, a field
update, an evaluation now. Each is a ``StateChange`` written by ``write_one``."""

from __future__ import annotations

from datetime import datetime

from campaign_worker.domain.documents import (
    FINISHED_STATUSES,
    CampaignStatus,
    ConversationState,
    Direction,
    Message,
    parse_document,
)
from campaign_worker.domain.errors import (
    ConversationNotFoundError,
    InvalidDocumentError,
    InvalidInputError,
    LimitExceededError,
    UnknownStageError,
)
from campaign_worker.domain.limits import (
    MAX_CONTENT_BYTES,
    MAX_HISTORY_MESSAGES,
    MAX_METADATA_BYTES,
    check_size,
    truncate_utf8,
)
from campaign_worker.domain.progression import Action, Decision, Effects, apply
from campaign_worker.domain.replies import reply_facts
from campaign_worker.domain.rules import entry_index
from campaign_worker.domain.templates import Template
from campaign_worker.service.context import Doc, Services
from campaign_worker.service.writes import Current, Outcome, StateChange, write_one

UPDATABLE_FIELDS = {"context", "next_action_at", "status_reason"}
# Replies to these campaigns are recorded and change nothing else.
_WOUND_DOWN = frozenset({CampaignStatus.CANCELLED, CampaignStatus.COMPLETED})


def record_inbound_message(
    svc: Services,
    campaign_id: str,
    user_id: str,
    message_id: str,
    content: str,
    timestamp: datetime | None = None,
    metadata: Doc | None = None,
) -> Doc:
    """Store a reply (idempotent by message_id) and evaluate the conversation at once.

    Returns {conversation_id, duplicate, status, current_stage, actions}.
    """
    if not message_id:
        raise InvalidInputError("message_id: must not be empty")
    if not isinstance(content, str):
        raise InvalidInputError("content: must be a string")
    check_size(metadata or {}, MAX_METADATA_BYTES, "metadata")
    # An over-long reply is kept, cut at the limit and marked, rather than refused:
    # its start still counts as the reply it is.
    content, size = truncate_utf8(content, MAX_CONTENT_BYTES)
    extra: Doc = {"truncated": True, "original_bytes": size} if size > MAX_CONTENT_BYTES else {}
    campaign = svc.campaign(campaign_id)
    try:
        found = svc.conversation_state_repository.get_by_user(campaign_id, user_id)
    except InvalidDocumentError as exc:
        raise InvalidInputError(str(exc)) from exc
    if found is None:
        raise ConversationNotFoundError(f"campaign {campaign_id!r} / user {user_id!r}")
    result: Doc = {"conversation_id": found.id, "duplicate": False, "actions": []}
    reply = _Reply(message_id, content, timestamp, {**(metadata or {}), **extra})
    change = reply.change(campaign.status, result)
    try:
        state = write_one(svc, found.id, change, first_read=found)
    except InvalidDocumentError as exc:
        raise InvalidInputError(str(exc)) from exc
    if not result["duplicate"]:
        svc.metrics.messages_received(str((metadata or {}).get("channel", "default")), 1)
    result.update({"status": state.status.value, "current_stage": state.current_stage})
    return result


class _Reply:
    """An inbound message about to be recorded."""

    def __init__(
        self, message_id: str, content: str, timestamp: datetime | None, metadata: Doc
    ) -> None:
        self.message_id = message_id
        self.content = content
        self.timestamp = timestamp
        self.metadata = metadata

    def change(self, campaign_status: CampaignStatus, result: Doc) -> StateChange:
        def record(c: Current) -> Outcome | None:
            result["actions"] = []  # what an earlier, lost attempt decided does not count
            if any(m.message_id == self.message_id for m in c.state.message_history):
                result["duplicate"] = True
                return None
            updated = self.recorded_in(c.state, c.now, c.template)
            effects = Effects()
            if c.state.status in FINISHED_STATUSES or campaign_status in _WOUND_DOWN:
                pass
            elif campaign_status == CampaignStatus.RUNNING:
                updated, effects = c.progress(updated)
            else:
                # Paused campaign: keep the reply due so it is evaluated on resume.
                updated = updated.model_copy(update={"next_action_at": c.now})
            effects.delta.received += 1
            result["actions"] = [decision.action.value for decision in effects.decisions]
            return updated, effects

        return record

    def recorded_in(
        self, state: ConversationState, now: datetime, template: Template
    ) -> ConversationState:
        if len(state.message_history) >= MAX_HISTORY_MESSAGES:
            raise LimitExceededError(
                f"conversation {state.id!r} holds {MAX_HISTORY_MESSAGES} messages, "
                "the most one conversation keeps"
            )
        message = Message(
            message_id=self.message_id,
            direction=Direction.INBOUND,
            content=self.content,
            timestamp=self.timestamp or now,
            metadata={
                **self.metadata,
                "stage": state.current_stage,
                "received_at": now,
                "entry": entry_index(state),
                # Classified once, here; evaluation reads the intent, never the text again.
                **reply_facts(
                    self.content, self.timestamp or now, state.context.timezone, template
                ),
            },
        )
        metrics = state.metrics.model_copy(
            update={"messages_received": state.metrics.messages_received + 1}
        )
        return state.model_copy(
            update={
                "message_history": [*state.message_history, message],
                "metrics": metrics,
                "last_active": now,
            }
        )


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
        return c.progress(c.state)

    return write_one(svc, conversation_id, change).to_mongo()


__all__ = [
    "UPDATABLE_FIELDS",
    "advance_conversation_stage",
    "mark_conversation_complete",
    "process_conversation",
    "record_inbound_message",
    "update_conversation_state",
]
