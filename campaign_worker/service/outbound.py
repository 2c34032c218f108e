"""The outbound path: a message is deliverable if and only if a conversation recorded it.

A write records outbound messages in the conversation (history, and their ids in
``unpublished``) with its compare-and-set; only a write that landed publishes them to the
outbox, under their deterministic ids (an idempotent insert), then clears them from
``unpublished``. A write that lost publishes nothing, so no path ever has to withdraw a
message. A crash between the write and the publication leaves the ids in ``unpublished``
with ``publish_due_at`` set; ``sweep`` publishes them later. See docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import structlog

from campaign_worker.domain.documents import ConversationState, Direction, Unreadable
from campaign_worker.domain.effects import OutboundEnvelope
from campaign_worker.domain.splits import is_withheld
from campaign_worker.domain.transitions import envelopes_for
from campaign_worker.service.ports import ConversationStateRepository, OutboxRepository

log = structlog.get_logger(__name__)


def recorded_by(old: ConversationState, new: ConversationState) -> list[str]:
    """Outbound message ids that the write ``old -> new`` appends."""
    return [
        message.message_id
        for message in new.message_history[len(old.message_history) :]
        if message.direction == Direction.OUTBOUND and not is_withheld(message)
    ]


class Publisher:
    """Publishes recorded messages to the outbox and clears their marks."""

    def __init__(
        self, conversations: ConversationStateRepository, outbox: OutboxRepository
    ) -> None:
        self.conversations = conversations
        self.outbox = outbox

    def after_writes(
        self, written: Sequence[tuple[ConversationState, ConversationState, str]]
    ) -> int:
        """Publish what landed writes (old, new, write token) left unpublished."""
        pending = []
        for old, new, token in written:
            added = recorded_by(old, new)
            ids = [*old.unpublished, *added]
            if ids:
                # The stored token is this write's if it recorded messages, else as it was.
                pending.append((new, token if added else old.publish_token, ids))
        return self._publish(pending)

    def leftovers(self, states: Sequence[ConversationState]) -> int:
        """Publish what earlier writes of these conversations left unpublished."""
        return self._publish(
            [(state, state.publish_token, list(state.unpublished)) for state in states]
        )

    def sweep(self, before: datetime, limit: int = 500) -> int:
        """Publish messages recorded before ``before`` whose publication was interrupted."""
        states = []
        for found in self.conversations.find_unpublished(before, limit):
            if isinstance(found, Unreadable):
                # Left marked for an operator: its messages cannot be rebuilt reliably.
                log.error("outbox_sweep_invalid_conversation", conversation_id=found.id)
            else:
                states.append(found)
        published = self.leftovers(states)
        if states:
            log.warning("outbox_sweep", conversations=len(states), published=published)
        return published

    def _publish(self, pending: Sequence[tuple[ConversationState, str | None, list[str]]]) -> int:
        envelopes: list[OutboundEnvelope] = []
        marks = []
        for state, token, ids in pending:
            if not ids:
                continue
            envelopes += envelopes_for(state, ids)
            if token is not None:
                marks.append((state.id, token, ids))
        if not envelopes:
            return 0
        inserted = self.outbox.enqueue_many(envelopes)
        self.conversations.mark_published(marks)
        return inserted


__all__ = ["Publisher", "recorded_by"]
