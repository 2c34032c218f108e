"""Pure stage progression: rules, limits, opt-out, scheduling and run() chaining.

Time is passed in; nothing here touches a database or a clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from campaign_worker.domain.documents import (
    ConversationContext,
    ConversationState,
    ConversationStatus,
    Direction,
    Message,
    StageEntry,
    message_id_for,
)
from campaign_worker.domain.effects import Action, Effects
from campaign_worker.domain.progression import evaluate, run
from campaign_worker.domain.rules import evaluate_rule, is_opt_out
from campaign_worker.domain.templates import CampaignTypeTemplate, Rule, Template
from campaign_worker.domain.transitions import apply, render

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

Flow = tuple[Template, CampaignTypeTemplate]


def flow(*stages: dict[str, Any], **template_extra: Any) -> Flow:
    template = Template.model_validate(
        {"template_id": "t", "campaign_types": {"x": {"stages": list(stages)}}, **template_extra}
    )
    type_template = template.for_type("x")
    assert type_template is not None
    return template, type_template


def msgs(*waits: str) -> list[dict[str, Any]]:
    return [{"text": f"m{i}", "wait": wait} for i, wait in enumerate(waits)]


def new_state(f: Flow, attributes: dict[str, Any] | None = None) -> ConversationState:
    names = f[1].stage_names
    return ConversationState(
        id="conv-1",
        user_id="user-1",
        campaign_id="camp-1",
        campaign_type="x",
        current_stage=names[0],
        stages=[StageEntry(name=names[0], entered_at=T0)],
        context=ConversationContext(
            template_id="t", available_stages=names, attributes=attributes or {}
        ),
        created_at=T0,
        last_active=T0,
        next_action_at=T0,
    )


def reply(state: ConversationState, content: str, at: datetime) -> ConversationState:
    """An inbound message, tagged with the stage it arrived in (as the manager does)."""
    message = Message(
        message_id=f"in-{len(state.message_history)}",
        direction=Direction.INBOUND,
        content=content,
        timestamp=at,
        metadata={"stage": state.current_stage},
    )
    return state.model_copy(update={"message_history": [*state.message_history, message]})


def step(state: ConversationState, f: Flow, at: datetime) -> tuple[ConversationState, Effects]:
    return run(state, f[0], f[1], at)


def actions(effects: Effects) -> list[str]:
    return [decision.action.value for decision in effects.decisions]


def sent_once(f: Flow, at: datetime = T0) -> ConversationState:
    """The conversation after its first message went out at ``at``."""
    state, effects = step(new_state(f), f, at)
    assert len(effects.outbound) == 1
    return state


def rule_met(rule: dict[str, Any], state: ConversationState, at: datetime) -> bool:
    matched, _ = evaluate_rule(Rule.model_validate(rule), state, at)
    return matched


TWO_STAGES = (
    {"name": "a", "messages": msgs("1d", "2d")},
    {"name": "b", "messages": msgs("1d", "1d")},
)


def two_stages(rule: dict[str, Any], **stage_extra: Any) -> Flow:
    first = {**TWO_STAGES[0], "advance_when": rule, **stage_extra}
    return flow(first, {**TWO_STAGES[1], "advance_when": {"reply_received": True}})


# ---------------------------------------------------------------- rules


def test_reply_received_is_false_without_a_reply() -> None:
    state = sent_once(two_stages({"reply_received": True}))
    assert not rule_met({"reply_received": True}, state, T0 + HOUR)


def test_reply_received_is_true_after_a_reply() -> None:
    state = reply(sent_once(two_stages({"reply_received": True})), "hello", T0 + HOUR)
    assert rule_met({"reply_received": True}, state, T0 + HOUR)


def test_outbound_messages_are_not_replies() -> None:
    state = sent_once(two_stages({"reply_received": True}))
    assert state.message_history[0].direction == Direction.OUTBOUND
    assert not rule_met({"reply_received": True}, state, T0 + 2 * DAY)


@pytest.mark.parametrize("content", ["price?", "What's the PRICE", "Price", "the price, please"])
def test_keywords_match_whole_words_case_insensitively(content: str) -> None:
    state = reply(sent_once(two_stages({"keywords": ["price"]})), content, T0 + HOUR)
    assert rule_met({"keywords": ["price"]}, state, T0 + HOUR)


@pytest.mark.parametrize("content", ["priceless", "overpriced", "no thanks", "p r i c e"])
def test_keywords_do_not_match_inside_words(content: str) -> None:
    state = reply(sent_once(two_stages({"keywords": ["price"]})), content, T0 + HOUR)
    assert not rule_met({"keywords": ["price"]}, state, T0 + HOUR)


def test_multi_word_keyword_matches_the_phrase() -> None:
    state = reply(sent_once(two_stages({"keywords": ["logged in"]})), "I Logged In!", T0)
    assert rule_met({"keywords": ["logged in"]}, state, T0)


def test_keyword_with_regex_characters_is_literal() -> None:
    rule = {"keywords": ["c++"]}
    state = reply(sent_once(two_stages(rule)), "we use c++ daily", T0)
    assert rule_met(rule, state, T0)
    other = reply(sent_once(two_stages(rule)), "we use cxx daily", T0)
    assert not rule_met(rule, other, T0)


def test_any_of_several_keywords_matches() -> None:
    rule = {"keywords": ["pricing", "quote"]}
    state = reply(sent_once(two_stages(rule)), "send me a quote", T0)
    assert rule_met(rule, state, T0)


def test_regex_matches_case_insensitively() -> None:
    rule = {"regex": r"\bbuy\b"}
    state = reply(sent_once(two_stages(rule)), "OK I want to BUY", T0)
    assert rule_met(rule, state, T0)


def test_regex_not_matching() -> None:
    rule = {"regex": r"\bbuy\b"}
    state = reply(sent_once(two_stages(rule)), "I am a buyer", T0)
    assert not rule_met(rule, state, T0)


def test_min_messages_sent_counts_this_stage_only() -> None:
    f = two_stages({"min_messages_sent": 2})
    state = sent_once(f)
    assert state.stage_step == 1
    assert not rule_met({"min_messages_sent": 2}, state, T0)
    state, effects = step(state, f, T0 + DAY)  # the follow-up goes out: rule met
    assert actions(effects) == ["send", "advance", "send", "wait"]
    assert state.current_stage == "b"
    assert state.metrics.messages_sent == 3
    assert state.stage_step == 1  # b's count starts again
    assert not rule_met({"min_messages_sent": 2}, state, T0 + DAY)


def test_min_time_in_stage_is_measured_from_stage_entry() -> None:
    state = sent_once(two_stages({"min_time_in_stage": "1d"}))
    assert not rule_met({"min_time_in_stage": "1d"}, state, T0 + DAY - timedelta(seconds=1))
    assert rule_met({"min_time_in_stage": "1d"}, state, T0 + DAY)


def test_all_needs_every_condition() -> None:
    rule = {"all": [{"reply_received": True}, {"min_time_in_stage": "1d"}]}
    state = reply(sent_once(two_stages(rule)), "hi", T0 + HOUR)
    assert not rule_met(rule, state, T0 + HOUR)
    assert rule_met(rule, state, T0 + DAY)


def test_all_fails_without_the_reply_even_after_the_time() -> None:
    rule = {"all": [{"reply_received": True}, {"min_time_in_stage": "1d"}]}
    assert not rule_met(rule, sent_once(two_stages(rule)), T0 + 3 * DAY)


def test_any_needs_one_condition() -> None:
    rule = {"any": [{"keywords": ["yes"]}, {"min_time_in_stage": "2d"}]}
    state = sent_once(two_stages(rule))
    assert not rule_met(rule, state, T0 + DAY)
    assert rule_met(rule, state, T0 + 2 * DAY)
    assert rule_met(rule, reply(state, "yes", T0 + HOUR), T0 + HOUR)


def test_nested_any_inside_all() -> None:
    rule = {
        "all": [
            {"any": [{"keywords": ["pricing"]}, {"regex": "cost"}]},
            {"min_messages_sent": 1},
        ]
    }
    state = sent_once(two_stages(rule))
    assert not rule_met(rule, state, T0)
    assert rule_met(rule, reply(state, "what does it cost", T0), T0)
    assert rule_met(rule, reply(state, "PRICING", T0), T0)
    assert not rule_met(rule, reply(state, "hello", T0), T0)


# ---------------------------------------------------------------- evaluate: advancing


def test_reply_advances_to_the_next_stage() -> None:
    f = two_stages({"reply_received": True})
    state = reply(sent_once(f), "hi", T0 + HOUR)
    decision = evaluate(state, f[0], f[1], T0 + HOUR)
    assert decision.action == Action.ADVANCE
    assert decision.next_stage == "b"


def test_rule_met_in_the_last_stage_completes() -> None:
    f = flow({"name": "only", "messages": msgs("1d"), "advance_when": {"reply_received": True}})
    state = reply(sent_once(f), "hi", T0 + HOUR)
    assert evaluate(state, f[0], f[1], T0 + HOUR).action == Action.COMPLETE


def test_no_reply_waits_until_the_next_follow_up() -> None:
    f = flow({"name": "a", "messages": msgs("1d", "2d"), "advance_when": {"reply_received": True}})
    decision = evaluate(sent_once(f), f[0], f[1], T0 + HOUR)
    assert decision.action == Action.WAIT
    assert decision.next_action_at == T0 + DAY


def test_time_rule_schedules_a_wakeup_when_it_can_flip() -> None:
    rule = {"any": [{"reply_received": True}, {"min_time_in_stage": "6h"}]}
    f = two_stages(rule)
    decision = evaluate(sent_once(f), f[0], f[1], T0 + HOUR)
    assert decision.action == Action.WAIT
    assert decision.next_action_at == T0 + 6 * HOUR


def test_a_reply_only_counts_in_the_stage_it_arrived_in() -> None:
    f = flow(
        {"name": "a", "messages": msgs("1d"), "advance_when": {"reply_received": True}},
        {"name": "b", "messages": msgs("1d"), "advance_when": {"reply_received": True}},
        {"name": "c", "messages": msgs("1d")},
    )
    state = reply(sent_once(f), "hi", T0 + HOUR)
    state, effects = step(state, f, T0 + HOUR)
    assert state.current_stage == "b"  # advanced once, not all the way to c
    assert [t.to_stage for t in effects.transitions] == ["b"]
    assert evaluate(state, f[0], f[1], T0 + 2 * HOUR).action == Action.WAIT
    state = reply(state, "again", T0 + 3 * HOUR)
    assert evaluate(state, f[0], f[1], T0 + 3 * HOUR).next_stage == "c"


def test_keywords_only_look_at_replies_in_the_current_stage() -> None:
    f = flow(
        {"name": "a", "messages": msgs("1d"), "advance_when": {"reply_received": True}},
        {"name": "b", "messages": msgs("1d"), "advance_when": {"keywords": ["pricing"]}},
    )
    state = reply(sent_once(f), "pricing please", T0)
    state, _ = step(state, f, T0)
    assert state.current_stage == "b"
    assert evaluate(state, f[0], f[1], T0 + HOUR).action == Action.WAIT


# ---------------------------------------------------------------- limits


def test_max_time_in_stage_fails() -> None:
    f = two_stages({"reply_received": True}, max_time_in_stage={"after": "2d", "then": "fail"})
    state = sent_once(f)
    assert evaluate(state, f[0], f[1], T0 + 2 * DAY - HOUR).action != Action.FAIL
    assert evaluate(state, f[0], f[1], T0 + 2 * DAY).action == Action.FAIL


def test_max_time_in_stage_advances() -> None:
    f = two_stages({"reply_received": True}, max_time_in_stage={"after": "2d", "then": "advance"})
    decision = evaluate(sent_once(f), f[0], f[1], T0 + 2 * DAY)
    assert decision.action == Action.ADVANCE
    assert decision.next_stage == "b"


def test_max_time_advance_in_the_last_stage_completes() -> None:
    f = flow(
        {
            "name": "only",
            "messages": msgs("1d"),
            "advance_when": {"reply_received": True},
            "max_time_in_stage": {"after": "2d", "then": "advance"},
        }
    )
    assert evaluate(sent_once(f), f[0], f[1], T0 + 2 * DAY).action == Action.COMPLETE


def test_max_time_deadline_is_the_wakeup_when_it_comes_first() -> None:
    f = two_stages({"reply_received": True}, max_time_in_stage={"after": "12h", "then": "fail"})
    state, effects = step(new_state(f), f, T0)
    assert actions(effects) == ["send", "wait"]
    assert state.next_action_at == T0 + 12 * HOUR


def limited(then: str) -> Flow:
    return flow(
        {
            "name": "a",
            "messages": msgs("1d", "2d", "3d"),
            "advance_when": {"reply_received": True},
            "max_followups_without_reply": {"count": 1, "then": then},
        },
        {"name": "b", "messages": msgs("1d")},
    )


def drive(f: Flow, state: ConversationState, until: datetime) -> ConversationState:
    """Run at each scheduled time until ``until`` or until nothing is scheduled."""
    while state.next_action_at is not None and state.next_action_at <= until:
        state, _ = step(state, f, state.next_action_at)
    return state


def test_max_followups_without_reply_fails() -> None:
    f = limited("fail")
    state = drive(f, new_state(f), T0 + 10 * DAY)
    assert state.status == ConversationStatus.FAILED
    assert state.stage_step == 2  # the first message and one follow-up; the third never sent
    assert state.finished_at == T0 + 3 * DAY  # second message (T0+1d) plus its 2d wait
    assert state.stages[0].completed is False


def test_max_followups_without_reply_completes() -> None:
    f = limited("complete")
    state = drive(f, new_state(f), T0 + 10 * DAY)
    assert state.status == ConversationStatus.COMPLETED
    assert state.stages[0].completed is True


def test_max_followups_does_not_apply_after_a_reply() -> None:
    f = flow(
        {
            "name": "a",
            "messages": msgs("1d", "2d"),
            "advance_when": {"keywords": ["yes"]},
            "max_followups_without_reply": {"count": 1, "then": "fail"},
        }
    )
    state = drive(f, new_state(f), T0 + DAY)
    state = reply(state, "maybe", T0 + DAY + HOUR)
    decision = evaluate(state, f[0], f[1], T0 + 5 * DAY)
    assert decision.action != Action.FAIL


# ---------------------------------------------------------------- opt-out


@pytest.mark.parametrize(
    "content", ["STOP", "stop", "Stop!", "  stop.  ", "Unsubscribe!!", "STOP\n"]
)
def test_opt_out_keyword_as_the_whole_message(content: str) -> None:
    assert is_opt_out(content, ["STOP", "UNSUBSCRIBE"])


@pytest.mark.parametrize(
    "content", ["please stop texting me", "stopwatch", "don't stop", "STOP IT"]
)
def test_opt_out_needs_the_keyword_to_be_the_whole_message(content: str) -> None:
    assert not is_opt_out(content, ["STOP", "UNSUBSCRIBE"])


def test_opt_out_reply_ends_the_conversation_before_any_rule() -> None:
    f = two_stages({"reply_received": True})
    state = reply(sent_once(f), "Stop.", T0 + HOUR)
    state, effects = step(state, f, T0 + HOUR)
    assert actions(effects) == ["opt_out"]
    assert state.status == ConversationStatus.OPTED_OUT
    assert state.next_action_at is None
    assert effects.outbound == []
    assert effects.delta.opted_out == 1
    assert effects.delta.active == -1


def test_template_opt_out_keywords_are_used() -> None:
    f = flow({"name": "a", "messages": msgs("1d")}, opt_out_keywords=["ENOUGH"])
    assert evaluate(reply(sent_once(f), "enough!", T0), f[0], f[1], T0).action == Action.OPT_OUT
    # The built-in opt-out phrases apply as well (global opt-out, issue 12)...
    assert evaluate(reply(sent_once(f), "stop", T0), f[0], f[1], T0).action == Action.OPT_OUT
    # ...unless the template replaces them.
    g = flow(
        {"name": "a", "messages": msgs("1d")},
        opt_out_keywords=["ENOUGH"],
        intents={"opt_out": {"replace_defaults": True}},
    )
    assert evaluate(reply(sent_once(g), "stop", T0), g[0], g[1], T0).action != Action.OPT_OUT


# ---------------------------------------------------------------- sending and scheduling


def test_first_evaluation_sends_the_first_message() -> None:
    f = two_stages({"reply_received": True})
    decision = evaluate(new_state(f), f[0], f[1], T0)
    assert decision.action == Action.SEND
    assert decision.step == 0
    assert decision.next_action_at == T0 + DAY


def test_follow_up_is_scheduled_at_sent_plus_wait() -> None:
    f = flow({"name": "a", "messages": msgs("1d", "2d", "3d"), "advance_when": {"regex": "x"}})
    state = sent_once(f)
    assert state.next_action_at == T0 + DAY
    late = T0 + DAY + 5 * HOUR  # the worker ran late
    state, effects = step(state, f, late)
    assert effects.outbound[0].step == 1
    assert state.message_history[-1].timestamp == late
    assert state.next_action_at == late + 2 * DAY


def test_follow_up_is_not_sent_before_its_wait() -> None:
    f = flow({"name": "a", "messages": msgs("1d", "2d"), "advance_when": {"regex": "x"}})
    state, effects = step(sent_once(f), f, T0 + DAY - timedelta(seconds=1))
    assert effects.outbound == []
    assert state.next_action_at == T0 + DAY


def test_sent_message_is_recorded_in_history_and_outbox() -> None:
    f = two_stages({"reply_received": True})
    state, effects = step(new_state(f), f, T0)
    expected_id = message_id_for("conv-1", "a", 0)
    assert [m.message_id for m in state.message_history] == [expected_id]
    envelope = effects.outbound[0]
    assert envelope.message_id == expected_id
    assert (envelope.conversation_id, envelope.user_id, envelope.stage) == ("conv-1", "user-1", "a")
    assert state.message_history[0].metadata == {
        "stage": "a",
        "step": 0,
        "channel": "default",
        "entry": 0,
    }
    assert state.metrics.messages_sent == 1
    assert state.stage_step == 1
    assert effects.delta.sent == 1


def test_replaying_the_same_send_yields_the_same_message_id() -> None:
    f = two_stages({"reply_received": True})
    _, first = step(new_state(f), f, T0)
    _, again = step(new_state(f), f, T0 + HOUR)
    assert first.outbound[0].message_id == again.outbound[0].message_id


# ---------------------------------------------------------------- drip stages


def test_drip_stage_without_rule_advances_after_the_last_wait() -> None:
    f = flow(
        {"name": "drip", "messages": msgs("1d", "2d")}, {"name": "next", "messages": msgs("1d")}
    )
    state = sent_once(f)
    state, effects = step(state, f, T0 + DAY)
    assert actions(effects) == ["send", "wait"]
    assert state.next_action_at == T0 + 3 * DAY
    state, effects = step(state, f, T0 + 3 * DAY)
    assert actions(effects)[:2] == ["advance", "send"]
    assert state.current_stage == "next"


def test_drip_stage_waits_for_the_last_wait() -> None:
    f = flow({"name": "drip", "messages": msgs("1d")}, {"name": "next", "messages": msgs("1d")})
    decision = evaluate(sent_once(f), f[0], f[1], T0 + DAY - HOUR)
    assert decision.action == Action.WAIT
    assert decision.next_action_at == T0 + DAY


def test_last_drip_stage_completes() -> None:
    f = flow({"name": "drip", "messages": msgs("1d")})
    state, effects = step(sent_once(f), f, T0 + DAY)
    assert actions(effects) == ["complete"]
    assert state.status == ConversationStatus.COMPLETED
    assert effects.delta.completed == 1


def test_stage_without_messages_or_rule_passes_straight_through() -> None:
    f = flow({"name": "empty"}, {"name": "next", "messages": msgs("1d")})
    state, effects = step(new_state(f), f, T0)
    assert actions(effects) == ["advance", "send", "wait"]
    assert state.current_stage == "next"


# ---------------------------------------------------------------- run() and apply()


def test_run_chains_advance_and_the_next_stages_first_message() -> None:
    f = two_stages({"reply_received": True})
    state = reply(sent_once(f), "hi", T0 + HOUR)
    state, effects = step(state, f, T0 + HOUR)
    assert actions(effects) == ["advance", "send", "wait"]
    assert state.current_stage == "b"
    assert [e.stage for e in effects.outbound] == ["b"]
    assert effects.outbound[0].message_id == message_id_for("conv-1", "b", 0)
    assert state.stage_step == 1
    assert state.next_action_at == T0 + HOUR + DAY  # b's follow-up


def test_nothing_is_scheduled_once_only_a_reply_can_move_the_stage() -> None:
    # Replies are evaluated when they arrive; waking up would find nothing to do.
    f = flow({"name": "a", "messages": msgs("1d"), "advance_when": {"reply_received": True}})
    state, effects = step(new_state(f), f, T0)
    assert actions(effects) == ["send", "wait"]
    assert state.next_action_at is None
    assert state.status == ConversationStatus.ACTIVE


def test_advance_closes_the_old_stage_and_opens_the_new() -> None:
    f = two_stages({"reply_received": True})
    state = reply(sent_once(f), "hi", T0 + HOUR)
    state, effects = step(state, f, T0 + HOUR)
    assert [(s.name, s.exited_at, s.completed) for s in state.stages] == [
        ("a", T0 + HOUR, True),
        ("b", None, False),
    ]
    assert state.stages[1].entered_at == T0 + HOUR
    assert state.metrics.stage_progressions == 1
    assert effects.delta.stage_completed == {"a": 1}
    assert effects.delta.stage_entered == {"b": 1}
    assert effects.delta.stage_duration["a"] == 3600.0


def test_failure_does_not_count_the_stage_as_completed() -> None:
    f = two_stages({"reply_received": True}, max_time_in_stage={"after": "1d", "then": "fail"})
    state, effects = step(sent_once(f), f, T0 + DAY)
    assert state.status == ConversationStatus.FAILED
    assert state.stages[0].exited_at == T0 + DAY
    assert state.stages[0].completed is False
    assert +effects.delta.stage_completed == {}
    assert effects.delta.failed == 1
    assert state.status_reason is not None and "max time" in state.status_reason


def test_finished_conversation_does_nothing() -> None:
    f = two_stages({"reply_received": True})
    done = new_state(f).model_copy(update={"status": ConversationStatus.COMPLETED})
    state, effects = step(done, f, T0)
    assert actions(effects) == ["none"]
    assert state == done


def test_stage_missing_from_the_template_fails() -> None:
    f = two_stages({"reply_received": True})
    other = flow({"name": "zzz", "messages": msgs("1d")})
    decision = evaluate(new_state(f), other[0], other[1], T0)
    assert decision.action == Action.FAIL
    assert "'a'" in decision.reason


def test_apply_wait_only_moves_next_action_at() -> None:
    f = two_stages({"reply_received": True})
    state = sent_once(f)
    decision = evaluate(state, f[0], f[1], T0 + HOUR)
    assert decision.action == Action.WAIT
    effects = Effects()
    after = apply(state, decision, f[0], f[1], T0 + HOUR, effects)
    assert after.model_copy(update={"next_action_at": state.next_action_at}) == state
    assert effects.delta.is_empty()


def test_run_is_bounded_by_max_steps() -> None:
    f = flow(*[{"name": f"s{i}"} for i in range(5)])
    state, effects = run(new_state(f), f[0], f[1], T0, max_steps=2)
    assert actions(effects) == ["advance", "advance"]
    assert state.current_stage == "s2"


# ---------------------------------------------------------------- rendering


def test_render_fills_attributes() -> None:
    assert render("Hi {first_name}, about {product}", {"first_name": "Ann", "product": "X"}) == (
        "Hi Ann, about X"
    )


def test_render_uses_defaults_for_missing_attributes() -> None:
    assert render("Hi {first_name}", {}, {"first_name": "there"}) == "Hi there"


def test_render_attributes_override_defaults() -> None:
    assert render("Hi {first_name}", {"first_name": "Ann"}, {"first_name": "there"}) == "Hi Ann"


def test_render_unknown_placeholder_is_empty() -> None:
    assert render("Hi {nickname}!", {}) == "Hi !"


def test_sent_message_is_rendered_with_recipient_attributes_and_defaults() -> None:
    f = flow(
        {"name": "a", "messages": [{"text": "Hi {first_name}, try {product}.{missing}"}]},
        attribute_defaults={"product": "our product", "first_name": "there"},
    )
    state, effects = step(new_state(f, attributes={"first_name": "Ann"}), f, T0)
    assert effects.outbound[0].content == "Hi Ann, try our product."
    assert state.message_history[0].content == "Hi Ann, try our product."
