"""Always-on campaigns through the manager, on the in-memory fakes: enrollment (counts,
re-entry, idempotency), entry events, events applied to conversations (on_event, pending
events of a new conversation), goals counted once (holdout too), the poller, the metrics
and their reconcile, the checker."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.adapters.memory_store import MemoryDatabase
from campaign_worker.domain.documents import ConversationState, conversation_id_for
from campaign_worker.domain.errors import InvalidStateTransitionError
from campaign_worker.domain.splits import in_holdout
from campaign_worker.service.campaign_manager import CampaignManager
from campaign_worker.service.event_recording import InboundEvent
from tests.always_on_support import open_campaign, people, write_template
from tests.conftest import START, ManagerFactory
from tests.fakes import fake_db

__all__ = ["fake_db"]
DAY = timedelta(days=1)
CAMPAIGN = "always"


@pytest.fixture
def manager(tmp_path: Path, fake_db: MemoryDatabase, make_manager: ManagerFactory) -> Any:
    return make_manager(fake_db, campaign_templates_dir=write_template(tmp_path))


def started(manager: CampaignManager, **extra: Any) -> str:
    campaign_id = manager.create_campaign(open_campaign(CAMPAIGN, **extra))
    manager.initialize_campaign_step(campaign_id)
    assert manager.get_campaign(campaign_id)["status"] == "running"
    return campaign_id


def states(db: MemoryDatabase, **query: Any) -> list[ConversationState]:
    return [ConversationState.model_validate(d) for d in db["conversation_states"].find(query)]


def one(db: MemoryDatabase, user: str, enrollment: int | None = None) -> ConversationState:
    found = [s for s in states(db, user_id=user) if s.enrollment == enrollment]
    assert len(found) == 1
    return found[0]


def assert_checked(manager: CampaignManager, campaign_id: str = CAMPAIGN) -> dict[str, int]:
    manager.reconcile_campaign_metrics(campaign_id)
    report = manager.check_invariants(campaign_id)
    assert report.ok, [(v.invariant, v.detail) for v in report.violations]
    return dict(report.figures)


def test_an_open_campaign_starts_empty_and_the_poller_never_completes_it(
    manager: CampaignManager, clock: ManualClock
) -> None:
    campaign_id = started(manager)
    assert manager.get_campaign(campaign_id)["audience"] == "open"
    assert manager.poll_campaigns().completed == []
    assert manager.get_campaign(campaign_id)["status"] == "running"


def test_an_open_campaign_completes_past_its_end_once_nothing_is_active(
    manager: CampaignManager, clock: ManualClock
) -> None:
    campaign_id = started(manager, ends_at=START + DAY)
    manager.enroll_recipients(campaign_id, people(2))
    manager.record_events([InboundEvent(f"u{i:04d}", "meeting_booked", f"m{i}") for i in range(2)])
    assert manager.poll_campaigns().completed == []  # before its end
    clock.advance(2 * DAY)
    with pytest.raises(InvalidStateTransitionError, match="ended"):
        manager.enroll_recipients(campaign_id, people(1, start=5))
    assert manager.poll_campaigns().completed == [campaign_id]


def test_enrollment_counts_enrolled_already_suppressed_and_invalid(
    manager: CampaignManager, fake_db: MemoryDatabase
) -> None:
    campaign_id = started(manager)
    manager.add_suppression(user_id="u0003", reason="asked")
    rows: list[Any] = [*people(5), {"user_id": "u0001"}, {"attributes": {}}, "nope"]
    result = manager.enroll_recipients(campaign_id, rows).as_dict()
    assert {k: result[k] for k in ("enrolled", "already", "suppressed", "invalid")} == {
        "enrolled": 4,
        "already": 1,
        "suppressed": 1,
        "invalid": 2,
    }
    assert [sample["index"] for sample in result["invalid_samples"]] == [6, 7]
    assert "user_id" in result["invalid_samples"][0]["error"]
    again = manager.enroll_recipients(campaign_id, people(6)).as_dict()
    assert (again["enrolled"], again["already"], again["suppressed"]) == (1, 4, 1)
    assert sorted(s.user_id for s in states(fake_db)) == [
        "u0000",
        "u0001",
        "u0002",
        "u0004",
        "u0005",
    ]
    metrics = manager.get_campaign_metrics(campaign_id)
    assert metrics["total_recipients"] == 5
    assert metrics["stage_metrics"]["welcome"]["entered"] == 5
    held = sum(in_holdout(campaign_id, s.user_id, 0.3) for s in states(fake_db))
    assert metrics["holdout"]["conversations"] == held
    assert_checked(manager)


def test_a_re_entry_is_a_new_conversation_and_the_old_one_is_kept(
    manager: CampaignManager, fake_db: MemoryDatabase, clock: ManualClock
) -> None:
    campaign_id = started(manager)
    manager.enroll_recipients(campaign_id, people(1))
    manager.record_event("u0000", "meeting_booked", "m-1")  # the first one ends
    assert manager.enroll_recipients(campaign_id, people(1)).enrolled == 0  # too soon
    clock.advance(31 * DAY)
    assert manager.enroll_recipients(campaign_id, people(1)).enrolled == 1
    assert manager.enroll_recipients(campaign_id, people(1)).already == 1  # active now
    first, second = one(fake_db, "u0000"), one(fake_db, "u0000", 1)
    assert first.status == "completed" and second.status == "active"
    assert second.id == conversation_id_for(campaign_id, "u0000", 1)
    # A reply goes to the latest entry.
    manager.process_due_conversations(campaign_id)
    reply = manager.record_inbound_message(campaign_id, "u0000", "r-1", "thanks")
    assert reply["conversation_id"] == second.id
    figures = assert_checked(manager)
    assert figures["enrolled"] == 2


def test_one_idempotency_key_never_enrolls_a_person_twice(
    manager: CampaignManager, clock: ManualClock
) -> None:
    campaign_id = started(manager)
    assert manager.enroll_recipients(campaign_id, people(3), "wave-1").enrolled == 3
    for n in range(3):
        manager.record_event(f"u{n:04d}", "meeting_booked", f"m-{n}")
    clock.advance(60 * DAY)
    replay = manager.enroll_recipients(campaign_id, people(3), "wave-1")
    assert (replay.enrolled, replay.already) == (0, 3)
    assert manager.enroll_recipients(campaign_id, people(3), "wave-2").enrolled == 3


def test_an_entry_event_enrolls_its_user_with_the_named_attributes(
    manager: CampaignManager, fake_db: MemoryDatabase
) -> None:
    campaign_id = started(manager)
    properties = {"plan": "pro", "first_name": "Ada", "card": "4242"}
    result = manager.record_event("ada", "trial_started", "t-1", properties)
    assert (result["enrolled"], result["duplicate"]) == (1, False)
    state = one(fake_db, "ada")
    assert state.enrolled_by == "event:t-1"
    assert state.context.attributes == {"plan": "pro", "first_name": "Ada"}
    assert state.events == []  # the trigger is the entry, not a stage event
    again = manager.record_event("ada", "trial_started", "t-1", properties)
    assert (again["enrolled"], again["duplicate"]) == (0, True)
    manager.process_due_conversations(campaign_id)
    outbox = fake_db["outbox"].find({"campaign_id": campaign_id})
    assert [row["content"] for row in outbox] == (
        [] if state.holdout else ["Welcome Ada, enjoy your pro plan!"]
    )
    assert_checked(manager)


def test_a_booked_meeting_ends_the_conversation_and_its_follow_ups(
    manager: CampaignManager, fake_db: MemoryDatabase, clock: ManualClock
) -> None:
    campaign_id = started(manager)
    manager.enroll_recipients(campaign_id, people(4))
    manager.process_due_conversations(campaign_id)
    sent = fake_db["outbox"].count_documents({"campaign_id": campaign_id})
    outcomes = manager.record_events(
        [
            InboundEvent("u0000", "meeting_booked", "m-1"),
            InboundEvent("u0000", "meeting_booked", "m-1"),
            InboundEvent("nobody", "meeting_booked", "m-2"),
            InboundEvent("u0001", "bad name", "m-3"),
        ]
    )
    assert outcomes[0].result is not None and outcomes[0].result["applied"] == 1
    assert outcomes[1].result is not None and outcomes[1].result["duplicate"]
    assert outcomes[2].result is not None and outcomes[2].result["applied"] == 0
    assert outcomes[3].error is not None and "event" in str(outcomes[3].error)
    done = one(fake_db, "u0000")
    assert done.status == "completed" and done.next_action_at is None
    clock.advance(3 * DAY)
    manager.process_due_conversations(campaign_id)
    rows = fake_db["outbox"].find({"campaign_id": campaign_id, "user_id": "u0000"})
    assert len(rows) <= 1  # no follow-up after the meeting
    assert fake_db["outbox"].count_documents({"campaign_id": campaign_id}) > sent
    assert manager.get_campaign_metrics(campaign_id)["funnel"]["welcome"]["exit:completed"] == 1
    assert_checked(manager)


def test_an_event_before_its_conversation_exists_applies_when_it_is_created(
    manager: CampaignManager, fake_db: MemoryDatabase, clock: ManualClock
) -> None:
    campaign_id = started(manager)
    manager.record_event("u0000", "meeting_booked", "early")  # no conversation yet
    manager.record_event("u0001", "meeting_booked", "too-early", timestamp=START - 6 * DAY)
    clock.advance(timedelta(minutes=1))
    result = manager.enroll_recipients(campaign_id, people(2))
    assert result.enrolled == 2 and result.tally.applied == {"early": 1}
    assert one(fake_db, "u0000").status == "completed"
    assert one(fake_db, "u0001").status == "active"  # older than the first stage's window
    assert_checked(manager)


def test_a_goal_converts_once_treatment_and_holdout_and_is_recounted(
    manager: CampaignManager, fake_db: MemoryDatabase, clock: ManualClock
) -> None:
    campaign_id = started(manager)
    manager.enroll_recipients(campaign_id, people(40))
    manager.process_due_conversations(campaign_id)
    clock.advance(DAY)
    buyers = [f"u{i:04d}" for i in range(0, 40, 2)]
    events = [InboundEvent(u, "purchased", f"p-{u}") for u in buyers]
    manager.record_events(events)
    manager.record_events(events)  # delivered twice
    manager.record_events([InboundEvent(u, "purchased", f"p2-{u}") for u in buyers])  # again
    converted = [s for s in states(fake_db) if s.conversion is not None]
    assert sorted(s.user_id for s in converted) == buyers
    held = [s for s in converted if s.holdout]
    goal = manager.get_campaign_metrics(campaign_id)["goals"]["purchased"]
    assert goal["converted"] == 20 and goal["conversations"] == 40
    assert goal["holdout"]["converted"] == len(held)
    assert goal["treatment"]["converted"] == 20 - len(held)
    assert goal["mean_seconds_to_convert"] == pytest.approx(86400)
    assert goal["stages"]["welcome"]["converted"] == 20
    # A finished conversation still converts within its window; past it, none does.
    manager.record_event("u0001", "meeting_booked", "m-1")
    manager.record_event("u0001", "purchased", "p-late-1")
    clock.advance(20 * DAY)
    manager.record_event("u0003", "purchased", "p-too-late")
    assert manager.get_campaign_metrics(campaign_id)["goals"]["purchased"]["converted"] == 21
    fake_db["campaign_metrics"].update_one({"_id": campaign_id}, {"$set": {"goals": {}}})
    assert manager.reconcile_campaign_metrics(campaign_id)["goals.purchased.converted"] == 21
    while manager.process_due_conversations(campaign_id).more:
        pass
    figures = assert_checked(manager)
    assert figures["conversions"] == 21


def test_the_checker_finds_a_conversion_without_its_event(
    manager: CampaignManager, fake_db: MemoryDatabase
) -> None:
    campaign_id = started(manager)
    manager.enroll_recipients(campaign_id, people(1))
    manager.record_event("u0000", "purchased", "p-1")
    fake_db["events"].delete_one({"_id": "p-1"})
    report = manager.check_invariants(campaign_id)
    assert [v.invariant for v in report.violations] == ["conversions_recorded"]
    assert report.figures["conversions_unrecorded"] == 1
