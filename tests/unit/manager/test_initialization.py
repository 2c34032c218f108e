"""CampaignManager: initialization and the pending conversations."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.domain.documents import conversation_id_for
from campaign_worker.domain.errors import (
    CampaignNotFoundError,
    InvalidInputError,
    InvalidStateTransitionError,
    UnknownStageError,
)
from campaign_worker.service.campaign_manager import CampaignManager
from tests.conftest import START, ManagerFactory, sample_campaign
from tests.unit.manager.support import (
    DAY,
    HOUR,
    SALES,
    cid,
    conv,
    db_of,
    running,
)

# ---------------------------------------------------------------- initialize


def test_initialize_creates_one_conversation_per_recipient(manager: CampaignManager) -> None:
    running(manager, 3)
    state = conv(manager, 1)
    assert state["_id"] == cid(1)
    assert state["user_id"] == "user-00001"
    assert state["current_stage"] == "awareness"
    assert state["stages"] == [
        {"name": "awareness", "entered_at": START, "exited_at": None, "completed": False}
    ]
    assert state["context"]["available_stages"] == SALES
    assert state["context"]["template_id"] == "default"
    assert state["context"]["attributes"] == {"first_name": "Ann1"}
    assert state["status"] == "active"
    assert state["next_action_at"] == START
    assert state["message_history"] == []


def test_initialize_sets_campaign_running_with_total(manager: CampaignManager) -> None:
    running(manager, 3)
    campaign = manager.get_campaign("camp-1")
    assert campaign["status"] == "running"
    assert campaign["total_recipients"] == 3
    assert campaign["initialized_at"] == START


def test_initialize_twice_creates_nothing_and_returns_zero(manager: CampaignManager) -> None:
    running(manager, 3)
    assert manager.initialize_campaign_conversations("camp-1") == 0
    assert db_of(manager)["conversation_states"].count_documents({}) == 3
    metrics = manager.get_campaign_metrics("camp-1")
    assert metrics["total_recipients"] == 3
    assert metrics["stage_metrics"]["awareness"]["entered"] == 3
    assert manager.get_campaign("camp-1")["total_recipients"] == 3


def test_initialize_in_batches_creates_everyone(db: Any, make_manager: ManagerFactory) -> None:
    manager = make_manager(db, init_batch_size=3)
    campaign_id = manager.create_campaign(sample_campaign(7))
    assert manager.initialize_campaign_conversations(campaign_id) == 7
    assert db["conversation_states"].count_documents({"campaign_id": campaign_id}) == 7


def test_initialize_resumed_after_a_crash_counts_only_the_new_ones(
    db: Any, make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch, clock: ManualClock
) -> None:
    manager = make_manager(db, init_batch_size=2)
    manager.create_campaign(sample_campaign(5))
    repo = manager.conversation_state_repository
    real_insert = repo.insert_states
    calls = {"n": 0}

    def crash_on_second_batch(docs: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("worker died")
        return real_insert(docs)

    monkeypatch.setattr(repo, "insert_states", crash_on_second_batch)
    with pytest.raises(RuntimeError):
        manager.initialize_campaign_conversations("camp-1")
    monkeypatch.setattr(repo, "insert_states", real_insert)

    assert manager.get_campaign("camp-1")["status"] == "initializing"
    assert manager.initialize_campaign_conversations("camp-1") == 3
    assert db["conversation_states"].count_documents({}) == 5
    assert manager.get_campaign("camp-1")["status"] == "running"
    # The crashed step counts once per step, at its end: what it inserted before it died
    # is a duplicate for the resumed step, so it is counted by neither. Its registration
    # stays, keeping the reconcile off until it expires; then the reconcile counts them.
    assert manager.get_campaign_metrics("camp-1")["total_recipients"] == 3
    assert manager.reconcile_campaign_metrics("camp-1") == {}  # deferred
    clock.advance(manager.inflight_timeout + timedelta(seconds=1))
    manager.reconcile_campaign_metrics("camp-1")
    metrics = manager.get_campaign_metrics("camp-1")
    assert metrics["total_recipients"] == 5
    assert metrics["active_conversations"] == 5
    assert metrics["stage_metrics"]["awareness"]["entered"] == 5


@pytest.mark.filterwarnings("ignore:'batch_size' is accepted")
def test_initialize_from_a_recipients_collection(db: Any, manager: CampaignManager) -> None:
    db["people"].insert_many(
        [
            {"_id": 1, "user_id": "a", "attributes": {"first_name": "A"}, "segment": "b2b"},
            {"_id": 2, "user_id": "b", "segment": "b2c"},
            {"_id": 3, "user_id": "c", "timezone": "Europe/Paris", "segment": "b2b"},
        ]
    )
    data = sample_campaign(0)
    data["recipients"] = {"collection": "people", "query": {"segment": "b2b"}}
    manager.create_campaign(data)
    assert manager.initialize_campaign_conversations("camp-1") == 2
    users = sorted(d["user_id"] for d in db["conversation_states"].find())
    assert users == ["a", "c"]
    assert manager.get_conversation(conversation_id_for("camp-1", "c"))["context"]["timezone"] == (
        "Europe/Paris"
    )


@pytest.mark.filterwarnings("ignore:'batch_size' is accepted")
def test_initialize_skips_invalid_recipients_from_a_collection(
    db: Any, manager: CampaignManager
) -> None:
    db["people"].insert_many(
        [{"_id": 1, "user_id": "a"}, {"_id": 2, "user_id": "b", "timezone": "Mars/Base"}]
    )
    data = sample_campaign(0)
    data["recipients"] = {"collection": "people"}
    manager.create_campaign(data)
    assert manager.initialize_campaign_conversations("camp-1") == 1
    assert manager.get_campaign("camp-1")["total_recipients"] == 1


def test_initialize_unknown_campaign(manager: CampaignManager) -> None:
    with pytest.raises(CampaignNotFoundError):
        manager.initialize_campaign_conversations("ghost")


@pytest.mark.parametrize("status", ["draft", "cancelled"])
def test_initialize_refuses_draft_and_cancelled(manager: CampaignManager, status: str) -> None:
    manager.create_campaign(sample_campaign(2, status="draft"))
    if status == "cancelled":
        manager.cancel_campaign("camp-1")
    with pytest.raises(InvalidStateTransitionError, match=status):
        manager.initialize_campaign_conversations("camp-1")
    assert db_of(manager)["conversation_states"].count_documents({}) == 0


def test_initialize_with_future_start_schedules_the_first_action(
    manager: CampaignManager,
) -> None:
    running(manager, 2, start_at=START + DAY)
    assert conv(manager, 0)["next_action_at"] == START + DAY


# ---------------------------------------------------------------- get_pending_conversations


def test_pending_returns_due_conversations(manager: CampaignManager) -> None:
    running(manager, 3)
    pending = manager.get_pending_conversations("camp-1")
    assert sorted(doc["_id"] for doc in pending) == sorted(cid(i) for i in range(3))


def test_pending_excludes_conversations_not_yet_due(
    manager: CampaignManager, clock: ManualClock
) -> None:
    running(manager, 2, start_at=START + DAY)
    assert manager.get_pending_conversations("camp-1") == []
    clock.advance(DAY - timedelta(seconds=1))
    assert manager.get_pending_conversations("camp-1") == []
    clock.advance(timedelta(seconds=1))
    assert len(manager.get_pending_conversations("camp-1")) == 2


def test_pending_after_sending_waits_for_the_follow_up(
    manager: CampaignManager, clock: ManualClock
) -> None:
    running(manager, 2)
    manager.process_due_conversations("camp-1")
    assert manager.get_pending_conversations("camp-1") == []
    clock.advance(DAY)
    assert len(manager.get_pending_conversations("camp-1")) == 2


def test_pending_oldest_first_and_limited(manager: CampaignManager, clock: ManualClock) -> None:
    running(manager, 3)
    manager.update_conversation_state(cid(2), {"next_action_at": START - 2 * HOUR})
    manager.update_conversation_state(cid(0), {"next_action_at": START - HOUR})
    pending = manager.get_pending_conversations("camp-1", limit=2)
    assert [doc["_id"] for doc in pending] == [cid(2), cid(0)]


def test_pending_filters_by_stage(manager: CampaignManager) -> None:
    running(manager, 3)
    manager.advance_conversation_stage(cid(1), "consideration")
    pending = manager.get_pending_conversations("camp-1", stage="consideration")
    assert [doc["_id"] for doc in pending] == [cid(1)]


def test_pending_filters_by_status(manager: CampaignManager) -> None:
    running(manager, 2)
    manager.mark_conversation_complete(cid(0))
    manager.update_conversation_state(cid(0), {"next_action_at": START})
    assert [d["_id"] for d in manager.get_pending_conversations("camp-1")] == [cid(1)]
    done = manager.get_pending_conversations("camp-1", status="completed")
    assert [d["_id"] for d in done] == [cid(0)]


def test_pending_unknown_stage(manager: CampaignManager) -> None:
    running(manager, 1)
    with pytest.raises(UnknownStageError, match="nirvana"):
        manager.get_pending_conversations("camp-1", stage="nirvana")


def test_pending_unknown_status(manager: CampaignManager) -> None:
    running(manager, 1)
    with pytest.raises(InvalidInputError, match="status"):
        manager.get_pending_conversations("camp-1", status="sleeping")


def test_pending_bad_limit(manager: CampaignManager) -> None:
    running(manager, 1)
    with pytest.raises(InvalidInputError, match="limit"):
        manager.get_pending_conversations("camp-1", limit=0)


def test_pending_unknown_campaign(manager: CampaignManager) -> None:
    with pytest.raises(CampaignNotFoundError):
        manager.get_pending_conversations("ghost")
