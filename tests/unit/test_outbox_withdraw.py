"""A message whose conversation write lost its compare-and-set is withdrawn from the
outbox (cancelled while still pending), and revived if a later attempt sends it after all."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.service.campaign_manager import CampaignManager
from tests.conftest import sample_campaign


def _started(manager: CampaignManager, clock: ManualClock) -> str:
    manager.create_campaign(sample_campaign(1))
    manager.initialize_campaign_conversations("camp-1")
    manager.process_due_conversations("camp-1")  # first message of awareness
    clock.advance(timedelta(days=1, minutes=1))  # the follow-up is due
    doc = manager.conversation_state_repository.get_by_user("camp-1", "user-00000")
    assert doc is not None
    return str(doc["_id"])


def _outbox(db: Any) -> dict[int, str]:
    return {doc["step"]: doc["status"] for doc in db.outbox.find({"stage": "awareness"})}


def test_a_batch_that_loses_to_a_reply_withdraws_its_follow_up(
    manager: CampaignManager, clock: ManualClock, mock_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversation_id = _started(manager, clock)
    repo = manager.conversation_state_repository
    original = repo.save_transitions

    def reply_lands_first(changes: Any) -> set[str]:
        monkeypatch.setattr(repo, "save_transitions", original)
        manager.record_inbound_message("camp-1", "user-00000", "in-1", "yes, tell me more")
        return original(changes)

    monkeypatch.setattr(repo, "save_transitions", reply_lands_first)
    result = manager.process_due_conversations("camp-1")

    assert (result.claimed, result.written, result.conflicts) == (1, 0, 1)
    assert _outbox(mock_db) == {0: "pending", 1: "cancelled"}
    history = manager.get_conversation_history(conversation_id)
    assert [m["metadata"].get("step") for m in history if m["direction"] == "outbound"] == [
        0,
        0,  # awareness step 0, then consideration step 0 after the reply
    ]
    assert manager.get_conversation(conversation_id)["current_stage"] == "consideration"
    assert manager.get_campaign_metrics("camp-1")["message_metrics"]["total_sent"] == 2


def test_a_retry_that_sends_the_same_message_revives_it(
    manager: CampaignManager, clock: ManualClock, mock_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversation_id = _started(manager, clock)
    repo = manager.conversation_state_repository
    original = repo.save_transitions

    def unrelated_write_lands_first(changes: Any) -> set[str]:
        monkeypatch.setattr(repo, "save_transitions", original)
        manager.update_conversation_state(conversation_id, {"status_reason": "note"})
        return original(changes)

    monkeypatch.setattr(repo, "save_transitions", unrelated_write_lands_first)
    state = manager.process_conversation(conversation_id)

    assert state["stage_step"] == 2
    assert _outbox(mock_db) == {0: "pending", 1: "pending"}
    assert mock_db.outbox.count_documents({}) == 2
