"""Campaign metrics stay exact under concurrent writers (threads and processes).

Several threads and two separate processes, each with its own MongoClient and
CampaignManager, hammer one campaign at once: batch processing, inbound replies (with
duplicates), explicit advances and completions on overlapping conversations. Afterwards
the incrementally maintained metrics document must equal a recomputation from the
conversation documents: the reconcile finds zero drift.
"""

from __future__ import annotations

import multiprocessing
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pymongo
import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.adapters.mongo_conversations import MongoConversationStateRepository
from campaign_worker.bootstrap import build_manager, ensure_indexes
from campaign_worker.service.campaign_manager import CampaignManager
from campaign_worker.settings import Settings
from tests.conftest import START, sample_campaign

pytestmark = pytest.mark.wire

N = 40
CAMPAIGN = "camp-exact"


def _manager(uri: str, db_name: str, now: datetime) -> CampaignManager:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        uri, tz_aware=True, tzinfo=UTC, serverSelectionTimeoutMS=20000
    )
    settings = Settings(mongodb_db=db_name, process_batch_size=10, lease_seconds=5)
    return build_manager(client[db_name], settings, clock=ManualClock(now))


def _work(uri: str, db_name: str, worker: int, now_iso: str) -> None:
    """One concurrent writer: a fixed, overlapping script of operations."""
    manager = _manager(uri, db_name, datetime.fromisoformat(now_iso))
    repo = manager.conversation_state_repository
    assert isinstance(repo, MongoConversationStateRepository)  # the seed's methods
    ids = {
        doc["user_id"]: doc["_id"]
        for doc in repo.find_conversation_states({"campaign_id": CAMPAIGN})
    }
    for round_ in range(3):
        manager.process_due_conversations(CAMPAIGN, limit=7, owner=f"w{worker}-{round_}")
        for index in range(worker % 3, N, 3):
            user = f"user-{index:05d}"
            # Every writer sends the same message ids: duplicates must count once.
            manager.record_inbound_message(CAMPAIGN, user, f"reply-{index}-{round_}", "yes")
            if index % 5 == 0:
                manager.advance_conversation_stage(ids[user], "decision")
            if index % 7 == 0:
                manager.mark_conversation_complete(ids[user])


def test_concurrent_threads_and_processes_leave_zero_drift(wire_uri: str, wire_db: Any) -> None:
    db_name = wire_db.name
    setup = _manager(wire_uri, db_name, START)
    ensure_indexes(setup)
    setup.create_campaign(sample_campaign(N, campaign_id=CAMPAIGN))
    assert setup.initialize_campaign_conversations(CAMPAIGN) == N
    now = (START + timedelta(hours=1)).isoformat()

    ctx = multiprocessing.get_context("spawn")
    processes = [ctx.Process(target=_work, args=(wire_uri, db_name, w, now)) for w in (0, 1)]
    threads = [threading.Thread(target=_work, args=(wire_uri, db_name, w, now)) for w in (2, 3, 4)]
    for process in processes:
        process.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(240)
    for process in processes:
        process.join(240)
        assert process.exitcode == 0

    # Every reply was recorded exactly once, whoever got there first.
    stored = setup.get_campaign_metrics(CAMPAIGN)
    repo = setup.conversation_state_repository
    assert isinstance(repo, MongoConversationStateRepository)  # the seed's methods
    received = sum(
        doc["metrics"]["messages_received"]
        for doc in repo.find_conversation_states({"campaign_id": CAMPAIGN})
    )
    assert received == stored["message_metrics"]["total_received"] == 3 * N
    assert stored["total_recipients"] == N
    assert (
        stored["active_conversations"]
        + stored["completed_conversations"]
        + stored["failed_conversations"]
        + stored["opted_out_conversations"]
    ) == N
    assert setup.reconcile_campaign_metrics(CAMPAIGN) == {}
