"""CampaignManager: the seed's per-conversation methods (evaluate, advance, complete, update,
history) and its private helpers."""

from __future__ import annotations

from typing import Any

import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.adapters.template_files import ConfigManager
from campaign_worker.domain.documents import message_id_for
from campaign_worker.domain.errors import (
    ConversationNotFoundError,
    InvalidDocumentError,
    InvalidInputError,
    UnknownStageError,
)
from campaign_worker.service.campaign_manager import CampaignManager
from tests.conftest import START
from tests.unit.manager.support import (
    DAY,
    HOUR,
    SALES,
    cid,
    conv,
    outbox,
    public,
    reply,
    running,
    stored_metrics,
)

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
