"""The metrics reconcile: recompute from conversations, correct only real drift."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.service.campaign_manager import CampaignManager
from tests import fakes
from tests.conftest import sample_campaign

any_db = fakes.any_db  # fixture: each test on the in-memory fakes, and over the wire


@pytest.fixture
def manager(manager_on_both: CampaignManager) -> CampaignManager:
    """Every test here runs on the in-memory fakes and over the wire (``db`` is the same one)."""
    return manager_on_both


def _scenario(manager: CampaignManager, clock: ManualClock) -> None:
    manager.create_campaign(sample_campaign(6))
    manager.initialize_campaign_conversations("camp-1")
    manager.process_due_conversations("camp-1")
    clock.advance(timedelta(hours=2, milliseconds=250))
    manager.record_inbound_message("camp-1", "user-00001", "m1", "yes please")
    manager.record_inbound_message("camp-1", "user-00002", "m2", "STOP")


def test_exact_metrics_have_no_drift(manager: CampaignManager, clock: ManualClock) -> None:
    _scenario(manager, clock)
    assert manager.reconcile_campaign_metrics("camp-1") == {}


def test_drift_is_measured_and_corrected(
    manager: CampaignManager, clock: ManualClock, db: Any
) -> None:
    _scenario(manager, clock)
    before = manager.get_campaign_metrics("camp-1")
    # Simulate a crash between a state write and its $inc, and a lost duration.
    db.campaign_metrics.update_one(
        {"_id": "camp-1"},
        {
            "$inc": {
                "active_conversations": 2,
                "message_metrics.total_sent": -3,
                "stage_metrics.awareness.total_duration_seconds": -100.0,
            }
        },
    )
    drift = manager.reconcile_campaign_metrics("camp-1")
    assert drift == {
        "active_conversations": -2,
        "message_metrics.total_sent": 3,
        "stage_metrics.awareness.total_duration_seconds": 100.0,
    }
    assert manager.get_campaign_metrics("camp-1") == {
        **before,
        "updated_at": manager.get_campaign_metrics("camp-1")["updated_at"],
    }
    assert manager.reconcile_campaign_metrics("camp-1") == {}


def test_reconcile_defers_when_increments_land_meanwhile(
    manager: CampaignManager, clock: ManualClock, db: Any, monkeypatch: Any
) -> None:
    _scenario(manager, clock)
    db.campaign_metrics.update_one({"_id": "camp-1"}, {"$inc": {"failed_conversations": 1}})
    repo = manager.conversation_state_repository
    original = repo.recount

    def aggregate_while_a_batch_lands(campaign_id: str) -> dict[str, float]:
        result = original(campaign_id)
        # A concurrent batch's $inc arrives between the two reads of the metrics doc.
        db.campaign_metrics.update_one(
            {"_id": "camp-1"}, {"$inc": {"revision": 1, "message_metrics.total_sent": 0}}
        )
        return result

    monkeypatch.setattr(repo, "recount", aggregate_while_a_batch_lands)
    assert manager.reconcile_campaign_metrics("camp-1") == {}
    assert manager.get_campaign_metrics("camp-1")["failed_conversations"] == 1  # untouched
    monkeypatch.setattr(repo, "recount", original)
    assert manager.reconcile_campaign_metrics("camp-1") == {"failed_conversations": -1}
    assert manager.get_campaign_metrics("camp-1")["failed_conversations"] == 0
