"""The review queue: replies held for a person, listed oldest first; a resolution applied
exactly as if the reply had been classified so; resolutions kept as labelled examples.

``resolve_reply`` is one ``StateChange`` through ``write_one`` (compare-and-set on the
conversation's version): the review is resolved and the conversation evaluated at once by
the normal progression (advance, branch, opt-out, the send guard), so two resolutions
racing advance it once; a second resolution with the same intent is a no-op that says so,
one with another intent is refused (``ReviewConflictError``). The labelled example is
stored after the write (idempotent by message id; a replay stores it if a crash lost it).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from campaign_worker.domain import reviews
from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.campaign_documents import CampaignStatus
from campaign_worker.domain.documents import (
    FINISHED_STATUSES,
    ConversationState,
    ReplyReview,
    Unreadable,
)
from campaign_worker.domain.effects import Effects
from campaign_worker.domain.errors import InvalidInputError, ReviewNotFoundError
from campaign_worker.domain.intents import BUILT_IN, OTHER, OUT_OF_OFFICE
from campaign_worker.domain.labelled_replies import escape
from campaign_worker.domain.replies import out_of_office_until
from campaign_worker.domain.rules import reply_text
from campaign_worker.domain.templates import Template
from campaign_worker.service.context import Services
from campaign_worker.service.writes import Current, Outcome, write_one

MAX_LIST = 1000


def list_reviews(svc: Services, campaign_id: str | None = None, limit: int = 50) -> list[Doc]:
    """Replies pending review, the one held longest first (at most ``limit``): where each
    is, what the classifier made of it and the author's own words (for the reviewer; never
    logged)."""
    if not 1 <= limit <= MAX_LIST:
        raise InvalidInputError(f"limit must be between 1 and {MAX_LIST}")
    rows: list[Doc] = []
    for state in svc.reviews.pending(campaign_id, limit):
        if isinstance(state, Unreadable):
            continue  # the invariant checker reports it; it cannot be resolved as it is
        rows += [_row(state, review) for review in reviews.pending(state)]
    rows.sort(key=lambda row: (row["held_at"], row["message_id"]))
    return rows[:limit]


def _row(state: ConversationState, review: ReplyReview) -> Doc:
    message = reviews.held_message(state, review.message_id)
    return {
        "message_id": review.message_id,
        "held_at": review.held_at,
        "campaign_id": state.campaign_id,
        "conversation_id": state.id,
        "user_id": state.user_id,
        "stage": message.metadata.get("stage"),
        "status": state.status.value,
        "suggested": review.suggested,
        "reason": review.reason,
        "confidence": message.metadata.get("confidence"),
        "language": message.metadata.get("language"),
        "text": reply_text(message),
    }


def _check_intent(template: Template, intent: str) -> None:
    known = sorted({*BUILT_IN, OTHER, *template.intents})
    if intent not in known:
        raise InvalidInputError(
            f"unknown intent {intent!r} for template {template.template_id!r} (known: {known})"
        )


def resolve_reply(
    svc: Services, message_id: str, intent: str, resolved_by: str | None = None
) -> Doc:
    """Apply ``intent`` to the held reply ``message_id`` as if it had been classified so;
    returns {message_id, conversation_id, intent, already_resolved, status, current_stage,
    actions}."""
    found = svc.reviews.holding(message_id)
    if found is None:
        raise ReviewNotFoundError(message_id)
    if isinstance(found, Unreadable):
        raise found.problem()
    campaign = svc.campaign(found.campaign_id)
    applied: list[Effects] = []

    def change(c: Current) -> Outcome | None:
        applied.clear()
        message = reviews.held_message(c.state, message_id)
        _check_intent(c.template, intent)
        resume = None
        if intent == OUT_OF_OFFICE:
            received = message.metadata.get("received_at")
            at = received if isinstance(received, datetime) else message.timestamp
            resume = out_of_office_until(
                reply_text(message), at, c.state.context.timezone, c.template
            )
        resolution = reviews.Resolution(message_id, intent, resolved_by, resume)
        resolved = reviews.resolve(c.state, resolution, c.now)
        if resolved is None:
            return None  # resolved before, with this intent
        outcome = _evaluated(c, resolved, campaign.status)
        applied.append(outcome[1])
        return outcome

    state = write_one(svc, found.id, change, first_read=found)
    review = reviews.review_of(state, message_id)
    assert review is not None and review.intent is not None
    message = reviews.held_message(state, message_id)
    svc.reviews.save_label(reviews.label_of(state, review, message))
    actions = [d.action.value for effects in applied for d in effects.decisions]
    return {
        "message_id": message_id,
        "conversation_id": state.id,
        "intent": review.intent,
        "already_resolved": not applied,
        "status": state.status.value,
        "current_stage": state.current_stage,
        "actions": actions,
    }


def _evaluated(c: Current, resolved: ConversationState, status: CampaignStatus) -> Outcome:
    """The resolved conversation evaluated as a new reply would be: at once while its
    campaign runs, on resume when it is paused, not at all once it (or it) is over."""
    effects = Effects()
    effects.delta.reviews["pending"] -= 1
    effects.delta.reviews["resolved"] += 1
    if resolved.status in FINISHED_STATUSES or status in (
        CampaignStatus.CANCELLED,
        CampaignStatus.COMPLETED,
    ):
        return resolved, effects
    if status != CampaignStatus.RUNNING:
        return resolved.model_copy(update={"next_action_at": c.now}), effects
    state, step = c.run(resolved)
    step.delta.add(effects.delta)
    return state, step


def export_labels(svc: Services, since: datetime | None = None) -> Iterator[str]:
    """Resolved reviews as labelled TSV lines (``intent<TAB>text<TAB>language<TAB>tags``,
    the format ``intents train`` and ``intents eval`` read), oldest resolution first."""
    for label in svc.reviews.labels(since):
        if label.text.strip():
            tags = ",".join(["review", *([label.reason] if label.reason else [])])
            yield f"{label.intent}\t{escape(label.text)}\t{label.language or ''}\t{tags}"


__all__ = ["MAX_LIST", "export_labels", "list_reviews", "resolve_reply"]
