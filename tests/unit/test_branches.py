"""Branches by reply intent and timeout, the out-of-office pause, template validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from campaign_worker.adapters.template_files import parse_template
from campaign_worker.domain.documents import (
    ConversationContext,
    ConversationState,
    ConversationStatus,
    Direction,
    Message,
    StageEntry,
    message_id_for,
)
from campaign_worker.domain.effects import Action
from campaign_worker.domain.errors import InvalidTemplateError
from campaign_worker.domain.intents import ReplyClassifier
from campaign_worker.domain.progression import evaluate, run
from campaign_worker.domain.replies import understood_facts
from campaign_worker.domain.rules import entry_index
from campaign_worker.domain.templates import CampaignTypeTemplate, Template
from tests.fakes import ScriptedUnderstanding

T0 = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)  # a Wednesday
KEYWORDS = ScriptedUnderstanding()  # the template's keyword classifier, sure of itself
DAY = timedelta(days=1)

JOURNEY: dict[str, Any] = {
    "template_id": "j",
    "campaign_types": {
        "sales": {
            "stages": [
                {
                    "name": "awareness",
                    "messages": [{"text": "hi", "wait": "1d"}, {"text": "again", "wait": "2d"}],
                    "on_reply": {
                        "positive": "decision",
                        "question": "consideration",
                        "not_interested": {"exit": "failed"},
                    },
                    "on_timeout": {"after": "5d", "goto": "reminder"},
                    "advance_when": {"intent": ["other"]},
                },
                {
                    "name": "consideration",
                    "messages": [{"text": "answers", "wait": "2d"}],
                    "on_reply": {"positive": "decision"},
                    "on_timeout": {"after": "3d", "goto": "awareness"},
                },
                {
                    "name": "decision",
                    "messages": [{"text": "quote", "wait": "2d"}],
                    "on_reply": {"question": "consideration"},
                    "next": {"exit": "completed"},
                    "advance_when": {"intent": ["positive"]},
                },
                {
                    "name": "reminder",
                    "messages": [{"text": "last call", "wait": "2d"}],
                    "on_reply": {"positive": "decision"},
                    "next": {"exit": "failed"},
                },
            ]
        }
    },
}


def journey(**extra: Any) -> tuple[Template, CampaignTypeTemplate]:
    template = Template.model_validate({**JOURNEY, **extra})
    found = template.for_type("sales")
    assert found is not None
    return template, found


def started(f: tuple[Template, CampaignTypeTemplate]) -> ConversationState:
    state = ConversationState(
        id="c1",
        user_id="u1",
        campaign_id="k1",
        campaign_type="sales",
        current_stage="awareness",
        stages=[StageEntry(name="awareness", entered_at=T0)],
        context=ConversationContext(
            template_id="j", available_stages=f[1].stage_names, timezone="America/New_York"
        ),
        created_at=T0,
        last_active=T0,
        next_action_at=T0,
    )
    state, effects = run(state, f[0], f[1], T0)
    assert len(effects.outbound) == 1
    return state


def reply(
    state: ConversationState, text: str, at: datetime, f: tuple[Template, CampaignTypeTemplate]
) -> ConversationState:
    """As the manager records a reply: tagged with stage and entry, classified once."""
    message = Message(
        message_id=f"in-{len(state.message_history)}",
        direction=Direction.INBOUND,
        content=text,
        timestamp=at,
        metadata={
            "stage": state.current_stage,
            "entry": entry_index(state),
            **understood_facts(KEYWORDS.understand(text, f[0]), at, state.context.timezone, f[0]),
        },
    )
    return state.model_copy(update={"message_history": [*state.message_history, message]})


@pytest.mark.parametrize(
    ("text", "stage", "status"),
    [
        ("Yes please", "decision", ConversationStatus.ACTIVE),
        ("How much is it?", "consideration", ConversationStatus.ACTIVE),
        ("no thanks", "awareness", ConversationStatus.FAILED),
        ("STOP please", "awareness", ConversationStatus.OPTED_OUT),
        ("please unsubscribe me", "awareness", ConversationStatus.OPTED_OUT),
    ],
)
def test_a_reply_routes_by_its_intent(text: str, stage: str, status: ConversationStatus) -> None:
    f = journey()
    state = reply(started(f), text, T0 + DAY / 2, f)
    state, effects = run(state, f[0], f[1], T0 + DAY / 2)
    assert (state.current_stage, state.status) == (stage, status)
    # Only an active conversation that moved sends the new stage's first message.
    assert len(effects.outbound) == (1 if status == ConversationStatus.ACTIVE else 0)


def test_branch_back_enters_the_stage_again_with_new_message_ids() -> None:
    f = journey()
    state = reply(started(f), "Yes", T0 + DAY / 2, f)
    state, _ = run(state, f[0], f[1], T0 + DAY / 2)  # -> decision
    state = reply(state, "What does it include?", T0 + DAY, f)
    state, effects = run(state, f[0], f[1], T0 + DAY)  # -> consideration (back)
    assert state.current_stage == "consideration"
    assert effects.outbound[0].message_id == message_id_for("c1", "consideration", 0)
    state = reply(state, "Yes, let's go", T0 + 2 * DAY, f)
    state, _ = run(state, f[0], f[1], T0 + 2 * DAY)  # -> decision again
    assert state.current_stage == "decision"
    second = [m for m in state.message_history if m.metadata.get("stage") == "decision"]
    assert [m.message_id for m in second if m.direction == Direction.OUTBOUND] == [
        message_id_for("c1", "decision", 0),
        message_id_for("c1", "decision", 0, visit=1),
    ]
    # The earlier "Yes" in decision's first visit does not complete its second visit.
    assert state.status == ConversationStatus.ACTIVE
    assert evaluate(state, f[0], f[1], T0 + 2 * DAY).action == Action.WAIT


def test_on_timeout_goes_to_its_stage_when_no_reply_came() -> None:
    f = journey()
    state = started(f)
    state, effects = run(state, f[0], f[1], T0 + DAY)  # follow-up
    assert len(effects.outbound) == 1
    assert evaluate(state, f[0], f[1], T0 + 4 * DAY).next_action_at == T0 + 5 * DAY
    state, effects = run(state, f[0], f[1], T0 + 5 * DAY)
    assert state.current_stage == "reminder"
    assert [t.to_stage for t in effects.transitions] == ["reminder"]
    assert effects.delta.funnel == {("awareness", "reminder"): 1}
    state, effects = run(state, f[0], f[1], T0 + 7 * DAY)  # reminder's drip ends: exit
    assert state.status == ConversationStatus.FAILED
    assert effects.delta.funnel == {("reminder", "exit:failed"): 1}


def test_out_of_office_pauses_follow_ups_until_the_return_date_and_is_no_reply() -> None:
    f = journey()
    state = reply(started(f), "Out of the office until Monday", T0 + DAY / 4, f)
    assert state.message_history[-1].metadata["intent"] == "out_of_office"
    monday_nine_ny = datetime(2026, 11, 30, 14, 0, tzinfo=UTC)
    assert state.message_history[-1].metadata["resume_at"] == monday_nine_ny
    state, effects = run(state, f[0], f[1], T0 + DAY / 4)
    # No advance (an auto-reply is not interest) and no follow-up before Monday.
    assert state.current_stage == "awareness" and effects.outbound == []
    assert state.next_action_at == monday_nine_ny
    state, effects = run(state, f[0], f[1], T0 + 2 * DAY)  # follow-up was due: still paused
    assert effects.outbound == []
    state, effects = run(state, f[0], f[1], monday_nine_ny)
    assert len(effects.outbound) == 1  # the follow-up goes out on the return day


def test_a_real_reply_after_an_auto_reply_ends_the_pause() -> None:
    f = journey()
    state = reply(started(f), "Automatic reply: on vacation", T0 + DAY / 4, f)
    state, _ = run(state, f[0], f[1], T0 + DAY / 4)
    state = reply(state, "Actually yes, interested", T0 + DAY / 2, f)
    state, _ = run(state, f[0], f[1], T0 + DAY / 2)
    assert state.current_stage == "decision"


def test_out_of_office_without_a_date_pauses_for_the_configured_delay() -> None:
    f = journey(out_of_office={"pause": "2d"})
    state = reply(started(f), "I am out of office", T0, f)
    state, _ = run(state, f[0], f[1], T0)
    assert state.next_action_at == T0 + 2 * DAY


def test_recorded_intents_are_not_classified_again(monkeypatch: pytest.MonkeyPatch) -> None:
    f = journey()
    state = started(f)
    for hour in range(1, 6):
        state = reply(state, "hmm, thinking", T0 + timedelta(hours=hour), f)
    calls: list[str] = []
    original = ReplyClassifier.classify

    def counting(self: ReplyClassifier, text: str) -> str:
        calls.append(text)
        return original(self, text)

    monkeypatch.setattr(ReplyClassifier, "classify", counting)
    for day in range(1, 4):
        run(state, f[0], f[1], T0 + day * DAY)
    assert calls == []


# ---------------------------------------------------------------- validation


def _file(stages: list[dict[str, Any]]) -> str:
    import json

    return json.dumps({"template_id": "v", "campaign_types": {"sales": {"stages": stages}}})


@pytest.mark.parametrize(
    ("stages", "expected"),
    [
        (
            [{"name": "a", "messages": [{"text": "x"}], "on_reply": {"positive": "nowhere"}}],
            "stage 'a' field on_reply.positive: unknown target stage 'nowhere'",
        ),
        (
            [
                {
                    "name": "a",
                    "messages": [{"text": "x"}],
                    "on_timeout": {"after": "1d", "goto": "zz"},
                },
            ],
            "stage 'a' field on_timeout: unknown target stage 'zz'",
        ),
        (
            [
                {"name": "a", "messages": [{"text": "x"}], "next": {"exit": "completed"}},
                {"name": "b", "messages": [{"text": "y"}]},
            ],
            "stage 'b' field name: unreachable from the first stage 'a'",
        ),
        (
            [
                {"name": "a", "messages": [{"text": "x"}]},
                {"name": "b", "next": "c"},
                {
                    "name": "c",
                    "on_timeout": {"after": 0, "goto": "b"},
                    "advance_when": {"min_time_in_stage": "1d"},
                },
            ],
            "field next: loop without a wait (b -> c -> b)",
        ),
        (
            [{"name": "a", "messages": [{"text": "x"}], "on_reply": {"interested": "a"}}],
            "stage 'a' field on_reply.interested: unknown intent 'interested'",
        ),
        (
            [{"name": "a", "messages": [{"text": "x"}], "on_reply": {"positive": {"exit": "won"}}}],
            "on_reply.positive",
        ),
    ],
)
def test_invalid_journeys_name_file_stage_and_field(
    stages: list[dict[str, Any]], expected: str
) -> None:
    with pytest.raises(InvalidTemplateError) as caught:
        parse_template(_file(stages), "/etc/templates/v.json")
    message = str(caught.value)
    assert "/etc/templates/v.json" in message
    assert expected in message


def test_a_loop_with_a_wait_is_valid() -> None:
    parse_template(
        _file(
            [
                {"name": "a", "messages": [{"text": "x", "wait": "1d"}], "next": "b"},
                {
                    "name": "b",
                    "messages": [{"text": "y"}],
                    "on_timeout": {"after": "2d", "goto": "a"},
                },
            ]
        ),
        "ok.json",
    )


# ---------------------------------------------------------------- the packaged journeys


def test_packaged_sales_routes_replies_by_meaning() -> None:
    from campaign_worker.adapters.template_files import ConfigManager

    template = ConfigManager().get_template("default")
    sales = template.for_type("sales")
    assert sales is not None
    f = (template, sales)

    def after(text: str) -> ConversationState:
        state = started_in(f, "awareness")
        state = reply(state, text, T0 + DAY / 2, f)
        return run(state, template, sales, T0 + DAY / 2)[0]

    # The examples: none of these is interest any more.
    assert after("no thanks").status == ConversationStatus.FAILED
    assert after("STOP please").status == ConversationStatus.OPTED_OUT
    assert after("please unsubscribe me").status == ConversationStatus.OPTED_OUT
    ooo = after("I am out of the office until Monday")
    assert (ooo.current_stage, ooo.status) == ("awareness", ConversationStatus.ACTIVE)
    assert after("What does it cost?").current_stage == "decision"  # skip ahead
    assert after("Yes, tell me more").current_stage == "consideration"


def test_packaged_renewal_times_out_to_its_reminder_and_exits() -> None:
    from campaign_worker.adapters.template_files import ConfigManager

    template = ConfigManager().get_template("default")
    renewal = template.for_type("renewal")
    assert renewal is not None
    f = (template, renewal)
    state = started_in(f, "notice")
    state, effects = run(state, template, renewal, T0 + 3 * DAY)
    assert state.current_stage == "reminder" and len(effects.outbound) == 1
    yes = reply(state, "yes, renew it", T0 + 4 * DAY, f)
    done, effects = run(yes, template, renewal, T0 + 4 * DAY)
    assert done.status == ConversationStatus.COMPLETED
    assert effects.delta.funnel == {("reminder", "confirm"): 1, ("confirm", "exit:completed"): 1}
    silent, effects = run(state, template, renewal, T0 + 6 * DAY)
    assert silent.status == ConversationStatus.FAILED
    assert effects.delta.funnel == {("reminder", "exit:failed"): 1}


def started_in(f: tuple[Template, CampaignTypeTemplate], stage: str) -> ConversationState:
    state = ConversationState(
        id="c2",
        user_id="u2",
        campaign_id="k2",
        campaign_type="x",
        current_stage=stage,
        stages=[StageEntry(name=stage, entered_at=T0)],
        context=ConversationContext(
            template_id=f[0].template_id,
            available_stages=f[1].stage_names,
            attributes={"first_name": "Ann"},
            timezone="Europe/Berlin",
        ),
        created_at=T0,
        last_active=T0,
        next_action_at=T0,
    )
    return run(state, f[0], f[1], T0)[0]


def test_an_unrouted_reply_does_not_stop_the_timeout() -> None:
    f = journey()
    state = run(started(f), f[0], f[1], T0 + DAY)[0]  # follow-up sent
    # consideration routes only positive replies and times out after 3 days.
    state = reply(state, "How does it work?", T0 + DAY, f)
    state = run(state, f[0], f[1], T0 + DAY)[0]
    assert state.current_stage == "consideration"
    state = reply(state, "Thursday works for me", T0 + 2 * DAY, f)
    state, effects = run(state, f[0], f[1], T0 + 2 * DAY)
    assert state.current_stage == "consideration" and not effects.transitions
    state, effects = run(state, f[0], f[1], T0 + 4 * DAY)
    assert state.current_stage == "awareness"  # the timeout's target: back to the start
    assert effects.decisions[0].reason == "no reply the stage routes within 3 days, 0:00:00"
