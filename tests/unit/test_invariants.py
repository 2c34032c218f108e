"""The invariant checker (issue 15): a clean campaign passes; each violation, built in the
stored documents, is found, named and counted. Every test runs on the in-memory fakes and over
the wire."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.delivery_wiring import delivery_stores
from campaign_worker.domain.documents import conversation_id_for
from campaign_worker.domain.invariants import FIGURES, InvariantReport
from campaign_worker.service.campaign_manager import CampaignManager
from tests import fakes
from tests.conftest import sample_campaign

any_db = fakes.any_db  # fixture: each test on the in-memory fakes, and over the wire

CAMPAIGN = "camp-1"


@pytest.fixture
def manager(manager_on_both: CampaignManager) -> CampaignManager:
    return manager_on_both


def names(report: InvariantReport) -> set[str]:
    return {violation.invariant for violation in report.violations}


def violation(report: InvariantReport, name: str) -> Any:
    return next(v for v in report.violations if v.invariant == name)


def cid(user: str) -> str:
    return conversation_id_for(CAMPAIGN, user)


def started(manager: CampaignManager, clock: ManualClock, n: int = 6) -> None:
    """Sent the first message to everyone; two replies recorded (one opt-out)."""
    manager.create_campaign(sample_campaign(n))
    manager.initialize_campaign_conversations(CAMPAIGN)
    manager.process_due_conversations(CAMPAIGN)
    clock.advance(timedelta(hours=2))
    manager.record_inbound_message(CAMPAIGN, "user-00001", "in-1", "yes please")
    manager.record_inbound_message(CAMPAIGN, "user-00002", "in-2", "STOP")


def run_to_the_end(manager: CampaignManager, clock: ManualClock) -> None:
    """Process day by day until nothing is active, then let the poller complete it."""
    for _ in range(40):
        while manager.process_due_conversations(CAMPAIGN).more:
            pass
        if manager.conversation_state_repository.count_active(CAMPAIGN) == 0:
            break
        clock.advance(timedelta(days=1))
    manager.poll_campaigns()


def test_a_clean_campaign_passes_while_running_and_when_over(
    manager: CampaignManager, clock: ManualClock
) -> None:
    started(manager, clock)
    running = manager.check_invariants(CAMPAIGN)
    assert running.ok, running.violations
    assert set(FIGURES) <= set(running.figures)
    assert all(isinstance(value, int) for value in running.figures.values())
    assert running.figures["recipients"] == 6
    assert running.figures["conversations"] == 6
    assert running.figures["messages_recorded"] == 7  # "yes" moved one on: sent at once
    assert running.figures["replies_recorded"] == 2
    run_to_the_end(manager, clock)
    assert manager.get_campaign(CAMPAIGN)["status"] == "completed"
    report = manager.check_invariants(CAMPAIGN)
    assert report.ok, report.violations
    figures = report.figures
    assert figures["messages_recorded"] > 7
    assert {name: figures[name] for name in FIGURES if name not in {
        "recipients", "conversations", "messages_recorded", "replies_recorded"}} == {
        name: 0 for name in FIGURES if name not in {
            "recipients", "conversations", "messages_recorded", "replies_recorded"}
    }  # fmt: skip
    assert report.as_dict()["ok"] is True


def test_a_lost_conversation(manager: CampaignManager, clock: ManualClock, db: Any) -> None:
    started(manager, clock)
    db.conversation_states.delete_one({"_id": cid("user-00003")})
    report = manager.check_invariants(CAMPAIGN)
    assert report.figures["conversations_lost"] == 1
    lost = violation(report, "one_conversation_per_recipient")
    assert lost.sample == ("user-00003",)
    assert "1 of 6 recipients have no conversation" in lost.detail
    # Its counters went with it: the campaign's total and the metrics disagree too.
    assert {"campaign_total_recipients", "metrics_match_recount"} <= names(report)
    # Its recorded message is still in the outbox, recorded nowhere.
    assert "outbox_rows_recorded" in names(report)


def test_a_duplicated_conversation(manager: CampaignManager, clock: ManualClock, db: Any) -> None:
    started(manager, clock)
    db.conversation_states.drop_index("campaign_user_entry_unique")
    twin = db.conversation_states.find_one({"_id": cid("user-00004")})
    db.conversation_states.insert_one({**twin, "_id": "a-second-one"})
    report = manager.check_invariants(CAMPAIGN)
    assert report.figures["conversations_duplicated"] == 1
    assert report.figures["conversations_lost"] == 0
    assert "user-00004" in violation(report, "one_conversation_per_recipient").sample


def test_an_outbound_id_twice_in_a_history(
    manager: CampaignManager, clock: ManualClock, db: Any
) -> None:
    started(manager, clock)
    doc = db.conversation_states.find_one({"_id": cid("user-00005")})
    sent = doc["message_history"][0]
    db.conversation_states.update_one(
        {"_id": doc["_id"]},
        {"$push": {"message_history": sent}, "$inc": {"metrics.messages_sent": 1}},
    )
    report = manager.check_invariants(CAMPAIGN)
    assert report.figures["messages_sent_twice"] == 1
    assert violation(report, "outbound_recorded_once").sample == (doc["_id"],)


def test_one_step_recorded_twice_under_two_ids(
    manager: CampaignManager, clock: ManualClock, db: Any
) -> None:
    started(manager, clock)
    doc = db.conversation_states.find_one({"_id": cid("user-00005")})
    again = {**doc["message_history"][0], "message_id": "out-another-id"}
    db.conversation_states.update_one(
        {"_id": doc["_id"]},
        {"$push": {"message_history": again}, "$inc": {"metrics.messages_sent": 1}},
    )
    db.outbox.insert_one(
        {**db.outbox.find_one({"conversation_id": doc["_id"]}), "_id": again["message_id"]}
    )
    report = manager.check_invariants(CAMPAIGN)
    assert report.figures["messages_sent_twice"] == 1
    assert names(report) == {"outbound_recorded_once", "metrics_match_recount"}


def test_a_message_missing_from_the_outbox_or_withdrawn(
    manager: CampaignManager, clock: ManualClock, db: Any
) -> None:
    started(manager, clock)
    gone = db.outbox.find_one({"conversation_id": cid("user-00000")})["_id"]
    db.outbox.delete_one({"_id": gone})
    withdrawn = db.outbox.find_one({"conversation_id": cid("user-00003")})["_id"]
    db.outbox.update_one({"_id": withdrawn}, {"$set": {"status": "cancelled"}})
    report = manager.check_invariants(CAMPAIGN)
    assert report.figures["messages_lost"] == 2
    missing = violation(report, "outbound_in_outbox")
    assert set(missing.sample) == {gone, withdrawn}
    assert "'cancelled'" in missing.detail
    assert names(report) == {"outbound_in_outbox"}


def test_a_failed_delivery_is_accounted_for_not_lost(
    manager: CampaignManager, clock: ManualClock, db: Any
) -> None:
    started(manager, clock)
    db.outbox.update_one({"conversation_id": cid("user-00000")}, {"$set": {"status": "failed"}})
    db.outbox.update_one({"conversation_id": cid("user-00001")}, {"$set": {"status": "sent"}})
    report = manager.check_invariants(CAMPAIGN)
    assert report.ok, report.violations
    assert report.figures["messages_failed"] == 1


def test_an_unpublished_message_is_never_lost_and_overdue_once_the_sweep_is_due(
    manager: CampaignManager, clock: ManualClock, db: Any
) -> None:
    """A crash between a write and its publication: the message is in flight (not lost)
    while the system runs, and once quiet until the sweep is due; after that it is overdue
    work (no sweep ran: a liveness fault), still not lost, until the sweep publishes it."""
    started(manager, clock)
    doc = db.conversation_states.find_one({"_id": cid("user-00000")})
    mid = doc["message_history"][0]["message_id"]
    db.outbox.delete_one({"_id": mid})
    db.conversation_states.update_one(
        {"_id": doc["_id"]}, {"$set": {"unpublished": [mid], "publish_due_at": clock.now()}}
    )
    for system_is_quiet in (False, True):
        report = manager.check_invariants(CAMPAIGN, quiet=system_is_quiet)
        assert report.ok, report.violations
        assert report.figures["messages_unpublished"] == 1
    clock.advance(2 * manager.publish_grace + timedelta(seconds=1))
    assert manager.check_invariants(CAMPAIGN, quiet=False).ok
    quiet = manager.check_invariants(CAMPAIGN)
    assert quiet.figures["messages_lost"] == 0 and quiet.figures["messages_unpublished"] == 1
    assert [v.invariant for v in quiet.violations] == ["no_overdue_work"]
    assert violation(quiet, "no_overdue_work").sample == (f"publication:{doc['_id']}",)
    manager.poll_campaigns()  # the sweep publishes it
    report = manager.check_invariants(CAMPAIGN)
    assert report.ok and report.figures["messages_unpublished"] == 0


def test_a_reply_recorded_twice(manager: CampaignManager, clock: ManualClock, db: Any) -> None:
    started(manager, clock)
    doc = db.conversation_states.find_one({"_id": cid("user-00001")})
    reply = next(m for m in doc["message_history"] if m["direction"] == "inbound")
    db.conversation_states.update_one(
        {"_id": doc["_id"]},
        {"$push": {"message_history": reply}, "$inc": {"metrics.messages_received": 1}},
    )
    report = manager.check_invariants(CAMPAIGN)
    assert report.figures["replies_recorded_twice"] == 1
    assert report.figures["replies_recorded"] == 2
    assert violation(report, "inbound_recorded_once").sample == (doc["_id"],)


def test_a_counter_that_disagrees_with_the_history(
    manager: CampaignManager, clock: ManualClock, db: Any
) -> None:
    started(manager, clock)
    db.conversation_states.update_one(
        {"_id": cid("user-00000")}, {"$inc": {"metrics.messages_received": 1}}
    )
    report = manager.check_invariants(CAMPAIGN)
    counters = violation(report, "conversation_counters")
    assert counters.sample == (cid("user-00000"),)
    assert "messages_received 1 but 0 inbound entries" in counters.detail


def test_a_drifted_metrics_counter(manager: CampaignManager, clock: ManualClock, db: Any) -> None:
    started(manager, clock)
    db.campaign_metrics.update_one(
        {"_id": CAMPAIGN},
        {"$inc": {"message_metrics.total_sent": 2, "active_conversations": -1}},
    )
    report = manager.check_invariants(CAMPAIGN)
    assert report.figures["metrics_drift"] == 3
    drift = violation(report, "metrics_match_recount")
    assert set(drift.sample) == {"active_conversations", "message_metrics.total_sent"}
    assert names(report) == {"metrics_match_recount"}
    manager.reconcile_campaign_metrics(CAMPAIGN)
    assert manager.check_invariants(CAMPAIGN).ok


def test_drift_while_a_writer_is_registered_is_measured_not_failed_when_running(
    manager: CampaignManager, clock: ManualClock, db: Any
) -> None:
    started(manager, clock)
    manager.campaign_metrics.begin(CAMPAIGN, "writer-1", clock.now())
    db.campaign_metrics.update_one({"_id": CAMPAIGN}, {"$inc": {"message_metrics.total_sent": 1}})
    running = manager.check_invariants(CAMPAIGN, quiet=False)
    assert running.ok and running.figures["metrics_drift"] == 1
    assert names(manager.check_invariants(CAMPAIGN)) == {"metrics_match_recount"}


def test_stale_leases_only_when_quiet(
    manager: CampaignManager, clock: ManualClock, db: Any
) -> None:
    started(manager, clock)
    now = clock.now()
    # A dispatcher claims a row and dies; a dispatched processing task is never run (its
    # broker message lost); a conversation keeps a lease field of the old design.
    rows, _, _ = delivery_stores(db)
    claimed = rows.claim(["default"], now, 1, "dispatcher-1", now + timedelta(seconds=60))
    assert len(claimed) == 1
    (dispatch,) = manager.dispatch_processing(CAMPAIGN)
    db.conversation_states.update_one(
        {"_id": cid("user-00003")},
        {"$set": {"lease_owner": "old", "lease_until": now - timedelta(minutes=1)}},
    )
    assert manager.check_invariants(CAMPAIGN).figures["stale_leases"] == 1  # the old one
    clock.advance(manager.inflight_timeout + timedelta(seconds=1))
    assert manager.check_invariants(CAMPAIGN, quiet=False).ok
    report = manager.check_invariants(CAMPAIGN)
    assert report.figures["stale_leases"] == 3
    assert set(violation(report, "no_stale_leases").sample) == {
        f"outbox:{claimed[0].id}",
        f"conversation:{cid('user-00003')}",
        f"registration:{dispatch.token}",
    }
    assert names(report) == {"no_stale_leases"}


def test_a_broken_stage_timeline(manager: CampaignManager, clock: ManualClock, db: Any) -> None:
    started(manager, clock)
    doc = db.conversation_states.find_one({"_id": cid("user-00001")})  # replied: moved on
    assert len(doc["stages"]) == 2
    db.conversation_states.update_one({"_id": doc["_id"]}, {"$set": {"stages.0.exited_at": None}})
    report = manager.check_invariants(CAMPAIGN)
    timeline = violation(report, "stage_timeline")
    assert timeline.sample == (doc["_id"],)
    assert "2 open stage entries" in timeline.detail
    later = clock.now() + timedelta(days=1)
    db.conversation_states.update_one(
        {"_id": doc["_id"]},
        {"$set": {"stages.0.exited_at": later}},
    )
    assert (
        "before the previous one ended"
        in violation(manager.check_invariants(CAMPAIGN), "stage_timeline").detail
    )


def test_a_campaign_that_should_be_over(manager: CampaignManager, clock: ManualClock) -> None:
    started(manager, clock, n=3)  # user-00002 opted out
    manager.mark_conversation_complete(cid("user-00000"))
    assert manager.check_invariants(CAMPAIGN).ok
    manager.mark_conversation_complete(cid("user-00001"))
    report = manager.check_invariants(CAMPAIGN)
    assert names(report) == {"campaign_over_when_done"}
    assert "running with no active conversation left" in report.violations[0].detail
    assert manager.check_invariants(CAMPAIGN, quiet=False).ok
    manager.poll_campaigns()
    assert manager.check_invariants(CAMPAIGN).ok


def test_a_cancelled_campaign_not_settled(manager: CampaignManager, clock: ManualClock) -> None:
    started(manager, clock)
    manager.cancel_campaign(CAMPAIGN)
    report = manager.check_invariants(CAMPAIGN)
    assert names(report) == {"campaign_over_when_done"}
    assert "cancelled with 5 active conversations" in report.violations[0].detail
    manager.process_due_conversations(CAMPAIGN)  # settles them as cancelled
    assert manager.check_invariants(CAMPAIGN).ok


def test_work_left_undone(manager: CampaignManager, clock: ManualClock) -> None:
    started(manager, clock)
    clock.advance(timedelta(days=3))  # follow-ups due, nobody processes them
    assert manager.check_invariants(CAMPAIGN, quiet=False).ok
    report = manager.check_invariants(CAMPAIGN)
    assert report.figures["overdue"] >= 1
    assert "no_overdue_work" in names(report)
    run_to_the_end(manager, clock)
    assert manager.check_invariants(CAMPAIGN).ok


def test_an_unknown_campaign_is_not_found(manager: CampaignManager) -> None:
    from campaign_worker.domain.errors import CampaignNotFoundError

    with pytest.raises(CampaignNotFoundError):
        manager.check_invariants("nope")


def test_an_outbox_row_no_history_records(
    manager: CampaignManager, clock: ManualClock, db: Any
) -> None:
    started(manager, clock)
    row = db.outbox.find_one({"conversation_id": cid("user-00000")})
    db.outbox.insert_one({**row, "_id": "out-unrecorded", "stage": "decision", "step": 1})
    db.outbox.insert_one({**row, "_id": "out-elsewhere", "conversation_id": "no-such"})
    report = manager.check_invariants(CAMPAIGN)
    assert report.figures["outbox_unrecorded"] == 2
    assert report.figures["messages_sent_twice"] == 0
    unrecorded = violation(report, "outbox_rows_recorded")
    assert unrecorded.sample == ("out-unrecorded",)
    assert "1 outbox rows belong to no conversation of the campaign" in unrecorded.detail


def test_a_delivery_status_recorded_twice(
    manager: CampaignManager, clock: ManualClock, db: Any
) -> None:
    started(manager, clock)
    row = db.outbox.find_one({"conversation_id": cid("user-00000")})["_id"]
    event = {"status": "sent", "at": clock.now()}
    db.outbox.update_one({"_id": row}, {"$set": {"status": "sent", "events": [event, event]}})
    report = manager.check_invariants(CAMPAIGN)
    assert report.figures["messages_sent_twice"] == 1
    assert violation(report, "delivery_recorded_once").sample == (row,)


def test_a_write_landing_during_a_running_check_is_no_orphan(
    manager: CampaignManager, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    started(manager, clock)
    reads = manager.invariant_reads
    assert reads is not None
    before = list(reads.conversations(CAMPAIGN, 100))  # read before follow-ups are sent
    clock.advance(timedelta(days=1))
    assert manager.process_due_conversations(CAMPAIGN).sent > 0
    monkeypatch.setattr(reads, "conversations", lambda campaign_id, size: iter(before))
    running = manager.check_invariants(CAMPAIGN, quiet=False)
    assert running.ok, running.violations
    assert "outbox_rows_recorded" in names(manager.check_invariants(CAMPAIGN))


def test_recipients_in_a_collection_with_invalid_rows(
    manager: CampaignManager, clock: ManualClock, db: Any
) -> None:
    rows = [
        {"_id": f"imp:{i:04d}", "import_id": "imp", "user_id": f"user-{i:05d}"} for i in range(5)
    ]
    rows.append({"_id": "imp:0005", "import_id": "imp", "user_id": "x", "timezone": "Mars/Base"})
    rows.append({"_id": "imp:0006", "import_id": "imp", "user_id": "user-00001"})  # again
    db.recipients.insert_many(rows)
    audience = {"collection": "recipients", "query": {"import_id": "imp"}}
    manager.create_campaign({**sample_campaign(1), "recipients": audience})
    manager.initialize_campaign_conversations(CAMPAIGN)
    manager.process_due_conversations(CAMPAIGN)
    report = manager.check_invariants(CAMPAIGN)
    assert report.ok, report.violations
    assert report.figures["recipients"] == 5
    assert report.figures["invalid_recipients"] == 1
    db.campaigns.update_one({"_id": CAMPAIGN}, {"$set": {"invalid_recipients": 0}})
    report = manager.check_invariants(CAMPAIGN)
    assert names(report) == {"invalid_recipients_counted"}
    assert "1 audience rows are invalid; the campaign counts 0" in report.violations[0].detail


def test_before_initialization_nobody_is_lost(manager: CampaignManager) -> None:
    manager.create_campaign(sample_campaign(3))
    report = manager.check_invariants(CAMPAIGN)
    assert report.ok, report.violations
    assert report.figures["recipients"] == 3
    assert report.figures["conversations"] == 0
    manager.cancel_campaign(CAMPAIGN)
    assert manager.check_invariants(CAMPAIGN).ok
