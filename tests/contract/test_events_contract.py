"""Always-on campaigns' ports on every backend: users' events, the enrollment's one read,
conversations inserted per entry and read by user, campaigns that enroll on an event."""

from __future__ import annotations

from datetime import timedelta

from campaign_worker.domain.campaign_documents import Campaign
from campaign_worker.domain.documents import conversation_id_for
from campaign_worker.domain.enrollment import EventFact, PriorEntry
from campaign_worker.domain.partitions import partition_of
from campaign_worker.domain.suppressions import Suppression
from tests.contract.support import MINUTE, START, Store, campaign, state

HOUR = timedelta(hours=1)


def fact(event_id: str, user: str = "u-1", at: object = START, name: str = "paid") -> EventFact:
    assert isinstance(at, type(START))
    return EventFact(event_id, user, name, at, at + MINUTE, {"plan": "pro", "n": 3})


def test_events_are_recorded_once_by_id(store: Store) -> None:
    events = store.repos.events
    assert events.record([fact("e-1"), fact("e-2", "u-2")]) == {"e-1", "e-2"}
    assert events.record([fact("e-2", "u-9"), fact("e-3")]) == {"e-3"}
    assert events.record([]) == set()
    stored = events.get_many(["e-2", "e-3", "missing"])
    assert stored == {"e-2": fact("e-2", "u-2"), "e-3": fact("e-3")}
    assert events.get_many([]) == {}


def test_recent_events_of_users_are_those_since_a_time_oldest_first(store: Store) -> None:
    events = store.repos.events
    events.record(
        [
            fact("late", at=START + HOUR),
            fact("early", at=START - HOUR),
            fact("other", "u-2", at=START + HOUR),
            fact("now", at=START),
        ]
    )
    found = events.recent_of_users(["u-1", "u-3"], START)
    assert [f.event_id for f in found] == ["now", "late"]
    assert events.recent_of_users([], START) == []


def test_insert_new_returns_the_ids_inserted_per_entry(store: Store) -> None:
    repo = store.repos.conversations
    first = state("u-1")
    assert repo.insert_new([first, state("u-2")]) == {first.id, state("u-2").id}
    assert repo.insert_new([first, state("u-3")]) == {state("u-3").id}
    again_id = conversation_id_for("camp-1", "u-1", 1)
    again = state("u-1").model_copy(
        update={"id": again_id, "partition": partition_of(again_id), "enrollment": 1}
    )
    assert repo.insert_new([again]) == {again_id}
    # Same (campaign, user, entry) under another id: refused by the unique index.
    clash = again.model_copy(update={"id": "someone-else"})
    assert repo.insert_new([clash]) == set()
    assert repo.insert_new([]) == set()
    assert repo.count_conversations("camp-1") == 4  # none was enrolled


def test_audience_counts_leave_enrolled_conversations_out(store: Store) -> None:
    repo = store.repos.conversations
    repo.insert_new([state("u-1"), state("u-2", enrolled_by="enroll")])
    assert repo.count_conversations("camp-1") == 1


def test_listening_conversations_are_active_or_within_their_goal(store: Store) -> None:
    repo = store.repos.conversations
    repo.insert_new(
        [
            state("u-1"),
            state("u-1", campaign_id="camp-2", status="completed", goal_until=START + HOUR),
            state("u-1", campaign_id="camp-3", status="completed", goal_until=START - HOUR),
            state("u-1", campaign_id="camp-4", status="failed"),
            state("u-2"),
        ]
    )
    found = repo.find_listening(["u-1", "u-9"], START)
    assert sorted(str(s.campaign_id) for s in found) == ["camp-1", "camp-2"]
    assert repo.find_listening([], START) == []


def test_campaigns_that_enroll_on_an_event(store: Store) -> None:
    campaigns = store.repos.campaigns
    trial = Campaign.model_validate({**campaign("c-1").to_mongo(), "entry_event": "trial"})
    done = Campaign.model_validate(
        {**campaign("c-2").to_mongo(), "entry_event": "trial", "status": "cancelled"}
    )
    other = Campaign.model_validate({**campaign("c-3").to_mongo(), "entry_event": "signup"})
    for each in (trial, done, other, campaign("c-4")):
        campaigns.insert(each)
    assert [c.id for c in campaigns.with_entry_events(["trial", "nothing"])] == ["c-1"]
    assert campaigns.with_entry_events([]) == []


def test_the_enrollment_context_is_campaign_suppressions_and_prior_entries(store: Store) -> None:
    store.repos.campaigns.insert(campaign("camp-1"))
    store.repos.suppressions.add_many(
        [Suppression("user:u-2", "stop", "opt_out", START, user_id="u-2")]
    )
    store.repos.conversations.insert_new(
        [state("u-1", status="completed", enrolled_by="event:e-1"), state("u-3", campaign_id="x")]
    )
    context = store.repos.enrollment_reads.context(
        "camp-1", ["u-1", "u-2", "u-3"], ["user:u-1", "user:u-2", "user:u-3"]
    )
    assert context is not None
    assert context.campaign.id == "camp-1" and context.campaign.recipients is None
    assert list(context.suppressions) == ["user:u-2"]
    assert context.prior == [PriorEntry("u-1", 0, False, START, "event:e-1")]
    assert store.repos.enrollment_reads.context("nope", ["u-1"], []) is None
