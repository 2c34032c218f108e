"""The pure rules of always-on campaigns: the template language (audience, entry,
re_entry, on_event, event rules, goal), entry and re-entry, events in a stage visit, goal
windows, and the lift arithmetic against scipy's own results."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from scipy.stats import fisher_exact
from scipy.stats.contingency import relative_risk

from campaign_worker.adapters.template_files import parse_template
from campaign_worker.domain import goals
from campaign_worker.domain.documents import (
    ConversationContext,
    ConversationState,
    StageEntry,
    conversation_id_for,
)
from campaign_worker.domain.effects import Action, MetricsDelta
from campaign_worker.domain.enrollment import (
    DEFAULT_EVENT_WINDOW,
    EventFact,
    PriorEntry,
    entry_attributes,
    event_window,
    next_enrollment,
    record_event,
)
from campaign_worker.domain.errors import InvalidTemplateError
from campaign_worker.domain.progression import evaluate, run
from campaign_worker.domain.templates import ReEntry, Template
from campaign_worker.service.lift import TOO_SMALL, goal_lifts, lift
from tests.always_on_support import ONBOARDING

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)
TEMPLATE: Template = parse_template(ONBOARDING, "always_on.yaml")
TYPE = TEMPLATE.campaign_types["onboarding"]


def state(**fields: Any) -> ConversationState:
    return ConversationState(
        id=conversation_id_for("c", "u1"),
        user_id="u1",
        campaign_id="c",
        campaign_type="onboarding",
        current_stage="welcome",
        stages=[StageEntry(name="welcome", entered_at=T0)],
        context=ConversationContext(template_id="always_on", available_stages=TYPE.stage_names),
        created_at=T0,
        last_active=T0,
        next_action_at=T0,
        **fields,
    )


def fact(event: str, at: datetime, event_id: str | None = None) -> EventFact:
    return EventFact(event_id or f"{event}-{at:%d%H%M}", "u1", event, at, at, {})


def with_event(s: ConversationState, event: str, at: datetime) -> ConversationState:
    recorded = record_event(s, fact(event, at), TYPE)
    assert recorded is not None
    return recorded


# ------------------------------------------------------------------ template language


def test_the_template_declares_an_open_audience_entry_re_entry_and_goal() -> None:
    assert TYPE.audience == "open"
    assert TYPE.entry is not None and TYPE.entry.event == "trial_started"
    assert TYPE.re_entry == ReEntry(after=timedelta(days=30))
    assert TYPE.goal is not None and TYPE.goal.within == timedelta(days=14)
    assert TYPE.event_names == {"meeting_booked", "purchased"}
    assert TEMPLATE.campaign_types["fixed"].audience in (None, "fixed")  # None: fixed


def onboarding(**changes: Any) -> str:
    """The test template with fields of the onboarding type (``key``) or of its first
    stage (``stage.key``) replaced (None: removed)."""
    data = yaml.safe_load(ONBOARDING)
    kind = data["campaign_types"]["onboarding"]
    for key, value in changes.items():
        where, name = (kind["stages"][0], key[6:]) if key.startswith("stage_") else (kind, key)
        if value is None:
            where.pop(name, None)
        else:
            where[name] = value
    return yaml.safe_dump(data)


def test_the_test_template_builder_keeps_it_valid() -> None:
    assert parse_template(onboarding(), "ok.yaml") == TEMPLATE


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"stage_on_event": {"meeting_booked": "nowhere"}},
            "field on_event.meeting_booked: unknown target stage 'nowhere'",
        ),
        ({"stage_on_event": {"bad name!": "nudge"}}, "on_event.bad name!"),
        ({"stage_advance_when": {"event": []}}, "advance_when.event"),
        ({"goal": {"event": "purchased"}}, "goal.within"),
        ({"entry": {"attributes": ["plan"]}}, "entry.event"),
        ({"re_entry": {"after": "soon"}}, "re_entry.after"),
        ({"audience": "maybe"}, "audience"),
    ],
)
def test_validation_names_what_is_wrong(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidTemplateError) as caught:
        parse_template(onboarding(**changes), "bad.yaml")
    assert message in str(caught.value)


# ------------------------------------------------------------------ events in a stage


def test_an_on_event_exit_completes_at_once_and_stops_the_follow_ups() -> None:
    first, effects = run(state(), TEMPLATE, TYPE, T0)
    assert [e.step for e in effects.outbound] == [0]
    booked = with_event(first, "meeting_booked", T0 + timedelta(hours=3))
    done, effects = run(booked, TEMPLATE, TYPE, T0 + timedelta(hours=3))
    assert done.status == "completed" and done.next_action_at is None
    assert effects.outbound == [] and done.status_reason is not None
    assert "meeting_booked" in done.status_reason
    later, effects = run(done, TEMPLATE, TYPE, T0 + 3 * DAY)
    assert effects.outbound == [] and later is done


def test_on_timeout_is_the_branch_when_the_event_does_not_come() -> None:
    s, _ = run(state(), TEMPLATE, TYPE, T0)
    s, _ = run(s, TEMPLATE, TYPE, T0 + DAY)  # the follow-up
    decision = evaluate(s, TEMPLATE, TYPE, T0 + 5 * DAY)
    assert (decision.action, decision.next_stage) == (Action.ADVANCE, "nudge")


def test_an_event_rule_advances_only_on_an_event_of_this_stage_visit() -> None:
    s, _ = run(state(), TEMPLATE, TYPE, T0)
    s = with_event(s, "purchased", T0 + DAY)  # in welcome: welcome does not wait for it
    s, _ = run(s, TEMPLATE, TYPE, T0 + 5 * DAY)
    assert s.current_stage == "nudge" and s.status == "active"
    later = evaluate(s, TEMPLATE, TYPE, T0 + 5 * DAY + timedelta(hours=1))
    assert later.action == Action.WAIT  # the earlier purchase belongs to welcome's visit
    bought = with_event(s, "purchased", T0 + 6 * DAY)
    done, _ = run(bought, TEMPLATE, TYPE, T0 + 6 * DAY)
    assert done.status == "completed"


def test_an_event_is_recorded_once_and_only_when_the_stages_react_to_it() -> None:
    s = with_event(state(), "meeting_booked", T0)
    assert record_event(s, fact("meeting_booked", T0), TYPE) is None  # same id
    assert record_event(state(), fact("page_view", T0), TYPE) is None
    assert [(e.event, e.stage, e.entry) for e in s.events] == [("meeting_booked", "welcome", 0)]


def test_the_event_window_is_the_first_stage_s_own() -> None:
    assert event_window(TYPE) == timedelta(days=5)
    assert event_window(TEMPLATE.campaign_types["fixed"]) == DEFAULT_EVENT_WINDOW


# ------------------------------------------------------------------ entry and re-entry


def prior(n: int, active: bool, at: datetime, by: str | None = "enroll") -> PriorEntry:
    return PriorEntry("u1", n, active, at, by)


def test_a_person_enters_once_without_re_entry() -> None:
    assert next_enrollment([], None, T0, "enroll") == 0
    assert next_enrollment([prior(0, False, T0)], None, T0 + 90 * DAY, "enroll") is None


def test_re_entry_needs_the_last_entry_finished_and_the_time_passed() -> None:
    again = ReEntry(after=30 * DAY)
    assert next_enrollment([prior(0, True, T0)], again, T0 + 90 * DAY, "enroll") is None
    assert next_enrollment([prior(0, False, T0)], again, T0 + 29 * DAY, "enroll") is None
    assert next_enrollment([prior(0, False, T0)], again, T0 + 30 * DAY, "enroll") == 1
    two = [prior(0, False, T0), prior(1, False, T0 + 31 * DAY)]
    assert next_enrollment(two, again, T0 + 62 * DAY, "enroll") == 2


def test_one_key_or_event_never_enrolls_a_person_twice() -> None:
    again = ReEntry(after=30 * DAY)
    entered = [prior(0, False, T0, "event:e-1")]
    assert next_enrollment(entered, again, T0 + 99 * DAY, "event:e-1") is None
    assert next_enrollment(entered, again, T0 + 99 * DAY, "event:e-2") == 1


def test_re_entries_have_their_own_ids() -> None:
    first, second = conversation_id_for("c", "u1"), conversation_id_for("c", "u1", 1)
    assert first != second and conversation_id_for("c", "u1", 1) == second
    assert conversation_id_for("c", "u1", None) == first == conversation_id_for("c", "u1", 0)


def test_entry_attributes_are_the_named_properties() -> None:
    assert TYPE.entry is not None
    got = entry_attributes(TYPE.entry, {"plan": "pro", "first_name": "Ada", "card": "4242"})
    assert got == {"plan": "pro", "first_name": "Ada"}


# ------------------------------------------------------------------ goals


def test_a_goal_converts_within_its_window_once() -> None:
    s = state()
    assert goals.conversion_for(s, TYPE.goal, "purchased", "p1", T0 - DAY) is None
    assert goals.conversion_for(s, TYPE.goal, "purchased", "p1", T0 + 15 * DAY) is None
    assert goals.conversion_for(s, TYPE.goal, "meeting_booked", "m1", T0 + DAY) is None
    conversion = goals.conversion_for(s, TYPE.goal, "purchased", "p1", T0 + 2 * DAY)
    assert conversion is not None and conversion.seconds == 2 * 86400
    converted = s.model_copy(update={"conversion": conversion})
    assert goals.conversion_for(converted, TYPE.goal, "purchased", "p2", T0 + 3 * DAY) is None


def test_a_conversion_counts_overall_by_stage_variant_and_holdout() -> None:
    s, _ = run(state(holdout=True), TEMPLATE, TYPE, T0)
    conversion = goals.conversion_for(s, TYPE.goal, "purchased", "p1", T0 + DAY)
    assert conversion is not None and conversion.holdout
    delta = MetricsDelta()
    goals.count_conversion(conversion, delta)
    assert dict(delta.goals) == {
        "purchased.converted": 1,
        "purchased.seconds_to_convert": 86400.0,
        "purchased.stages.welcome.converted": 1,
        "purchased.holdout.converted": 1,
        "purchased.holdout.seconds_to_convert": 86400.0,
    }
    assert goals.recount([s.model_copy(update={"conversion": conversion})]) == {
        f"goals.{path}": value for path, value in delta.goals.items()
    }


# ------------------------------------------------------------------ lift


@pytest.mark.parametrize(
    ("group", "baseline"), [((60, 400), (30, 400)), ((45, 300), (40, 310)), ((12, 90), (3, 95))]
)
def test_lift_is_scipy_s_relative_risk_and_fisher_test(
    group: tuple[int, int], baseline: tuple[int, int]
) -> None:
    found = lift(("treatment", *group), ("holdout", *baseline))
    reference = relative_risk(group[0], group[1], baseline[0], baseline[1])
    interval = reference.confidence_interval(confidence_level=0.95)
    assert found.lift == pytest.approx(reference.relative_risk - 1)
    assert found.lift == pytest.approx((group[0] / group[1]) / (baseline[0] / baseline[1]) - 1)
    assert found.ci95 == pytest.approx((interval.low - 1, interval.high - 1))
    assert found.ci95 is not None and found.lift is not None
    assert found.ci95[0] < found.lift < found.ci95[1]
    table = [[group[0], group[1] - group[0]], [baseline[0], baseline[1] - baseline[0]]]
    assert found.p_value == pytest.approx(fisher_exact(table).pvalue)


def test_significance_and_too_small_samples_are_said_plainly() -> None:
    assert lift(("t", 60, 400), ("h", 30, 400)).verdict == "significant at 95%"
    assert lift(("t", 45, 300), ("h", 40, 310)).verdict == "no significant difference at 95%"
    small = lift(("t", 3, 20), ("h", 1, 10))
    assert small.verdict == TOO_SMALL and small.lift == pytest.approx(0.5)
    none = lift(("t", 5, 100), ("h", 0, 100))
    assert none.lift is None and none.ci95 is None and none.verdict == TOO_SMALL


def test_goal_lifts_compare_treatment_with_holdout_and_variants_with_the_first() -> None:
    report = {
        "holdout": {"converted": 5, "conversations": 50},
        "treatment": {"converted": 40, "conversations": 200},
        "variants": {
            "nudge": {
                "A": {"converted": 10, "conversations": 100},
                "B": {"converted": 30, "conversations": 100},
            }
        },
    }
    found = [(x.group, x.baseline, x.converted) for x in goal_lifts(report)]
    assert found == [("treatment", "holdout", 40), ("nudge:B", "nudge:A", 30)]
