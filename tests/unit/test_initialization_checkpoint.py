"""Initialization in checkpointed steps: a task can stop inside its time limit and the next
one resumes where it left off, for inline and referenced recipients."""

from __future__ import annotations

from typing import Any

import pytest

from campaign_worker.domain.errors import InvalidStateTransitionError
from campaign_worker.service.campaign_manager import CampaignManager
from campaign_worker.service.initialization import CHECKPOINT_EVERY, InitResult
from tests import fakes
from tests.conftest import ManagerFactory, sample_campaign

any_db = fakes.any_db  # fixture: each test on the in-memory fakes, and over the wire


@pytest.fixture
def manager(manager_on_both: CampaignManager) -> CampaignManager:
    """Every test here runs on the in-memory fakes and over the wire (``db`` is the same one)."""
    return manager_on_both


@pytest.fixture
def small_batches(db: Any, make_manager: ManagerFactory) -> CampaignManager:
    return make_manager(db, init_batch_size=50)


def _count(db: Any) -> int:
    return int(db.conversation_states.count_documents({"campaign_id": "camp-1"}))


def test_inline_recipients_resume_from_the_checkpoint(
    small_batches: CampaignManager, db: Any
) -> None:
    manager = small_batches
    manager.create_campaign(sample_campaign(120))

    first = manager.initialize_campaign_step("camp-1", max_batches=1)
    assert (first.created, first.done) == (50, False)
    campaign = db.campaigns.find_one({"_id": "camp-1"})
    assert campaign["status"] == "initializing"
    assert campaign["init_progress"]["position"] == {"offset": 50}

    second = manager.initialize_campaign_step("camp-1", max_batches=1)
    assert (second.created, second.done) == (50, False)
    last = manager.initialize_campaign_step("camp-1", max_batches=5)
    assert (last.created, last.done) == (20, True)

    campaign = db.campaigns.find_one({"_id": "camp-1"})
    assert (campaign["status"], campaign["total_recipients"]) == ("running", 120)
    assert _count(db) == 120
    metrics = manager.get_campaign_metrics("camp-1")
    assert (metrics["total_recipients"], metrics["active_conversations"]) == (120, 120)
    # Finished: a further step has nothing left to read.
    assert manager.initialize_campaign_step("camp-1").created == 0


def test_referenced_recipients_resume_after_the_last_id(
    small_batches: CampaignManager, db: Any
) -> None:
    rows = [
        {
            "_id": f"r{index:04d}",
            "list": "spring",
            "user_id": f"user-{index:05d}",
            "attributes": {"first_name": "Ann"},
            "timezone": "UTC",
        }
        for index in range(110)
    ]
    rows[7]["timezone"] = "Not/AZone"  # invalid: skipped and counted, not fatal
    rows.append({"_id": "z-other", "list": "autumn", "user_id": "someone-else"})
    db.recipients.insert_many(rows)
    campaign = sample_campaign(0)
    campaign["recipients"] = {"collection": "recipients", "query": {"list": "spring"}}
    small_batches.create_campaign(campaign)

    step = small_batches.initialize_campaign_step("camp-1", max_batches=1)
    assert step.created == 49
    stored = db.campaigns.find_one({"_id": "camp-1"})["init_progress"]
    assert stored == {
        "position": {"after_id": "r0049"},
        "invalid": 1,
        "invalid_samples": [
            {
                "user_id": "user-00007",
                "error": "timezone: Value error, unknown timezone '...'",  # value kept out
            }
        ],
    }

    rest = small_batches.initialize_campaign_step("camp-1")
    assert (rest.created, rest.done) == (60, True)
    assert _count(db) == 109
    assert db.conversation_states.count_documents({"user_id": "someone-else"}) == 0
    assert db.campaigns.find_one({"_id": "camp-1"})["total_recipients"] == 109


def test_a_pause_between_steps_stops_initialization_and_resume_continues(
    small_batches: CampaignManager, db: Any
) -> None:
    manager = small_batches
    manager.create_campaign(sample_campaign(120))
    manager.initialize_campaign_step("camp-1", max_batches=1)
    manager.pause_campaign("camp-1")

    with pytest.raises(InvalidStateTransitionError):
        manager.initialize_campaign_step("camp-1", max_batches=1)
    assert _count(db) == 50

    # Not initialized yet, so resuming schedules it again; the poller claims it and the
    # next step continues from the checkpoint instead of starting over.
    assert manager.resume_campaign("camp-1")["status"] == "scheduled"
    assert manager.poll_campaigns().initialize == ["camp-1"]
    step = manager.initialize_campaign_step("camp-1")
    assert (step.created, step.done) == (70, True)
    assert _count(db) == 120


def test_a_checkpoint_write_that_finds_the_campaign_paused_stops_the_step(
    small_batches: CampaignManager, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = small_batches
    manager.create_campaign(sample_campaign(400))
    original = manager.campaigns.save_init_progress

    def pause_then_save(*args: Any, **kwargs: Any) -> bool:
        db.campaigns.update_one({"_id": "camp-1"}, {"$set": {"status": "paused"}})
        return bool(original(*args, **kwargs))

    monkeypatch.setattr(manager.campaigns, "save_init_progress", pause_then_save)
    step = manager.initialize_campaign_step("camp-1")
    # The first checkpoint comes after CHECKPOINT_EVERY batches of 50.
    assert (step.created, step.done, step.stopped) == (50 * CHECKPOINT_EVERY, False, True)
    assert db.campaigns.find_one({"_id": "camp-1"})["status"] == "paused"


def test_a_step_out_of_time_stops_at_a_checkpoint_after_its_batch(
    small_batches: CampaignManager, db: Any
) -> None:
    """A task's time budget (short time limit, slow database): the step saves its
    progress after the batch under way, and each next step moves on from there."""
    manager = small_batches
    manager.create_campaign(sample_campaign(120))
    calls: list[int] = []

    def out_of_time() -> bool:
        calls.append(_count(db))
        return True  # out of time after every batch

    steps: list[InitResult] = []
    while not (steps and steps[-1].done):
        steps.append(manager.initialize_campaign_step("camp-1", out_of_time=out_of_time))
        assert len(steps) < 10, "no progress"
    assert [s.created for s in steps] == [50, 50, 20, 0]
    assert calls == [50, 100, 120]
    assert _count(db) == 120
    assert manager.get_campaign_metrics("camp-1")["total_recipients"] == 120


def test_each_step_logs_where_it_starts(small_batches: CampaignManager) -> None:
    """Operators (and the fault suite) see a resumed initialization: every step logs the
    checkpoint it starts from, None only for a fresh start."""
    from structlog.testing import capture_logs

    small_batches.create_campaign(sample_campaign(120))
    with capture_logs() as logs:
        small_batches.initialize_campaign_step("camp-1", max_batches=1)
        small_batches.initialize_campaign_step("camp-1", max_batches=1)
    starts = [e["position"] for e in logs if e["event"] == "campaign_initialization_step"]
    assert starts == [None, {"offset": 50}]
