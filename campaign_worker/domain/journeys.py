"""Journey decisions beside the linear drip, pure: opt-out by intent, a reply's branch,
the out-of-office pause and the stage's ``on_timeout``. ``progression.evaluate`` calls
these in that order before the stage's own rules."""

from __future__ import annotations

from datetime import datetime

from campaign_worker.domain import reviews
from campaign_worker.domain.branches import Route, event_route, reply_route, timeout_route
from campaign_worker.domain.documents import ConversationState, Direction
from campaign_worker.domain.effects import Action, Decision
from campaign_worker.domain.intents import OPT_OUT, OUT_OF_OFFICE
from campaign_worker.domain.rules import (
    events_in_entry,
    inbound_in_stage,
    intent_of,
    replies_in_entry,
)
from campaign_worker.domain.templates import Stage, Template

_EXIT_ACTIONS = {"completed": Action.COMPLETE, "failed": Action.FAIL, "opted_out": Action.OPT_OUT}


def route_decision(route: Route, reason: str) -> Decision:
    """Advance to the route's stage, or end the conversation with its outcome."""
    if route.stage is not None:
        return Decision(Action.ADVANCE, reason, next_stage=route.stage)
    action = _EXIT_ACTIONS[route.outcome or "completed"]
    suffix = "; last stage done" if action == Action.COMPLETE else ""
    return Decision(action, f"{reason}{suffix}")


def opt_out(state: ConversationState, template: Template) -> Decision | None:
    """Any inbound message whose intent is ``opt_out`` ends the conversation (the intent
    was decided when the message was recorded, or by the person who resolved its review;
    messages recorded before intents existed are classified here)."""
    classifier = template.classifier
    for message in state.message_history:
        if (
            message.direction == Direction.INBOUND
            and intent_of(state, message, classifier) == OPT_OUT
        ):
            return Decision(Action.OPT_OUT, f"opt-out in {message.message_id}")
    return None


def held_for_review(state: ConversationState) -> Decision | None:
    """A reply waits for a person: nothing happens until it is resolved (no advance, no
    follow-up, no timeout), and nothing is scheduled (resolving evaluates it again)."""
    if not reviews.held(state):
        return None
    waiting = ", ".join(review.message_id for review in reviews.pending(state))
    return Decision(Action.WAIT, f"reply held for review: {waiting}", next_action_at=None)


def reply_branch(state: ConversationState, stage: Stage) -> Decision | None:
    """The first reply of this stage entry whose intent the stage routes (``on_reply``)."""
    if not stage.on_reply:
        return None
    for message in replies_in_entry(state, stage.name):
        intent = reviews.acted_intent(state, message)
        route = reply_route(stage, intent) if intent is not None else None
        if route is not None:
            return route_decision(route, f"reply {message.message_id} is {intent}")
    return None


def event_branch(state: ConversationState, stage: Stage) -> Decision | None:
    """The first event of this stage entry that the stage routes (``on_event``)."""
    if not stage.on_event:
        return None
    for event in events_in_entry(state):
        route = event_route(stage, event.event)
        if route is not None:
            return route_decision(route, f"event {event.event} ({event.event_id})")
    return None


def paused_until(state: ConversationState, now: datetime) -> datetime | None:
    """While the latest inbound message is an out-of-office reply whose resume time is
    still ahead, follow-ups wait until then."""
    for message in reversed(state.message_history):
        if message.direction != Direction.INBOUND:
            continue
        if reviews.acted_intent(state, message) != OUT_OF_OFFICE:
            return None  # a real reply after the auto-reply ends the pause
        resume = reviews.resume_at(state, message)
        return resume if resume is not None and resume > now else None
    return None


def timed_out(
    state: ConversationState, stage: Stage, entered_at: datetime, now: datetime
) -> tuple[Decision | None, datetime | None]:
    """``on_timeout``: nothing moved the conversation on within ``after`` of entering the
    stage (a reply it does not route does not stop the clock, else such a reply would leave
    the conversation waiting forever). Returns the decision once due, else its moment."""
    route = timeout_route(stage)
    if route is None or stage.on_timeout is None:
        return None, None
    deadline = entered_at + stage.on_timeout.after
    if now < deadline:
        return None, deadline
    replied = bool(inbound_in_stage(state, stage.name))
    why = "no reply" if not replied else "no reply the stage routes"
    return route_decision(route, f"{why} within {stage.on_timeout.after}"), None


__all__ = [
    "event_branch",
    "held_for_review",
    "opt_out",
    "paused_until",
    "reply_branch",
    "route_decision",
    "timed_out",
]
