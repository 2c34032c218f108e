"""CampaignManager on the in-memory fakes of its ports and over the wire: the seed's
methods, idempotency, leases, metrics."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.adapters.template_files import ConfigManager
from campaign_worker.domain.documents import conversation_id_for, message_id_for
from campaign_worker.domain.errors import (
    CampaignNotFoundError,
    ConversationNotFoundError,
    InvalidDocumentError,
    InvalidInputError,
    InvalidStateTransitionError,
    TemplateNotFoundError,
    UnknownStageError,
)
from campaign_worker.domain.partitions import PartitionRange, partition_of
from campaign_worker.service.campaign_manager import CampaignManager
from tests import fakes
from tests.conftest import START, ManagerFactory, sample_campaign

any_db = fakes.any_db  # fixture: each test on the in-memory fakes, and over the wire


@pytest.fixture
def manager(manager_on_both: CampaignManager) -> CampaignManager:
    """Every test here runs on the fakes and over the wire (``db`` is the same one)."""
    return manager_on_both


HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
SALES = ["awareness", "consideration", "decision"]

Doc = dict[str, Any]


def running(manager: CampaignManager, n: int = 3, **extra: Any) -> str:
    campaign_id = manager.create_campaign(sample_campaign(n, **extra))
    assert manager.initialize_campaign_conversations(campaign_id) == n
    return campaign_id


def cid(user: int, campaign_id: str = "camp-1") -> str:
    return conversation_id_for(campaign_id, f"user-{user:05d}")


def conv(manager: CampaignManager, user: int, campaign_id: str = "camp-1") -> Doc:
    return manager.get_conversation(cid(user, campaign_id))


def db_of(manager: CampaignManager) -> Any:
    return manager.conversation_state_repository._db  # type: ignore[attr-defined]


def public(doc: Doc) -> Doc:
    """A conversation without its compare-and-set bookkeeping (``version``, ``last_write``)."""
    return {key: value for key, value in doc.items() if key not in ("version", "last_write")}


def outbox(manager: CampaignManager) -> list[Doc]:
    return list(db_of(manager)["outbox"].find())


def stored_metrics(manager: CampaignManager, campaign_id: str = "camp-1") -> Doc:
    stored = manager.campaign_metrics.get(campaign_id)
    assert stored is not None
    return stored.document()


def reply(manager: CampaignManager, user: int, content: str, message_id: str | None = None) -> Doc:
    return manager.record_inbound_message(
        "camp-1", f"user-{user:05d}", message_id or f"in-{user}-{content}", content
    )


# ---------------------------------------------------------------- create_campaign


def test_create_campaign_stores_it_scheduled(manager: CampaignManager, clock: ManualClock) -> None:
    campaign_id = manager.create_campaign(sample_campaign(2))
    campaign = manager.get_campaign(campaign_id)
    assert campaign_id == "camp-1"
    assert campaign["status"] == "scheduled"
    assert campaign["created_at"] == START
    assert "recipients" not in campaign  # not loaded unless asked for


def test_create_campaign_creates_an_empty_metrics_document(manager: CampaignManager) -> None:
    manager.create_campaign(sample_campaign(2))
    metrics = manager.get_campaign_metrics("camp-1")
    assert metrics["total_recipients"] == 0
    assert list(metrics["stage_metrics"]) == SALES


def test_create_campaign_replay_returns_the_same_id(manager: CampaignManager) -> None:
    assert manager.create_campaign(sample_campaign(2)) == "camp-1"
    assert manager.create_campaign(sample_campaign(2)) == "camp-1"
    assert db_of(manager)["campaigns"].count_documents({}) == 1


def test_create_campaign_unknown_template_id(manager: CampaignManager) -> None:
    with pytest.raises(TemplateNotFoundError, match="nope"):
        manager.create_campaign(sample_campaign(1, template_id="nope"))
    assert db_of(manager)["campaigns"].count_documents({}) == 0


def test_create_campaign_unknown_campaign_type(manager: CampaignManager) -> None:
    with pytest.raises(TemplateNotFoundError, match="'retail'"):
        manager.create_campaign(sample_campaign(1, campaign_type="retail"))


def test_create_campaign_malformed_names_the_field(manager: CampaignManager) -> None:
    data = sample_campaign(1)
    del data["name"]
    with pytest.raises(InvalidDocumentError, match="name"):
        manager.create_campaign(data)


def test_create_campaign_duplicate_recipients(manager: CampaignManager) -> None:
    data = sample_campaign(2)
    data["recipients"][1]["user_id"] = data["recipients"][0]["user_id"]
    with pytest.raises(InvalidDocumentError, match="duplicated"):
        manager.create_campaign(data)


def test_create_campaign_refuses_a_running_status(manager: CampaignManager) -> None:
    with pytest.raises(InvalidInputError, match="status"):
        manager.create_campaign(sample_campaign(1, status="running"))


def test_get_unknown_campaign(manager: CampaignManager) -> None:
    with pytest.raises(CampaignNotFoundError, match="ghost"):
        manager.get_campaign("ghost")


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


# ---------------------------------------------------------------- evaluate_stage_progression


def test_evaluate_fresh_conversation_wants_to_send(manager: CampaignManager) -> None:
    running(manager, 1)
    advance, next_stage, details = manager.evaluate_stage_progression(cid(0))
    assert (advance, next_stage) == (False, "")
    assert details["action"] == "send"
    assert details["step"] == 0
    assert details["next_action_at"] == START + DAY


def test_evaluate_given_state_with_a_reply_advances(manager: CampaignManager) -> None:
    running(manager, 1)
    state = conv(manager, 0)
    state["message_history"].append(
        {
            "message_id": "in-1",
            "direction": "inbound",
            "content": "tell me more",
            "timestamp": START,
            "metadata": {"stage": "awareness"},
        }
    )
    advance, next_stage, details = manager.evaluate_stage_progression(cid(0), state)
    assert (advance, next_stage) == (True, "consideration")
    assert details["action"] == "advance"
    assert details["reason"] == "reply received"


def test_evaluate_is_pure(manager: CampaignManager) -> None:
    running(manager, 1)
    before = conv(manager, 0)
    manager.evaluate_stage_progression(cid(0))
    assert conv(manager, 0) == before
    assert outbox(manager) == []


def test_evaluate_unknown_conversation(manager: CampaignManager) -> None:
    running(manager, 1)
    with pytest.raises(ConversationNotFoundError, match="ghost"):
        manager.evaluate_stage_progression("ghost")


def test_evaluate_malformed_state_names_the_field(manager: CampaignManager) -> None:
    running(manager, 1)
    state = conv(manager, 0)
    state["metrics"]["messages_sent"] = "many"
    with pytest.raises(InvalidDocumentError, match=r"metrics\.messages_sent"):
        manager.evaluate_stage_progression(cid(0), state)


# ---------------------------------------------------------------- advance_conversation_stage


def test_advance_moves_to_the_next_stage(manager: CampaignManager, clock: ManualClock) -> None:
    running(manager, 1)
    clock.advance(2 * HOUR)
    state = manager.advance_conversation_stage(cid(0), "consideration")
    assert state["current_stage"] == "consideration"
    assert state["stages"] == [
        {
            "name": "awareness",
            "entered_at": START,
            "exited_at": START + 2 * HOUR,
            "completed": True,
        },
        {
            "name": "consideration",
            "entered_at": START + 2 * HOUR,
            "exited_at": None,
            "completed": False,
        },
    ]
    assert state["metrics"]["stage_progressions"] == 1
    assert state["next_action_at"] == START + 2 * HOUR
    assert public(conv(manager, 0)) == public(state)


def test_advance_updates_campaign_stage_metrics(
    manager: CampaignManager, clock: ManualClock
) -> None:
    running(manager, 2)
    clock.advance(2 * HOUR)
    manager.advance_conversation_stage(cid(0), "consideration")
    stages = manager.get_campaign_metrics("camp-1")["stage_metrics"]
    assert stages["awareness"] == {"entered": 2, "completed": 1, "avg_duration_seconds": 7200.0}
    assert stages["consideration"] == {"entered": 1, "completed": 0, "avg_duration_seconds": 0.0}


def test_advance_replay_is_a_no_op(manager: CampaignManager, clock: ManualClock) -> None:
    running(manager, 1)
    manager.advance_conversation_stage(cid(0), "consideration")
    stored, metrics = conv(manager, 0), stored_metrics(manager)
    clock.advance(HOUR)
    again = manager.advance_conversation_stage(cid(0), "consideration")
    assert again == stored
    assert conv(manager, 0) == stored  # not even the version moved
    assert stored_metrics(manager) == metrics


def test_advance_replay_after_further_progress_never_moves_back(
    manager: CampaignManager, clock: ManualClock
) -> None:
    running(manager, 1)
    manager.advance_conversation_stage(cid(0), "consideration")
    clock.advance(HOUR)
    manager.advance_conversation_stage(cid(0), "decision")
    stored, metrics = conv(manager, 0), stored_metrics(manager)
    replay = manager.advance_conversation_stage(cid(0), "consideration")
    assert replay["current_stage"] == "decision"
    assert conv(manager, 0) == stored
    assert stored_metrics(manager) == metrics
    assert manager.advance_conversation_stage(cid(0), "awareness")["current_stage"] == "decision"


def test_advance_then_processing_sends_the_new_stages_first_message(
    manager: CampaignManager,
) -> None:
    running(manager, 1)
    manager.advance_conversation_stage(cid(0), "consideration")
    manager.process_due_conversations("camp-1")
    ids = [m["_id"] for m in outbox(manager)]
    assert ids == [message_id_for(cid(0), "consideration", 0)]


def test_advance_a_finished_conversation_is_a_no_op(manager: CampaignManager) -> None:
    running(manager, 1)
    manager.mark_conversation_complete(cid(0))
    done = conv(manager, 0)
    assert manager.advance_conversation_stage(cid(0), "decision") == done
    assert conv(manager, 0) == done


def test_advance_to_unknown_stage(manager: CampaignManager) -> None:
    running(manager, 1)
    with pytest.raises(UnknownStageError, match="nirvana"):
        manager.advance_conversation_stage(cid(0), "nirvana")
    assert conv(manager, 0)["current_stage"] == "awareness"


def test_advance_unknown_conversation(manager: CampaignManager) -> None:
    running(manager, 1)
    with pytest.raises(ConversationNotFoundError):
        manager.advance_conversation_stage("ghost", "consideration")


# ---------------------------------------------------------------- mark_conversation_complete


def test_mark_complete(manager: CampaignManager, clock: ManualClock) -> None:
    running(manager, 2)
    clock.advance(HOUR)
    state = manager.mark_conversation_complete(cid(0))
    assert state["status"] == "completed"
    assert state["finished_at"] == START + HOUR
    assert state["next_action_at"] is None
    assert state["stages"][0]["exited_at"] == START + HOUR
    assert state["stages"][0]["completed"] is True
    metrics = manager.get_campaign_metrics("camp-1")
    assert (metrics["active_conversations"], metrics["completed_conversations"]) == (1, 1)
    assert metrics["stage_metrics"]["awareness"]["completed"] == 1
    assert metrics["stage_metrics"]["awareness"]["avg_duration_seconds"] == 3600.0


def test_mark_complete_twice_changes_nothing(manager: CampaignManager, clock: ManualClock) -> None:
    running(manager, 1)
    manager.mark_conversation_complete(cid(0))
    stored, metrics = conv(manager, 0), stored_metrics(manager)
    clock.advance(HOUR)
    assert manager.mark_conversation_complete(cid(0)) == stored
    assert conv(manager, 0) == stored
    assert stored_metrics(manager) == metrics


def test_mark_complete_leaves_an_opted_out_conversation_alone(manager: CampaignManager) -> None:
    running(manager, 1)
    reply(manager, 0, "STOP")
    assert manager.mark_conversation_complete(cid(0))["status"] == "opted_out"
    assert manager.get_campaign_metrics("camp-1")["completed_conversations"] == 0


def test_mark_complete_unknown_conversation(manager: CampaignManager) -> None:
    with pytest.raises(ConversationNotFoundError):
        manager.mark_conversation_complete("ghost")


# ---------------------------------------------------------------- update_conversation_state


def test_update_merges_context(manager: CampaignManager, clock: ManualClock) -> None:
    running(manager, 1)
    clock.advance(HOUR)
    state = manager.update_conversation_state(
        cid(0), {"context": {"attributes": {"first_name": "Bea"}, "timezone": "Europe/Oslo"}}
    )
    assert state["context"]["attributes"] == {"first_name": "Bea"}
    assert state["context"]["timezone"] == "Europe/Oslo"
    assert state["context"]["template_id"] == "default"
    assert state["last_active"] == START + HOUR
    assert public(conv(manager, 0)) == public(state)


def test_update_next_action_at_and_reason(manager: CampaignManager) -> None:
    running(manager, 1)
    state = manager.update_conversation_state(
        cid(0), {"next_action_at": START + DAY, "status_reason": "snoozed"}
    )
    assert state["next_action_at"] == START + DAY
    assert state["status_reason"] == "snoozed"
    assert manager.get_pending_conversations("camp-1") == []


def test_update_bumps_the_stored_version(manager: CampaignManager) -> None:
    # So a batch that read the conversation before the update loses its compare-and-set.
    running(manager, 1)
    before = conv(manager, 0)["version"]
    manager.update_conversation_state(cid(0), {"status_reason": "x"})
    assert conv(manager, 0)["version"] == before + 1


@pytest.mark.parametrize("field", ["current_stage", "status", "message_history", "metrics", "_id"])
def test_update_refuses_progress_fields(manager: CampaignManager, field: str) -> None:
    running(manager, 1)
    before = conv(manager, 0)
    with pytest.raises(InvalidInputError, match=field):
        manager.update_conversation_state(cid(0), {field: "x"})
    assert conv(manager, 0) == before


@pytest.mark.parametrize("updates", [{}, None, ["status_reason"]])
def test_update_needs_a_non_empty_object(manager: CampaignManager, updates: Any) -> None:
    running(manager, 1)
    with pytest.raises(InvalidInputError, match="non-empty"):
        manager.update_conversation_state(cid(0), updates)


def test_update_malformed_value_names_the_field(manager: CampaignManager) -> None:
    running(manager, 1)
    with pytest.raises(InvalidDocumentError, match="next_action_at"):
        manager.update_conversation_state(cid(0), {"next_action_at": "soon-ish"})


def test_update_context_must_be_an_object(manager: CampaignManager) -> None:
    running(manager, 1)
    with pytest.raises(InvalidInputError, match="context"):
        manager.update_conversation_state(cid(0), {"context": "x"})


def test_update_cannot_change_available_stages(manager: CampaignManager) -> None:
    running(manager, 1)
    with pytest.raises(InvalidInputError, match="available_stages"):
        manager.update_conversation_state(
            cid(0), {"context": {"available_stages": ["awareness", "decision"]}}
        )


def test_update_unknown_conversation(manager: CampaignManager) -> None:
    with pytest.raises(ConversationNotFoundError):
        manager.update_conversation_state("ghost", {"status_reason": "x"})


# ---------------------------------------------------------------- get_conversation_history


def test_history_lists_messages_in_order(manager: CampaignManager, clock: ManualClock) -> None:
    running(manager, 1)
    manager.process_due_conversations("camp-1")
    clock.advance(HOUR)
    reply(manager, 0, "sounds good", message_id="sms-1")
    history = manager.get_conversation_history(cid(0))
    assert [(m["direction"], m["metadata"]["stage"]) for m in history] == [
        ("outbound", "awareness"),
        ("inbound", "awareness"),
        ("outbound", "consideration"),
    ]
    assert history[0]["message_id"] == message_id_for(cid(0), "awareness", 0)
    assert history[0]["content"].startswith("Hi Ann0!")
    assert history[1]["message_id"] == "sms-1"
    assert history[1]["timestamp"] == START + HOUR


def test_history_of_a_new_conversation_is_empty(manager: CampaignManager) -> None:
    running(manager, 1)
    assert manager.get_conversation_history(cid(0)) == []


def test_history_unknown_conversation(manager: CampaignManager) -> None:
    with pytest.raises(ConversationNotFoundError):
        manager.get_conversation_history("ghost")


def test_malformed_stored_conversation_is_reported_with_the_field(
    manager: CampaignManager, db: Any
) -> None:
    running(manager, 1)
    db["conversation_states"].update_one({"_id": cid(0)}, {"$set": {"status": "zombie"}})
    with pytest.raises(InvalidDocumentError, match="status"):
        manager.get_conversation_history(cid(0))


# ---------------------------------------------------------------- private seed helpers


def test_get_stage_data_returns_the_template_stage(manager: CampaignManager) -> None:
    running(manager, 1)
    data = manager._get_stage_data(conv(manager, 0), "decision")
    assert data["name"] == "decision"
    assert data["advance_when"]["any"][1]["regex"] == r"\b(buy|yes|deal|start)\b"
    assert data["on_reply"]["question"] == {"goto": "consideration", "exit": None}
    assert data["max_followups_without_reply"] == {"count": 1, "then": "fail"}
    assert len(data["messages"]) == 2


def test_get_stage_data_unknown_stage(manager: CampaignManager) -> None:
    running(manager, 1)
    with pytest.raises(UnknownStageError, match="nirvana"):
        manager._get_stage_data(conv(manager, 0), "nirvana")


def test_get_stage_data_malformed_state(manager: CampaignManager) -> None:
    with pytest.raises(InvalidDocumentError, match="campaign_id"):
        manager._get_stage_data({"_id": "x"}, "awareness")


def test_get_stages_for_campaign_type_from_model_and_dict(manager: CampaignManager) -> None:
    template = ConfigManager().get_template("default")
    assert manager._get_stages_for_campaign_type(template, "sales") == SALES
    raw = template.model_dump(mode="json")
    assert manager._get_stages_for_campaign_type(raw, "onboarding") == [
        "welcome",
        "setup",
        "activation",
    ]


def test_get_stages_for_unknown_campaign_type(manager: CampaignManager) -> None:
    template = ConfigManager().get_template("default")
    with pytest.raises(InvalidInputError, match="'retail'"):
        manager._get_stages_for_campaign_type(template, "retail")


def test_get_stages_for_malformed_template(manager: CampaignManager) -> None:
    with pytest.raises(InvalidDocumentError, match="campaign_types"):
        manager._get_stages_for_campaign_type({"template_id": "x"}, "sales")


def test_should_advance_follows_the_stage_rule(manager: CampaignManager) -> None:
    running(manager, 1)
    state = conv(manager, 0)
    stage = manager._get_stage_data(state, "awareness")
    assert manager._should_advance_to_next_stage(state, stage) == (
        False,
        "no 'any' condition met",
    )
    state["message_history"].append(
        {
            "message_id": "in-1",
            "direction": "inbound",
            "content": "hi",
            "timestamp": START,
            "metadata": {"stage": "awareness"},
        }
    )
    assert manager._should_advance_to_next_stage(state, stage) == (True, "reply received")


def test_should_advance_malformed_stage_data(manager: CampaignManager) -> None:
    running(manager, 1)
    with pytest.raises(InvalidDocumentError, match="advance_when"):
        manager._should_advance_to_next_stage(
            conv(manager, 0), {"name": "awareness", "advance_when": {"bogus": 1}}
        )


# ---------------------------------------------------------------- process_due_conversations


def test_process_sends_each_due_conversation_its_first_message(manager: CampaignManager) -> None:
    running(manager, 3)
    result = manager.process_due_conversations("camp-1")
    assert (result.claimed, result.written, result.sent, result.conflicts) == (3, 3, 3, 0)
    assert sorted(m["_id"] for m in outbox(manager)) == sorted(
        message_id_for(cid(i), "awareness", 0) for i in range(3)
    )
    box = {m["conversation_id"]: m for m in outbox(manager)}
    assert box[cid(2)]["content"].startswith("Hi Ann2! We built our product")
    assert box[cid(2)]["status"] == "pending"
    state = conv(manager, 2)
    assert state["metrics"]["messages_sent"] == 1
    assert state["next_action_at"] == START + DAY
    assert state["lease_owner"] is None or "lease_owner" not in state
    assert state["partition"] == partition_of(cid(2))


def test_process_replay_at_the_same_time_does_nothing(manager: CampaignManager) -> None:
    running(manager, 3)
    manager.process_due_conversations("camp-1")
    again = manager.process_due_conversations("camp-1")
    assert (again.claimed, again.sent) == (0, 0)
    assert len(outbox(manager)) == 3


def test_process_sends_follow_ups_when_due(manager: CampaignManager, clock: ManualClock) -> None:
    running(manager, 2)
    manager.process_due_conversations("camp-1")
    clock.advance(DAY)
    result = manager.process_due_conversations("camp-1")
    assert result.sent == 2
    assert conv(manager, 0)["next_action_at"] == START + 3 * DAY  # second message waits 2d
    assert len(outbox(manager)) == 4


def test_process_respects_the_batch_limit(manager: CampaignManager) -> None:
    running(manager, 5)
    assert manager.process_due_conversations("camp-1", limit=2).claimed == 2
    assert manager.process_due_conversations("camp-1", limit=2).claimed == 2
    assert manager.process_due_conversations("camp-1", limit=2).claimed == 1


def test_process_by_stage(manager: CampaignManager) -> None:
    running(manager, 3)
    manager.advance_conversation_stage(cid(0), "consideration")
    result = manager.process_due_conversations("camp-1", stage="consideration")
    assert result.claimed == 1
    assert [m["stage"] for m in outbox(manager)] == ["consideration"]


def test_process_unknown_stage(manager: CampaignManager) -> None:
    running(manager, 1)
    with pytest.raises(UnknownStageError):
        manager.process_due_conversations("camp-1", stage="nirvana")


def test_process_unknown_campaign(manager: CampaignManager) -> None:
    with pytest.raises(CampaignNotFoundError):
        manager.process_due_conversations("ghost")


def test_process_skips_a_campaign_that_is_not_running(manager: CampaignManager) -> None:
    manager.create_campaign(sample_campaign(2))
    result = manager.process_due_conversations("camp-1")
    assert result.skipped_reason == "campaign is scheduled"
    assert result.claimed == 0


def test_partition_ranges_split_the_due_set_without_overlap(manager: CampaignManager) -> None:
    running(manager, 40)
    taken: dict[int, set[str]] = {}
    for index in range(4):
        result = manager.process_due_conversations(
            "camp-1", limit=100, partition=index, partitions=4
        )
        assert result.claimed == result.written and not result.more
        taken[index] = {
            doc["_id"]
            for doc in db_of(manager)["conversation_states"].find({"metrics.messages_sent": 1})
        } - set().union(*taken.values())
    assert sum(len(ids) for ids in taken.values()) == 40
    for index, ids in taken.items():
        span = PartitionRange(index, 4)
        assert all(span.low <= partition_of(i) < span.high for i in ids)
    assert len(outbox(manager)) == 40


def test_documents_without_a_partition_go_to_the_first_range_and_get_one(
    manager: CampaignManager,
) -> None:
    running(manager, 12)
    # As an older release wrote them.
    db_of(manager)["conversation_states"].update_many({}, {"$unset": {"partition": ""}})
    later = manager.process_due_conversations("camp-1", partition=1, partitions=2)
    assert later.claimed == 0
    first = manager.process_due_conversations("camp-1", partition=0, partitions=2)
    assert first.claimed == first.written == 12
    assert {doc["partition"] for doc in db_of(manager)["conversation_states"].find()} == {
        partition_of(cid(i)) for i in range(12)
    }


@pytest.mark.parametrize(
    ("partition", "partitions", "message"),
    [
        (0, None, "together"),
        (None, 2, "together"),
        (2, 2, "between 0 and 1"),
        (-1, 2, "between 0 and 1"),
        (0, 0, "between 1 and 1024"),
        (0, 2048, "between 1 and 1024"),
        ("0", 2, "integer"),
        (True, 2, "integer"),
    ],
)
def test_malformed_partition_arguments_are_refused_clearly(
    manager: CampaignManager, partition: Any, partitions: Any, message: str
) -> None:
    running(manager, 1)
    with pytest.raises(InvalidInputError, match=message):
        manager.process_due_conversations("camp-1", partition=partition, partitions=partitions)


def test_a_full_range_reports_more_and_hands_over_registered_successors(
    manager: CampaignManager,
) -> None:
    running(manager, 7)
    handed: list[Any] = []
    result = manager.process_due_conversations("camp-1", limit=2, on_more=handed.extend)
    assert (result.claimed, result.more) == (2, True)
    # Below the fan-out limit a range continues as its two halves, registered already.
    assert [d.span for d in handed] == list(PartitionRange().split())
    inflight = stored_metrics(manager)["inflight"]
    assert set(inflight) == {d.token for d in handed}

    rest = [
        manager.process_due_conversations(
            "camp-1", registration=d.token, on_more=handed.extend, **d.span.as_kwargs()
        )
        for d in list(handed)
    ]
    assert sum(r.claimed for r in rest) == 5 and not any(r.more for r in rest)
    assert stored_metrics(manager)["inflight"] == {}  # each deregistered itself
    assert stored_metrics(manager)["message_metrics"]["total_sent"] == 7


def test_a_crash_before_the_state_write_records_and_publishes_nothing(
    manager: CampaignManager, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    running(manager, 3)
    repo = manager.conversation_state_repository
    real_write = repo.write_transitions

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("worker died before the state write")

    monkeypatch.setattr(repo, "write_transitions", crash)
    with pytest.raises(RuntimeError):
        manager.process_due_conversations("camp-1", owner="A")
    monkeypatch.setattr(repo, "write_transitions", real_write)
    assert outbox(manager) == []  # nothing is deliverable that no conversation recorded

    # Nothing leased: the retry reads them again at once.
    result = manager.process_due_conversations("camp-1", owner="B")
    assert (result.claimed, result.written) == (3, 3)
    recorded = sorted(conv(manager, i)["message_history"][0]["message_id"] for i in range(3))
    assert sorted(m["_id"] for m in outbox(manager)) == recorded
    assert stored_metrics(manager)["message_metrics"]["total_sent"] == 3


def test_a_crash_after_the_state_write_is_published_by_the_sweep_once(
    manager: CampaignManager, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    running(manager, 3)
    real_enqueue = manager.outbox.enqueue_many

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("worker died between the state write and the outbox insert")

    monkeypatch.setattr(manager.outbox, "enqueue_many", crash)
    with pytest.raises(RuntimeError):
        manager.process_due_conversations("camp-1")
    monkeypatch.setattr(manager.outbox, "enqueue_many", real_enqueue)
    states = [conv(manager, i) for i in range(3)]
    assert outbox(manager) == []
    assert all(len(s["unpublished"]) == 1 for s in states)

    assert manager.poll_campaigns().republished == 0  # within the grace: maybe in flight
    clock.advance(manager.publish_grace)
    assert manager.poll_campaigns().republished == 3
    assert manager.poll_campaigns().republished == 0  # cleared: published once
    recorded = sorted(s["message_history"][0]["message_id"] for s in states)
    assert sorted(m["_id"] for m in outbox(manager)) == recorded
    assert all(conv(manager, i)["unpublished"] == [] for i in range(3))


def test_lost_race_counts_only_writes_that_landed(
    manager: CampaignManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    running(manager, 3)
    repo = manager.conversation_state_repository
    real_write = repo.write_transitions

    def concurrent_writer_first(*args: Any, **kwargs: Any) -> Any:
        db_of(manager)["conversation_states"].update_one(
            {"_id": cid(1)},
            {"$set": {"status_reason": "touched meanwhile"}, "$inc": {"version": 1}},
        )
        return real_write(*args, **kwargs)

    monkeypatch.setattr(repo, "write_transitions", concurrent_writer_first)
    result = manager.process_due_conversations("camp-1")
    assert (result.written, result.conflicts, result.sent) == (2, 1, 2)
    assert conv(manager, 1)["message_history"] == []
    assert stored_metrics(manager)["message_metrics"]["total_sent"] == 2


def test_invalid_stored_conversation_is_failed_not_retried_forever(
    manager: CampaignManager, db: Any
) -> None:
    running(manager, 2)
    db["conversation_states"].update_one({"_id": cid(0)}, {"$set": {"metrics.messages_sent": -5}})
    result = manager.process_due_conversations("camp-1")
    assert (result.claimed, result.invalid, result.written) == (2, 1, 1)
    raw = db["conversation_states"].find_one({"_id": cid(0)})
    assert raw["status"] == "failed"
    assert "metrics.messages_sent" in raw["status_reason"]
    assert raw["next_action_at"] is None
    metrics = manager.get_campaign_metrics("camp-1")
    assert (metrics["active_conversations"], metrics["failed_conversations"]) == (1, 1)


# ---------------------------------------------------------------- process_conversation


def test_process_conversation_sends_what_is_due(manager: CampaignManager) -> None:
    running(manager, 2)
    state = manager.process_conversation(cid(0))
    assert state["metrics"]["messages_sent"] == 1
    assert [m["conversation_id"] for m in outbox(manager)] == [cid(0)]
    assert stored_metrics(manager)["message_metrics"]["total_sent"] == 1


def test_process_conversation_replay_sends_nothing_more(manager: CampaignManager) -> None:
    running(manager, 1)
    first = manager.process_conversation(cid(0))
    again = manager.process_conversation(cid(0))
    assert again["message_history"] == first["message_history"]
    assert len(outbox(manager)) == 1


def test_process_conversation_finished_is_unchanged(manager: CampaignManager) -> None:
    running(manager, 1)
    manager.mark_conversation_complete(cid(0))
    done = conv(manager, 0)
    assert manager.process_conversation(cid(0)) == done
    assert conv(manager, 0) == done
    assert outbox(manager) == []


def test_process_conversation_unknown(manager: CampaignManager) -> None:
    with pytest.raises(ConversationNotFoundError):
        manager.process_conversation("ghost")


@pytest.mark.parametrize("stop", ["pause_campaign", "cancel_campaign"])
def test_process_conversation_sends_nothing_when_campaign_stopped(
    manager: CampaignManager, stop: str
) -> None:
    running(manager, 1)
    getattr(manager, stop)("camp-1")
    state = manager.process_conversation(cid(0))
    assert state["message_history"] == []
    assert outbox(manager) == []


# ---------------------------------------------------------------- record_inbound_message


def test_reply_advances_and_sends_the_next_stage_at_once(
    manager: CampaignManager, clock: ManualClock
) -> None:
    running(manager, 1)
    manager.process_due_conversations("camp-1")
    clock.advance(HOUR)
    result = reply(manager, 0, "Yes, tell me more")
    assert result == {
        "conversation_id": cid(0),
        "duplicate": False,
        "actions": ["advance", "send", "wait"],
        "status": "active",
        "current_stage": "consideration",
    }
    assert outbox(manager)[-1]["_id"] == message_id_for(cid(0), "consideration", 0)
    state = conv(manager, 0)
    assert state["metrics"]["messages_received"] == 1
    assert state["message_history"][1]["metadata"]["stage"] == "awareness"
    assert state["message_history"][1]["metadata"]["received_at"] == START + HOUR


def test_duplicate_inbound_message_id_is_stored_once(
    manager: CampaignManager, clock: ManualClock
) -> None:
    running(manager, 1)
    manager.process_due_conversations("camp-1")
    reply(manager, 0, "hi", message_id="sms-1")
    metrics = stored_metrics(manager)
    clock.advance(HOUR)
    again = reply(manager, 0, "hi", message_id="sms-1")
    assert again["duplicate"] is True
    assert again["actions"] == []
    state = conv(manager, 0)
    assert [m["message_id"] for m in state["message_history"]].count("sms-1") == 1
    assert state["metrics"]["messages_received"] == 1
    assert stored_metrics(manager) == metrics


def test_inbound_stop_opts_out(manager: CampaignManager) -> None:
    running(manager, 2)
    manager.process_due_conversations("camp-1")
    result = reply(manager, 1, "stop!")
    assert result["status"] == "opted_out"
    assert result["actions"] == ["opt_out"]
    metrics = manager.get_campaign_metrics("camp-1")
    assert (metrics["active_conversations"], metrics["opted_out_conversations"]) == (1, 1)


def test_inbound_on_a_finished_conversation_is_stored_without_action(
    manager: CampaignManager,
) -> None:
    running(manager, 1)
    manager.mark_conversation_complete(cid(0))
    result = reply(manager, 0, "thanks")
    assert (result["status"], result["actions"]) == ("completed", [])
    assert conv(manager, 0)["message_history"][-1]["content"] == "thanks"
    assert stored_metrics(manager)["message_metrics"]["total_received"] == 1


def test_inbound_while_paused_is_kept_due_until_resume(
    manager: CampaignManager, clock: ManualClock
) -> None:
    running(manager, 1)
    manager.process_due_conversations("camp-1")
    manager.pause_campaign("camp-1")
    clock.advance(HOUR)
    result = reply(manager, 0, "interested")
    assert (result["current_stage"], result["actions"]) == ("awareness", [])
    assert conv(manager, 0)["next_action_at"] == START + HOUR
    manager.resume_campaign("camp-1")
    manager.process_due_conversations("camp-1")
    assert conv(manager, 0)["current_stage"] == "consideration"


def test_inbound_unknown_campaign(manager: CampaignManager) -> None:
    with pytest.raises(CampaignNotFoundError):
        manager.record_inbound_message("ghost", "user-00000", "m1", "hi")


def test_inbound_unknown_user(manager: CampaignManager) -> None:
    running(manager, 1)
    with pytest.raises(ConversationNotFoundError, match="nobody"):
        manager.record_inbound_message("camp-1", "nobody", "m1", "hi")


def test_inbound_empty_message_id(manager: CampaignManager) -> None:
    running(manager, 1)
    with pytest.raises(InvalidInputError, match="message_id"):
        manager.record_inbound_message("camp-1", "user-00000", "", "hi")


def test_inbound_non_string_content(manager: CampaignManager) -> None:
    running(manager, 1)
    with pytest.raises(InvalidInputError, match="content"):
        manager.record_inbound_message("camp-1", "user-00000", "m1", 42)  # type: ignore[arg-type]


# ---------------------------------------------------------------- pause / resume / cancel


def test_pause_stops_processing(manager: CampaignManager) -> None:
    running(manager, 2)
    assert manager.pause_campaign("camp-1")["status"] == "paused"
    result = manager.process_due_conversations("camp-1")
    assert result.skipped_reason == "campaign is paused"
    assert outbox(manager) == []


def test_pause_twice_is_harmless(manager: CampaignManager) -> None:
    running(manager, 1)
    manager.pause_campaign("camp-1")
    assert manager.pause_campaign("camp-1")["status"] == "paused"


def test_resume_an_initialized_campaign_runs_it(manager: CampaignManager) -> None:
    running(manager, 2)
    manager.pause_campaign("camp-1")
    assert manager.resume_campaign("camp-1")["status"] == "running"
    assert manager.process_due_conversations("camp-1").sent == 2


def test_resume_a_campaign_never_initialized_schedules_it(manager: CampaignManager) -> None:
    manager.create_campaign(sample_campaign(1))
    manager.pause_campaign("camp-1")
    with pytest.raises(InvalidStateTransitionError):
        manager.initialize_campaign_conversations("camp-1")
    assert manager.resume_campaign("camp-1")["status"] == "scheduled"


def test_cancel_is_final(manager: CampaignManager) -> None:
    running(manager, 1)
    assert manager.cancel_campaign("camp-1")["status"] == "cancelled"
    assert manager.cancel_campaign("camp-1")["status"] == "cancelled"
    with pytest.raises(InvalidStateTransitionError, match="cancelled"):
        manager.resume_campaign("camp-1")
    with pytest.raises(InvalidStateTransitionError):
        manager.pause_campaign("camp-1")
    # Processing a cancelled campaign settles its active conversations, then finds none.
    assert manager.process_due_conversations("camp-1").finished == {"cancelled": 1}
    assert manager.process_due_conversations("camp-1").claimed == 0


def test_cancel_keeps_conversation_state(manager: CampaignManager) -> None:
    running(manager, 1)
    manager.process_due_conversations("camp-1")
    manager.cancel_campaign("camp-1")
    assert conv(manager, 0)["metrics"]["messages_sent"] == 1


@pytest.mark.parametrize("action", ["pause_campaign", "resume_campaign", "cancel_campaign"])
def test_lifecycle_unknown_campaign(manager: CampaignManager, action: str) -> None:
    with pytest.raises(CampaignNotFoundError):
        getattr(manager, action)("ghost")


# ---------------------------------------------------------------- poll_campaigns


def test_poll_claims_a_due_scheduled_campaign_for_initialization(
    manager: CampaignManager,
) -> None:
    manager.create_campaign(sample_campaign(2))
    result = manager.poll_campaigns(owner="p1")
    assert result.initialize == ["camp-1"]
    campaign = manager.get_campaign("camp-1")
    assert (campaign["status"], campaign["lease_owner"]) == ("initializing", "p1")
    assert manager.initialize_campaign_conversations("camp-1") == 2
    assert manager.get_campaign("camp-1")["status"] == "running"


def test_poll_does_not_claim_twice_until_the_lease_expires(
    manager: CampaignManager, clock: ManualClock
) -> None:
    manager.create_campaign(sample_campaign(1))
    assert manager.poll_campaigns(owner="p1").initialize == ["camp-1"]
    assert manager.poll_campaigns(owner="p2").initialize == []
    clock.advance(timedelta(seconds=manager.lease_seconds * 5))
    assert manager.poll_campaigns(owner="p2").initialize == ["camp-1"]
    assert manager.get_campaign("camp-1")["lease_owner"] == "p2"


def test_poll_waits_for_start_at(manager: CampaignManager, clock: ManualClock) -> None:
    manager.create_campaign(sample_campaign(1, start_at=START + HOUR))
    assert manager.poll_campaigns().initialize == []
    clock.advance(HOUR)
    assert manager.poll_campaigns().initialize == ["camp-1"]


def test_poll_ignores_draft_campaigns(manager: CampaignManager) -> None:
    manager.create_campaign(sample_campaign(1, status="draft"))
    assert manager.poll_campaigns().initialize == []


def test_poll_lists_running_campaigns_with_due_work(
    manager: CampaignManager, clock: ManualClock
) -> None:
    running(manager, 2)
    result = manager.poll_campaigns()
    assert result.process == ["camp-1"]
    assert result.oldest_due == START
    manager.process_due_conversations("camp-1")
    result = manager.poll_campaigns()
    assert (result.process, result.completed, result.oldest_due) == ([], [], None)
    clock.advance(DAY)
    assert manager.poll_campaigns().process == ["camp-1"]


def test_poll_completes_a_campaign_with_nothing_active(manager: CampaignManager) -> None:
    running(manager, 2)
    manager.mark_conversation_complete(cid(0))
    reply(manager, 1, "STOP")
    result = manager.poll_campaigns()
    assert result.completed == ["camp-1"]
    assert manager.get_campaign("camp-1")["status"] == "completed"
    assert manager.poll_campaigns().completed == []


# ---------------------------------------------------------------- metrics


def test_metrics_unknown_campaign(manager: CampaignManager) -> None:
    with pytest.raises(CampaignNotFoundError):
        manager.get_campaign_metrics("ghost")


def test_metrics_document_after_a_scripted_scenario(
    manager: CampaignManager, clock: ManualClock
) -> None:
    running(manager, 4)
    manager.process_due_conversations("camp-1")  # 4 first messages
    clock.set(START + HOUR)
    reply(manager, 0, "yes")  # awareness -> consideration after 1h; consideration msg
    clock.set(START + 2 * HOUR)
    reply(manager, 1, "STOP")  # opted out
    clock.set(START + 3 * HOUR)
    reply(manager, 0, "what about pricing?")  # consideration -> decision after 2h; msg
    clock.set(START + 4 * HOUR)
    reply(manager, 0, "ok buy")  # decision completed after 1h
    clock.set(START + DAY)
    assert manager.process_due_conversations("camp-1").sent == 2  # follow-ups to 2 and 3
    manager.mark_conversation_complete(cid(2))  # awareness completed after 1d

    assert manager.get_campaign_metrics("camp-1") == {
        "campaign_id": "camp-1",
        "total_recipients": 4,
        "active_conversations": 1,
        "completed_conversations": 2,
        "failed_conversations": 0,
        "opted_out_conversations": 1,
        "cancelled_conversations": 0,
        "invalid_recipients": 0,
        "stage_metrics": {
            "awareness": {"entered": 4, "completed": 2, "avg_duration_seconds": 45000.0},
            "consideration": {"entered": 1, "completed": 1, "avg_duration_seconds": 7200.0},
            "decision": {"entered": 1, "completed": 1, "avg_duration_seconds": 3600.0},
        },
        "message_metrics": {
            "total_sent": 8,
            "total_received": 4,
            "response_rate": 0.5,
            "deferred": 0,
        },
        # The transitions that happened, exits included (branched funnel).
        "funnel": {
            "awareness": {"consideration": 1, "exit:opted_out": 1, "exit:completed": 1},
            "consideration": {"decision": 1},
            "decision": {"exit:completed": 1},
        },
        "updated_at": START + DAY,
    }


def test_metrics_agree_with_the_conversations(manager: CampaignManager, clock: ManualClock) -> None:
    running(manager, 3)
    manager.process_due_conversations("camp-1")
    reply(manager, 0, "yes")
    clock.advance(DAY)
    manager.process_due_conversations("camp-1")
    states = [conv(manager, i) for i in range(3)]
    metrics = manager.get_campaign_metrics("camp-1")
    assert metrics["message_metrics"]["total_sent"] == sum(
        s["metrics"]["messages_sent"] for s in states
    )
    assert metrics["message_metrics"]["total_received"] == sum(
        s["metrics"]["messages_received"] for s in states
    )
    assert len(outbox(manager)) == metrics["message_metrics"]["total_sent"]


def test_metrics_order_stages_as_the_template(manager: CampaignManager) -> None:
    running(manager, 1)
    manager.advance_conversation_stage(cid(0), "decision")
    assert list(manager.get_campaign_metrics("camp-1")["stage_metrics"]) == SALES


def test_malformed_metrics_document_names_the_field(manager: CampaignManager, db: Any) -> None:
    running(manager, 1)
    db["campaign_metrics"].update_one({"_id": "camp-1"}, {"$set": {"active_conversations": "many"}})
    with pytest.raises(InvalidDocumentError, match="active_conversations"):
        manager.get_campaign_metrics("camp-1")


def test_onboarding_drip_reaches_completion(manager: CampaignManager, clock: ManualClock) -> None:
    data = copy.deepcopy(sample_campaign(1))
    data["campaign_type"] = "onboarding"
    manager.create_campaign(data)
    manager.initialize_campaign_conversations("camp-1")
    for _ in range(20):
        manager.process_due_conversations("camp-1")
        next_at = conv(manager, 0)["next_action_at"]
        if next_at is None:
            break
        clock.set(max(next_at, clock.now()))
    state = conv(manager, 0)
    assert state["status"] == "completed"
    assert [s["name"] for s in state["stages"]] == ["welcome", "setup", "activation"]
    assert manager.poll_campaigns().completed == ["camp-1"]


@pytest.mark.parametrize("limit", [0, -1])
def test_process_bad_limit(manager: CampaignManager, limit: int) -> None:
    running(manager, 1)
    with pytest.raises(InvalidInputError, match="limit"):
        manager.process_due_conversations("camp-1", limit=limit)
    assert outbox(manager) == []


def test_update_cannot_change_template_id(manager: CampaignManager) -> None:
    # The conversation would no longer load: every later operation would fail.
    running(manager, 1)
    with pytest.raises(InvalidInputError, match="template_id"):
        manager.update_conversation_state(cid(0), {"context": {"template_id": "other"}})
    assert conv(manager, 0)["context"]["template_id"] == "default"
