"""CampaignManager: create, pause/resume/cancel, the poller and the metrics of a campaign."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.domain.errors import (
    CampaignNotFoundError,
    InvalidDocumentError,
    InvalidInputError,
    InvalidStateTransitionError,
    TemplateNotFoundError,
)
from campaign_worker.service.campaign_manager import CampaignManager
from tests.conftest import START, sample_campaign
from tests.unit.manager.support import (
    DAY,
    HOUR,
    SALES,
    cid,
    conv,
    db_of,
    outbox,
    reply,
    running,
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
