"""The rules over recorded replies, pure: ``reply_received`` true (an understood reply)
and ``any``; keywords and regexes read the extracted text; held replies act on nothing
until resolved; replies stored before the reply understanding keep their intent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from campaign_worker.domain import reviews
from campaign_worker.domain.documents import (
    ConversationContext,
    ConversationState,
    Direction,
    Message,
    StageEntry,
)
from campaign_worker.domain.effects import Action
from campaign_worker.domain.progression import evaluate
from campaign_worker.domain.rules import evaluate_rule, intent_of
from campaign_worker.domain.templates import Rule, Template

T0 = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)


def hello_then_bye(**limit: Any) -> Template:
    """Stage ``hello`` (advances on an understood reply) with ``limit``, then ``bye``."""
    hello = {
        "name": "hello",
        "messages": [{"text": "Reply YES", "wait": "1d"}],
        "advance_when": {"reply_received": True},
        **limit,
    }
    bye = {"name": "bye", "messages": [{"text": "bye", "wait": "1d"}]}
    return Template.model_validate(
        {"template_id": "t", "campaign_types": {"sales": {"stages": [hello, bye]}}}
    )


TEMPLATE = hello_then_bye(on_timeout={"after": "2d", "goto": "bye"})


def state(*metadata: dict[str, Any]) -> ConversationState:
    """A conversation in stage ``hello`` with one inbound reply per metadata given."""
    messages = [
        Message(
            message_id=f"in-{i}",
            direction=Direction.INBOUND,
            content=str(meta.pop("content", "Yes\n> Reply STOP to opt out")),
            timestamp=T0,
            metadata={"stage": "hello", "entry": 0, "received_at": T0, **meta},
        )
        for i, meta in enumerate(metadata)
    ]
    return ConversationState(
        id="c",
        user_id="u",
        campaign_id="k",
        campaign_type="sales",
        current_stage="hello",
        stages=[StageEntry(name="hello", entered_at=T0)],
        message_history=messages,
        context=ConversationContext(template_id="t", available_stages=["hello", "bye"]),
        created_at=T0,
        last_active=T0,
        stage_step=1,
    )


def reply_received(value: Any, found: ConversationState) -> bool:
    return evaluate_rule(Rule(reply_received=value), found, T0)[0]


@pytest.mark.parametrize(
    ("metadata", "understood", "any_reply"),
    [
        ({"intent": "positive", "needs_review": False}, True, True),
        ({"intent": "other", "needs_review": False}, False, True),  # "ok thanks"
        ({"intent": "out_of_office"}, False, False),  # an auto-reply is no reply
        ({"intent": "positive", "needs_review": True}, False, True),  # held
        ({}, True, True),  # recorded before intents existed: a reply, as it was then
    ],
)
def test_reply_received_true_needs_an_understood_reply(
    metadata: dict[str, Any], understood: bool, any_reply: bool
) -> None:
    found = state(metadata)
    assert reply_received(True, found) is understood
    assert reply_received("any", found) is any_reply


def test_reply_received_rejects_other_values() -> None:
    with pytest.raises(ValueError, match="reply_received"):
        Rule.model_validate({"reply_received": "yes"})


def test_keywords_and_regexes_read_the_extracted_text() -> None:
    extracted = {"intent": "positive", "extracted_text": "Yes"}
    stop = Rule(keywords=["stop"])
    assert evaluate_rule(stop, state(extracted), T0)[0] is False  # STOP is only quoted
    assert evaluate_rule(Rule(regex=r"^yes$"), state(extracted), T0)[0] is True
    # A reply stored before the extraction existed: its content is what it said.
    assert evaluate_rule(stop, state({"intent": "positive"}), T0)[0] is True


def test_a_held_reply_acts_on_nothing_until_resolved_then_as_classified() -> None:
    found = state({"intent": "opt_out", "needs_review": True})
    held = reviews.hold(found, found.message_history[0], "opt_out_risk")
    assert reviews.acted_intent(held, held.message_history[0]) is None
    decision = evaluate(held, TEMPLATE, TEMPLATE.campaign_types["sales"], T0 + timedelta(days=3))
    assert (decision.action, decision.next_action_at) == (Action.WAIT, None)  # no timeout

    resolution = reviews.Resolution("in-0", "positive", "ops")
    resolved = reviews.resolve(held, resolution, T0 + timedelta(days=3))
    assert resolved is not None and not reviews.held(resolved)
    assert intent_of(resolved, resolved.message_history[0]) == "positive"
    decision = evaluate(
        resolved, TEMPLATE, TEMPLATE.campaign_types["sales"], T0 + timedelta(days=3)
    )
    assert (decision.action, decision.next_stage) == (Action.ADVANCE, "bye")
    assert reviews.resolve(resolved, resolution, T0 + timedelta(days=4)) is None  # a replay


def test_stored_intents_are_kept_and_intentless_replies_classified_by_keywords() -> None:
    found = state({"intent": "question"}, {"content": "STOP"})
    classifier = TEMPLATE.classifier
    assert intent_of(found, found.message_history[0], classifier) == "question"
    assert intent_of(found, found.message_history[1], classifier) == "opt_out"
    decision = evaluate(found, TEMPLATE, TEMPLATE.campaign_types["sales"], T0)
    assert decision.action == Action.OPT_OUT


FOLLOW_UP = hello_then_bye(max_followups_without_reply={"count": 0, "then": "fail"})


@pytest.mark.parametrize(
    ("intent", "action"),
    [
        ("other", Action.FAIL),  # not understood: as silent, the limit ends it
        ("not_interested", Action.ADVANCE),  # understood: the rule holds
    ],
)
def test_under_reply_received_true_only_an_understood_reply_stops_the_follow_up_limit(
    intent: str, action: Action
) -> None:
    found = state({"intent": intent, "needs_review": False, "content": "hmm, maybe"})
    sent = Message(
        message_id="out-0",
        direction=Direction.OUTBOUND,
        content="Reply YES",
        timestamp=T0 - timedelta(hours=1),
        metadata={"stage": "hello", "entry": 0, "step": 0},
    )
    found = found.model_copy(update={"message_history": [sent, *found.message_history]})
    when = T0 + timedelta(days=2)
    decision = evaluate(found, FOLLOW_UP, FOLLOW_UP.campaign_types["sales"], when)
    assert decision.action == action, decision.reason
    if action == Action.FAIL:
        assert decision.reason == "0 follow-ups without an understood reply"
