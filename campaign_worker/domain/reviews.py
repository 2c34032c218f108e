"""Replies held for review, pure: holding a conversation, the intent the flows act on, and
resolving a review.

A reply whose classification ``needs_review`` is recorded as it came (its message keeps
the classifier's best reading in ``metadata.intent``, with ``needs_review: true``) and a
``ReplyReview`` is added to the conversation: while one is pending the conversation
holds (``progression.evaluate`` waits with nothing scheduled: no advance, no follow-up,
no timeout). A person resolves it with the intent it really is; from then on every flow
acts on that intent, exactly as if the reply had been classified so. The message history
stays append-only: the resolution lives beside it, in ``ConversationState.reviews``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import Field

from campaign_worker.domain.documents import (
    ConversationState,
    Direction,
    DocumentModel,
    Message,
    NonEmptyStr,
    ReplyReview,
    UtcDatetime,
    to_utc,
)
from campaign_worker.domain.errors import ReviewConflictError, ReviewNotFoundError

PENDING = "pending"
RESOLVED = "resolved"


def held(state: ConversationState) -> bool:
    """A reply of this conversation waits for a person."""
    return any(review.status == PENDING for review in state.reviews)


def review_of(state: ConversationState, message_id: str) -> ReplyReview | None:
    return next((r for r in state.reviews if r.message_id == message_id), None)


def acted_intent(state: ConversationState, message: Message) -> str | None:
    """The intent the flows act on: a held reply's resolution (None while pending), else
    the intent recorded with the message (None if none was)."""
    if message.metadata.get("needs_review") is True:
        review = review_of(state, message.message_id)
        return review.intent if review is not None and review.status == RESOLVED else None
    intent = message.metadata.get("intent")
    return intent if isinstance(intent, str) else None


def resume_at(state: ConversationState, message: Message) -> datetime | None:
    """When follow-ups resume after an out-of-office reply (recorded, or resolved)."""
    review = review_of(state, message.message_id)
    found = review.resume_at if review is not None else message.metadata.get("resume_at")
    return to_utc(found) if isinstance(found, datetime) else None


def _pending_since(reviews: list[ReplyReview]) -> datetime | None:
    return min((r.held_at for r in reviews if r.status == PENDING), default=None)


def hold(state: ConversationState, message: Message, reason: str | None) -> ConversationState:
    """``state`` (its history ending with ``message``, just recorded) with the reply held."""
    suggested = message.metadata.get("intent")
    review = ReplyReview(
        message_id=message.message_id,
        held_at=message.metadata.get("received_at") or message.timestamp,
        suggested=suggested if isinstance(suggested, str) else "other",
        reason=reason,
    )
    reviews = [*state.reviews, review]
    return state.model_copy(
        update={"reviews": reviews, "review_pending_since": _pending_since(reviews)}
    )


@dataclass(frozen=True)
class Resolution:
    """What a person decided about a held reply."""

    message_id: str
    intent: str
    resolved_by: str | None
    resume_at: datetime | None = None  # for an out_of_office resolution


def held_message(state: ConversationState, message_id: str) -> Message:
    """The inbound message ``message_id`` held for review in ``state``."""
    for message in state.message_history:
        if (
            message.message_id == message_id
            and message.direction == Direction.INBOUND
            and review_of(state, message_id) is not None
        ):
            return message
    raise ReviewNotFoundError(message_id)


def resolve(
    state: ConversationState, resolution: Resolution, now: datetime
) -> ConversationState | None:
    """``state`` with the review resolved; None if it already was, with the same intent
    (a replay). ``ReviewNotFoundError`` if no reply of it is held under that id,
    ``ReviewConflictError`` if it was resolved with another intent."""
    held_message(state, resolution.message_id)
    review = review_of(state, resolution.message_id)
    assert review is not None
    if review.status == RESOLVED:
        if review.intent == resolution.intent:
            return None
        raise ReviewConflictError(resolution.message_id, str(review.intent), resolution.intent)
    resolved = review.model_copy(
        update={
            "status": RESOLVED,
            "intent": resolution.intent,
            "resolved_by": resolution.resolved_by,
            "resolved_at": now,
            "resume_at": resolution.resume_at,
        }
    )
    reviews = [resolved if r is review else r for r in state.reviews]
    return state.model_copy(
        update={
            "reviews": reviews,
            "review_pending_since": _pending_since(reviews),
            "last_active": now,
        }
    )


def pending(state: ConversationState) -> list[ReplyReview]:
    return [review for review in state.reviews if review.status == PENDING]


class ReplyLabel(DocumentModel):
    """A resolved review kept as a labelled example (collection ``reply_labels``, ``_id``
    = the message id): the reply as it came and the intent a person gave it, for
    ``intents train`` (``campaign-worker replies export-labels``)."""

    message_id: NonEmptyStr = Field(alias="_id")
    intent: NonEmptyStr
    text: str  # the reply's content as received (training extracts it, as at run time)
    language: str | None = None
    suggested: str | None = None  # what the classifier made of it
    reason: str | None = None
    campaign_id: str
    conversation_id: str
    resolved_by: str | None = None
    resolved_at: UtcDatetime


def label_of(state: ConversationState, review: ReplyReview, message: Message) -> ReplyLabel:
    """The labelled example a resolved review gives."""
    assert review.intent is not None and review.resolved_at is not None
    language = message.metadata.get("language")
    return ReplyLabel(
        message_id=review.message_id,
        intent=review.intent,
        text=message.content,
        language=language if isinstance(language, str) else None,
        suggested=review.suggested,
        reason=review.reason,
        campaign_id=state.campaign_id,
        conversation_id=state.id,
        resolved_by=review.resolved_by,
        resolved_at=review.resolved_at,
    )


__all__ = [
    "PENDING",
    "RESOLVED",
    "ReplyLabel",
    "Resolution",
    "acted_intent",
    "held",
    "held_message",
    "hold",
    "label_of",
    "pending",
    "resolve",
    "resume_at",
    "review_of",
]
