"""CampaignManager: processing batches, one conversation, and inbound replies."""

from __future__ import annotations

from typing import Any

import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.domain.documents import message_id_for
from campaign_worker.domain.errors import (
    CampaignNotFoundError,
    ConversationNotFoundError,
    InvalidInputError,
    UnknownStageError,
)
from campaign_worker.domain.partitions import PartitionRange, partition_of
from campaign_worker.service.campaign_manager import CampaignManager
from tests.conftest import START, sample_campaign
from tests.unit.manager.support import (
    DAY,
    HOUR,
    cid,
    conv,
    db_of,
    outbox,
    reply,
    running,
    stored_metrics,
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
