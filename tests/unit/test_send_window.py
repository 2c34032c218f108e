"""Send windows: messages go out only in the recipient's local hours; replies any time."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from campaign_worker.domain.effects import Action
from campaign_worker.domain.progression import evaluate, run
from campaign_worker.domain.rules import next_send_time
from campaign_worker.domain.templates import SendWindow, Template
from tests.unit.test_progression import flow, msgs, new_state, reply

WINDOW = {"start": "09:00", "end": "20:00"}


def _at_local(state: Any, zone: str) -> Any:
    return state.model_copy(update={"context": state.context.model_copy(update={"timezone": zone})})


@pytest.mark.parametrize(
    ("now", "zone", "opens"),
    [
        # 09:00 UTC is 10:00 in Berlin (winter): inside 09-20, send now.
        (datetime(2026, 1, 5, 9, 0, tzinfo=UTC), "Europe/Berlin", None),
        # 09:00 UTC is 04:00 in New York: wait for 09:00 local = 14:00 UTC.
        (
            datetime(2026, 1, 5, 9, 0, tzinfo=UTC),
            "America/New_York",
            datetime(2026, 1, 5, 14, 0, tzinfo=UTC),
        ),
        # 21:30 UTC is 22:30 in Berlin: closed until 09:00 tomorrow = 08:00 UTC.
        (
            datetime(2026, 1, 5, 21, 30, tzinfo=UTC),
            "Europe/Berlin",
            datetime(2026, 1, 6, 8, 0, tzinfo=UTC),
        ),
        # Summer time moves the opening by an hour: 09:00 CEST = 07:00 UTC.
        (
            datetime(2026, 7, 5, 22, 0, tzinfo=UTC),
            "Europe/Berlin",
            datetime(2026, 7, 6, 7, 0, tzinfo=UTC),
        ),
        # The end is exclusive.
        (datetime(2026, 1, 5, 20, 0, tzinfo=UTC), "UTC", datetime(2026, 1, 6, 9, 0, tzinfo=UTC)),
    ],
)
def test_next_send_time_in_the_recipients_timezone(
    now: datetime, zone: str, opens: datetime | None
) -> None:
    window = SendWindow.model_validate(WINDOW)
    assert next_send_time(now, window, zone) == (opens or now)


def test_window_across_midnight() -> None:
    night = SendWindow(start=time(22), end=time(6))
    assert next_send_time(datetime(2026, 1, 5, 23, tzinfo=UTC), night, "UTC").hour == 23
    assert next_send_time(datetime(2026, 1, 5, 3, tzinfo=UTC), night, "UTC").hour == 3
    assert next_send_time(datetime(2026, 1, 5, 12, tzinfo=UTC), night, "UTC") == datetime(
        2026, 1, 5, 22, tzinfo=UTC
    )


def test_no_window_means_any_time() -> None:
    now = datetime(2026, 1, 5, 3, tzinfo=UTC)
    assert next_send_time(now, None, "Asia/Tokyo") == now


def test_a_due_message_waits_for_the_window_then_goes_out() -> None:
    f = flow(
        {"name": "a", "messages": msgs("1d"), "advance_when": {"reply_received": True}},
        send_window=WINDOW,
    )
    state = _at_local(new_state(f), "America/New_York")  # T0 09:00 UTC = 04:00 local
    decision = evaluate(state, *f, datetime(2026, 1, 5, 9, 0, tzinfo=UTC))
    assert decision.action == Action.WAIT
    assert decision.next_action_at == datetime(2026, 1, 5, 14, 0, tzinfo=UTC)
    sent, effects = run(state, *f, datetime(2026, 1, 5, 14, 0, tzinfo=UTC))
    assert [e.step for e in effects.outbound] == [0]
    assert sent.stage_step == 1


def test_replies_are_handled_outside_the_window() -> None:
    f = flow(
        {"name": "a", "messages": msgs("1d"), "advance_when": {"reply_received": True}},
        {"name": "b", "messages": msgs("1d")},
        send_window=WINDOW,
    )
    night = datetime(2026, 1, 5, 23, 0, tzinfo=UTC)
    state = reply(new_state(f), "yes", night)
    advanced, effects = run(state, *f, night)
    # The stage advances at once; the next stage's first message waits for 09:00.
    assert advanced.current_stage == "b"
    assert effects.outbound == []
    assert advanced.next_action_at == datetime(2026, 1, 6, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "bad", [{"start": "09:00", "end": "09:00"}, {"start": "25:00", "end": "20:00"}]
)
def test_invalid_windows_are_refused(bad: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        Template.model_validate(
            {
                "template_id": "t",
                "send_window": bad,
                "campaign_types": {"x": {"stages": [{"name": "a"}]}},
            }
        )


def test_the_window_does_not_move_a_follow_up_earlier() -> None:
    f = flow(
        {"name": "a", "messages": msgs("1d", "1d"), "advance_when": {"reply_received": True}},
        send_window=WINDOW,
    )
    first, _ = run(new_state(f), *f, datetime(2026, 1, 5, 10, tzinfo=UTC))
    # The follow-up is due a day later; at that time the window is open: no change.
    assert first.next_action_at == datetime(2026, 1, 6, 10, tzinfo=UTC)
    assert (
        evaluate(first, *f, datetime(2026, 1, 6, 10, tzinfo=UTC) - timedelta(minutes=1)).action
        == Action.WAIT
    )
