"""One inbound reply: the request as sent (``InboundReply``), checked and cut to the
size limits (``CheckedReply``: the one place a reply is appended to a conversation, then
evaluated), and what became of it (``ReplyOutcome``). The batch flow is ``replies.py``.

A reply is understood once (``CheckedReply.understand``, before the first attempt to
record it) and recorded with what that found (``domain.replies.understood_facts``); a
reply that needs review is held (``domain.reviews.hold``): its conversation waits for a
person."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from campaign_worker.domain import reviews, splits
from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.campaign_documents import CampaignStatus, StoredCampaign
from campaign_worker.domain.documents import (
    FINISHED_STATUSES,
    ConversationState,
    Direction,
    Message,
)
from campaign_worker.domain.effects import Effects
from campaign_worker.domain.errors import InvalidInputError, LimitExceededError
from campaign_worker.domain.limits import (
    MAX_CONTENT_BYTES,
    MAX_HISTORY_MESSAGES,
    MAX_METADATA_BYTES,
    check_size,
    truncate_utf8,
)
from campaign_worker.domain.replies import understood_facts
from campaign_worker.domain.rules import entry_index
from campaign_worker.domain.templates import CampaignTypeTemplate, Template
from campaign_worker.domain.understanding import Classification
from campaign_worker.service.send_guard import Verdict
from campaign_worker.service.understanding import ReplyUnderstanding
from campaign_worker.service.writes import Current

# Replies to these campaigns are recorded and change nothing else.
_WOUND_DOWN = frozenset({CampaignStatus.CANCELLED, CampaignStatus.COMPLETED})
_RESERVED_METADATA = frozenset({"variant", "extracted_text"})


@dataclass(frozen=True)
class InboundReply:
    """One ``record_inbound_message`` request, as sent."""

    campaign_id: str
    user_id: str
    message_id: str
    content: str
    timestamp: datetime | None = None
    metadata: Doc | None = None


@dataclass
class ReplyOutcome:
    """What became of one reply: ``result`` ({conversation_id, duplicate, status,
    current_stage, actions}) or ``error``."""

    result: Doc | None = None
    error: Exception | None = None


class CheckedReply:
    """An inbound message about to be recorded (validated, cut to the size limit)."""

    def __init__(
        self, message_id: str, content: str, timestamp: datetime | None, metadata: Doc
    ) -> None:
        self.message_id = message_id
        self.content = content
        self.timestamp = timestamp
        self.metadata = metadata
        self.understood: Classification | None = None

    def understand(
        self, understanding: ReplyUnderstanding, state: ConversationState, template: Template
    ) -> None:
        """Classify the reply, once (a retried write reuses it): the recipient's
        ``language`` attribute, then the template's, for a reply too short to tell."""
        if self.understood is None:
            hint = state.context.attributes.get("language")
            languages = [hint[:2].lower()] if isinstance(hint, str) and hint else []
            self.understood = understanding.understand(self.content, template, languages=languages)

    @classmethod
    def checked(cls, reply: InboundReply) -> CheckedReply:
        """``InvalidInputError`` (or ``LimitExceededError``) if it can never be recorded."""
        if not reply.message_id:
            raise InvalidInputError("message_id: must not be empty")
        if not isinstance(reply.content, str):
            raise InvalidInputError("content: must be a string")
        check_size(reply.metadata or {}, MAX_METADATA_BYTES, "metadata")
        # An over-long reply is kept, cut at the limit and marked, rather than refused:
        # its start still counts as the reply it is.
        content, size = truncate_utf8(reply.content, MAX_CONTENT_BYTES)
        extra: Doc = {"truncated": True, "original_bytes": size} if size > MAX_CONTENT_BYTES else {}
        return cls(reply.message_id, content, reply.timestamp, {**(reply.metadata or {}), **extra})

    def applied_to(
        self,
        state: ConversationState,
        now: datetime,
        campaign: StoredCampaign,
        templates: tuple[Template, CampaignTypeTemplate],
        verdict: Verdict | None = None,
    ) -> tuple[ConversationState, Effects]:
        """``state`` with this reply recorded, then evaluated (as the campaign allows and
        as the send guard ruled, if it was asked)."""
        template, type_template = templates
        updated = self.recorded_in(state, now, template)
        reply = updated.message_history[-1]
        effects = Effects()
        live = state.status not in FINISHED_STATUSES and campaign.status not in _WOUND_DOWN
        if live and self.classification.needs_review:
            # Held for a person: nothing happens to the conversation until it is resolved.
            updated = reviews.hold(updated, reply, self.classification.review_reason)
            effects.delta.reviews["pending"] += 1
        if not live:
            pass
        elif campaign.status == CampaignStatus.RUNNING:
            verdict = verdict or Verdict()
            current = Current(
                state, template, type_template, now, verdict.suppressed, verdict.holds
            )
            updated, step = current.run(updated)
            step.delta.add(effects.delta)
            effects = step
        else:
            # Paused campaign: keep the reply due so it is evaluated on resume.
            updated = updated.model_copy(update={"next_action_at": now})
        effects.delta.received += 1
        splits.count_reply(state, reply, effects.delta)
        return updated, effects

    @property
    def classification(self) -> Classification:
        if self.understood is None:
            raise AssertionError(f"reply {self.message_id!r} recorded before it was understood")
        return self.understood

    def recorded_in(
        self, state: ConversationState, now: datetime, template: Template
    ) -> ConversationState:
        """The one place an inbound message is appended to a conversation."""
        if len(state.message_history) >= MAX_HISTORY_MESSAGES:
            raise LimitExceededError(
                f"conversation {state.id!r} holds {MAX_HISTORY_MESSAGES} messages, "
                "the most one conversation keeps"
            )
        entry = entry_index(state)
        # The A/B variant of the stage visit's messages: the one this reply answers.
        variant = splits.entry_variant(state, state.current_stage, entry)
        message = Message(
            message_id=self.message_id,
            direction=Direction.INBOUND,
            content=self.content,
            timestamp=self.timestamp or now,
            metadata={
                # "variant" and "extracted_text" are ours (a metrics field, what rules
                # read): a client's are not kept.
                **{k: v for k, v in self.metadata.items() if k not in _RESERVED_METADATA},
                "stage": state.current_stage,
                "received_at": now,
                "entry": entry,
                **({"variant": variant} if variant is not None else {}),
                # Understood once; evaluation reads what is recorded, never the text again.
                **understood_facts(
                    self.classification,
                    self.timestamp or now,
                    state.context.timezone,
                    template,
                    self.content,
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


__all__ = ["CheckedReply", "InboundReply", "ReplyOutcome"]
