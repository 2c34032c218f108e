"""Global opt-out (the suppression list) and the cross-campaign frequency cap, on both
tiers (the in-memory fakes and the wire server)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.domain.documents import conversation_id_for
from campaign_worker.domain.errors import InvalidInputError, NotFoundError
from campaign_worker.domain.suppressions import Suppression, address_key, parse_caps
from campaign_worker.service.campaign_manager import CampaignManager
from tests import fakes
from tests.conftest import START, ManagerFactory, sample_campaign

any_db = fakes.any_db  # fixture: each test on the in-memory fakes, and over the wire
fake_db = fakes.fake_db  # fixture: the in-memory database

DAY = timedelta(days=1)
Doc = dict[str, Any]


def start(manager: CampaignManager, campaign_id: str, users: list[str]) -> None:
    campaign = sample_campaign(1, campaign_id)
    campaign["recipients"] = [
        {"user_id": user, "attributes": {"first_name": user, "email": f"{user}@Example.com"}}
        for user in users
    ]
    manager.create_campaign(campaign)
    manager.initialize_campaign_conversations(campaign_id)


def state(manager: CampaignManager, campaign_id: str, user: str) -> Doc:
    return manager.get_conversation(conversation_id_for(campaign_id, user))


def sent_to(manager: CampaignManager, user: str) -> list[Doc]:
    db = manager.conversation_state_repository._db  # type: ignore[attr-defined]
    return list(db["outbox"].find({"user_id": user}))


def test_an_opt_out_phrase_anywhere_suppresses_the_person_for_every_campaign(
    manager_on_both: CampaignManager,
) -> None:
    manager = manager_on_both
    start(manager, "a", ["ann", "bob"])
    manager.process_due_conversations("a")
    result = manager.record_inbound_message("a", "ann", "m1", "Please unsubscribe me, thanks")
    assert result["status"] == "opted_out"
    listed = {entry["_id"] for entry in manager.list_suppressions()}
    assert listed == {"user:ann", address_key("email", "ann@example.com")}
    # A second campaign: ann is created already opted out and never messaged.
    start(manager, "b", ["ann", "bob"])
    manager.process_due_conversations("b")
    assert state(manager, "b", "ann")["status"] == "opted_out"
    assert state(manager, "b", "ann")["status_reason"] == "suppressed (opt_out)"
    assert [m["campaign_id"] for m in sent_to(manager, "ann")] == ["a"]
    assert [m["campaign_id"] for m in sent_to(manager, "bob")] == ["a", "b"]
    metrics = manager.get_campaign_metrics("b")
    assert (metrics["opted_out_conversations"], metrics["active_conversations"]) == (1, 1)
    assert metrics["funnel"] == {"awareness": {"exit:opted_out": 1}}


def test_a_suppression_added_later_stops_the_next_send_of_a_running_campaign(
    manager_on_both: CampaignManager, clock: ManualClock
) -> None:
    manager = manager_on_both
    start(manager, "a", ["ann", "bob"])
    manager.process_due_conversations("a")
    # The delivering service records a bounce for ann's address (same collection).
    assert manager.send_guard.suppressions is not None
    manager.send_guard.suppressions.add_many(
        [
            Suppression(
                address_key("email", " ANN@example.com"),
                "hard bounce",
                "bounce",
                clock.now(),
                channel="email",
                address="ann@example.com",
            )
        ]
    )
    clock.advance(DAY)
    result = manager.process_due_conversations("a")
    assert result.sent == 1  # bob's follow-up only
    assert state(manager, "a", "ann")["status"] == "opted_out"
    assert state(manager, "a", "ann")["status_reason"] == "suppressed (bounce)"
    assert len(sent_to(manager, "ann")) == 1
    # A reply from a suppressed person is recorded and sends nothing either.
    start(manager, "c", ["bob"])
    manager.add_suppression(user_id="bob", reason="asked by phone")
    reply = manager.record_inbound_message("c", "bob", "m2", "yes")
    assert reply["status"] == "opted_out"
    assert [m["campaign_id"] for m in sent_to(manager, "bob")] == ["a", "a"]


def test_operators_list_and_lift_suppressions(manager_on_both: CampaignManager) -> None:
    manager = manager_on_both
    manager.add_suppression(user_id="ann")
    manager.add_suppression(channel="sms", address="+4411")
    assert [e["_id"] for e in manager.list_suppressions(channel="sms")] == ["address:sms:+4411"]
    assert manager.lift_suppression(user_id="ann")["_id"] == "user:ann"
    with pytest.raises(NotFoundError):
        manager.lift_suppression(user_id="ann")
    with pytest.raises(InvalidInputError):
        manager.add_suppression(user_id="ann", channel="sms")
    # Lifted: a new campaign messages ann again.
    start(manager, "a", ["ann"])
    assert manager.process_due_conversations("a").sent == 1


def test_frequency_cap_defers_the_send_of_a_second_campaign_and_counts_it(
    db: Any, make_manager: ManagerFactory, clock: ManualClock
) -> None:
    manager = make_manager(db, frequency_caps="*=1/1d")
    start(manager, "a", ["ann"])
    start(manager, "b", ["ann"])
    assert manager.process_due_conversations("a").sent == 1
    assert manager.process_due_conversations("b").sent == 0  # deferred, not dropped
    held = state(manager, "b", "ann")
    assert held["status"] == "active"
    assert held["next_action_at"] == START + DAY
    assert manager.get_campaign_metrics("b")["message_metrics"]["deferred"] == 1
    clock.advance(DAY)
    assert manager.process_due_conversations("b").sent == 1
    # Campaign a's follow-up was due at the same moment: the cap now holds it instead.
    assert manager.process_due_conversations("a").sent == 0
    assert [m["campaign_id"] for m in sent_to(manager, "ann")] == ["a", "b"]


def test_a_reply_that_would_send_over_the_cap_is_recorded_and_the_send_waits(
    db: Any, make_manager: ManagerFactory, clock: ManualClock
) -> None:
    manager = make_manager(db, frequency_caps="default=1/1d")
    start(manager, "a", ["ann"])
    manager.process_due_conversations("a")
    clock.advance(timedelta(hours=1))
    result = manager.record_inbound_message("a", "ann", "m1", "Yes please")
    assert result["current_stage"] == "consideration"  # advanced...
    conversation = state(manager, "a", "ann")
    assert conversation["next_action_at"] == START + DAY  # ...its first message waits
    assert len(sent_to(manager, "ann")) == 1
    clock.set(START + DAY)
    assert manager.process_due_conversations("a").sent == 1


def test_frequency_cap_settings_are_parsed() -> None:
    caps = parse_caps("*=3/1d, sms=1/12h")
    assert (caps["*"].messages, caps["*"].window) == (3, DAY)
    assert caps["sms"].window == timedelta(hours=12)
    for bad in ("sms=0/1d", "sms=1/x", "=1/1d", "sms:1/1d"):
        with pytest.raises(ValueError, match="frequency cap"):
            parse_caps(bad)


class _Recorder:
    """Records the funnel counters a manager reports (Prometheus in production)."""

    def __init__(self) -> None:
        self.transitions: list[tuple[str, str]] = []
        self.deferred: list[str] = []

    def stage_transition(self, campaign_type: str, from_stage: str, to_stage: str) -> None:
        self.transitions.append((from_stage, to_stage))

    def messages_deferred(self, channel: str, count: int) -> None:
        self.deferred += [channel] * count

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def test_prometheus_counts_transitions_exits_and_deferrals(
    fake_db: Any, settings: Any, clock: ManualClock
) -> None:
    from campaign_worker.bootstrap import build_manager, ensure_indexes

    recorder = _Recorder()
    manager = build_manager(
        fake_db,
        settings.model_copy(update={"frequency_caps": "*=1/1d"}),
        clock=clock,
        recorder=recorder,
    )
    ensure_indexes(manager)
    start(manager, "a", ["ann", "bob"])
    start(manager, "b", ["ann"])
    manager.process_due_conversations("a")
    manager.process_due_conversations("b")  # ann is capped
    manager.record_inbound_message("a", "ann", "m1", "Yes please")
    manager.record_inbound_message("a", "bob", "m2", "no thanks")
    assert recorder.transitions == [
        ("awareness", "consideration"),
        ("awareness", "exit:failed"),
    ]
    assert recorder.deferred == ["default", "default"]  # b's first message, a's next
