"""Always-on campaigns over the wire: the round trips of enrollment and events (counted
on the wire, exact), and two writers racing to enroll the same people (enroll_recipients
and entry events at once: one conversation each)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pymongo
import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.service.campaign_manager import CampaignManager
from campaign_worker.service.event_recording import InboundEvent
from tests.always_on_support import open_campaign, people, write_template
from tests.conftest import ManagerFactory
from tooling.mongo_monitoring import CommandCounter

pytestmark = pytest.mark.wire

N = 1000
CAMPAIGN = "always"


@pytest.fixture
def counted(
    wire_uri: str, wire_db: Any, make_manager: ManagerFactory, tmp_path: Path
) -> Iterator[tuple[CampaignManager, CommandCounter]]:
    counter = CommandCounter()
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        wire_uri, tz_aware=True, tzinfo=UTC, event_listeners=[counter]
    )
    manager = make_manager(
        client[wire_db.name], campaign_templates_dir=write_template(tmp_path), process_batch_size=N
    )
    manager.create_campaign(open_campaign(CAMPAIGN))
    manager.initialize_campaign_step(CAMPAIGN)
    yield manager, counter
    client.close()


def test_a_thousand_enrolled_cost_five_round_trips(
    counted: tuple[CampaignManager, CommandCounter],
) -> None:
    manager, counter = counted
    with counter.measure() as span:
        result = manager.enroll_recipients(CAMPAIGN, people(N))
    assert result.enrolled == N
    # The context (campaign, suppressions, prior entries: one aggregate), the metrics
    # registration, the insert, the pending events (the type reacts to events), the
    # metrics increment.
    assert span.counts.total <= 5, span.counts.by_name
    with counter.measure() as again:
        replay = manager.enroll_recipients(CAMPAIGN, people(N))
    assert (replay.enrolled, replay.already) == (0, N)
    assert again.counts.total <= 2, again.counts.by_name  # the read; nothing to insert
    assert manager.get_campaign_metrics(CAMPAIGN)["total_recipients"] == N


def test_a_thousand_events_cost_tens_of_round_trips(
    counted: tuple[CampaignManager, CommandCounter], clock: ManualClock
) -> None:
    manager, counter = counted
    manager.enroll_recipients(CAMPAIGN, people(N))
    clock.advance(timedelta(minutes=5))
    events = [InboundEvent(f"u{i:04d}", "meeting_booked", f"m-{i}") for i in range(N)]
    with counter.measure() as span:
        for start in range(0, N, 500):
            outcomes = manager.record_events(events[start : start + 500])
            assert all(o.error is None and o.result and o.result["applied"] for o in outcomes)
    # Per batch: the insert, the entry campaigns, the users' conversations, the campaign,
    # the metrics registration, the bulk write, the metrics increment.
    assert span.counts.total <= 20, span.counts.by_name
    metrics = manager.get_campaign_metrics(CAMPAIGN)
    assert metrics["completed_conversations"] == N and metrics["active_conversations"] == 0


def test_enrollment_and_entry_events_racing_make_one_conversation_each(
    counted: tuple[CampaignManager, CommandCounter], wire_db: Any
) -> None:
    manager, _ = counted
    users = 200
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    enrolled = {"task": 0, "event": 0}

    def enroll() -> None:
        barrier.wait()
        for start in range(0, users, 20):
            enrolled["task"] += manager.enroll_recipients(
                CAMPAIGN, people(20, start=start)
            ).enrolled

    def entry_events() -> None:
        barrier.wait()
        for start in range(0, users, 20):
            outcomes = manager.record_events(
                [
                    InboundEvent(f"u{i:04d}", "trial_started", f"t-{i}", {"plan": "pro"})
                    for i in range(start, start + 20)
                ]
            )
            enrolled["event"] += sum(o.result["enrolled"] for o in outcomes if o.result)

    def guarded(work: Any) -> None:
        try:
            work()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(w,)) for w in (enroll, entry_events)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    per_user = list(
        wire_db["conversation_states"].aggregate(
            [
                {"$match": {"campaign_id": CAMPAIGN}},
                {"$group": {"_id": "$user_id", "n": {"$sum": 1}}},
            ]
        )
    )
    assert len(per_user) == users and {row["n"] for row in per_user} == {1}
    # Each person was enrolled by exactly one of the two writers (the other saw them).
    assert enrolled["task"] + enrolled["event"] == users, enrolled
    metrics = manager.get_campaign_metrics(CAMPAIGN)
    assert metrics["total_recipients"] == users
    manager.reconcile_campaign_metrics(CAMPAIGN)
    report = manager.check_invariants(CAMPAIGN, quiet=False)
    assert report.ok, [(v.invariant, v.detail) for v in report.violations]
    assert report.figures["enrolled"] == users
