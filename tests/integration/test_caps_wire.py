"""The cross-campaign frequency cap and the suppression list with concurrent worker
processes, over the wire: correctness rests on the database, not on one process."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pymongo
import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.adapters.mongo_send_budget import MongoSendBudgetRepository
from campaign_worker.bootstrap import build_manager, ensure_indexes
from campaign_worker.domain.suppressions import parse_caps
from campaign_worker.service.ports import SendRequest
from campaign_worker.settings import Settings
from tests.conftest import START, sample_campaign

pytestmark = pytest.mark.wire

Doc = dict[str, Any]
PROCESSES = 4
NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def _reserve(uri: str, db_name: str, worker: int, barrier: Any, results: Any) -> None:
    """One worker process: reserve 10 sends to the same two recipients at once."""
    client: pymongo.MongoClient[Doc] = pymongo.MongoClient(uri, tz_aware=True, tzinfo=UTC)
    budget = MongoSendBudgetRepository(client[db_name])
    requests = [
        SendRequest("sms", user, f"w{worker}-{user}-{n}")
        for n in range(5)
        for user in ("ann", "bob")
    ]
    barrier.wait()
    refused = budget.reserve(requests, parse_caps("sms=3/1d"), NOW)
    results.put([request.message_id for request in requests if request.message_id not in refused])
    client.close()


def test_concurrent_processes_never_exceed_the_cap(wire_uri: str, wire_db: Any) -> None:
    spawn = multiprocessing.get_context("spawn")
    barrier, results = spawn.Barrier(PROCESSES), spawn.Queue()
    workers = [
        spawn.Process(target=_reserve, args=(wire_uri, wire_db.name, n, barrier, results))
        for n in range(PROCESSES)
    ]
    for process in workers:
        process.start()
    granted = [message_id for _ in workers for message_id in results.get(timeout=120)]
    for process in workers:
        process.join(60)
        assert process.exitcode == 0
    # 40 requests for each of two people, three slots each: exactly three sends each.
    assert Counter(message_id.split("-")[1] for message_id in granted) == {"ann": 3, "bob": 3}
    # The window rolls: a day later three more fit, and no more.
    budget = MongoSendBudgetRepository(wire_db)
    later = [SendRequest("sms", "ann", f"later-{n}") for n in range(5)]
    refused = budget.reserve(later, parse_caps("sms=3/1d"), NOW + timedelta(days=1))
    assert len(refused) == 2
    assert set(refused.values()) == {NOW + timedelta(days=2)}


def _process_campaign(uri: str, db_name: str, campaign_id: str, barrier: Any) -> None:
    """A worker process processing one campaign's batch."""
    client: pymongo.MongoClient[Doc] = pymongo.MongoClient(uri, tz_aware=True, tzinfo=UTC)
    settings = Settings(mongodb_db=db_name, frequency_caps="*=1/1d", process_batch_size=500)
    manager = build_manager(client[db_name], settings, clock=ManualClock(START))
    barrier.wait()
    manager.process_due_conversations(campaign_id)
    client.close()


def test_three_campaigns_in_three_processes_send_one_message_per_person(
    wire_uri: str, wire_db: Any
) -> None:
    settings = Settings(mongodb_db=wire_db.name, frequency_caps="*=1/1d")
    manager = build_manager(wire_db, settings, clock=ManualClock(START))
    ensure_indexes(manager)
    campaigns = ["c1", "c2", "c3"]
    for campaign_id in campaigns:
        manager.create_campaign(sample_campaign(20, campaign_id))
        manager.initialize_campaign_conversations(campaign_id)
    manager.add_suppression(user_id="user-00000")  # suppressed: messaged by none
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(len(campaigns))
    workers = [
        spawn.Process(target=_process_campaign, args=(wire_uri, wire_db.name, cid, barrier))
        for cid in campaigns
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    per_person = Counter(doc["user_id"] for doc in wire_db["outbox"].find())
    assert per_person == {f"user-{n:05d}": 1 for n in range(1, 20)}
    metrics = [manager.get_campaign_metrics(cid) for cid in campaigns]
    # Every person but the suppressed one got one message; the other two were deferred.
    assert sum(m["message_metrics"]["deferred"] for m in metrics) == 19 * 2
    assert sum(m["message_metrics"]["total_sent"] for m in metrics) == 19
    assert sum(m["opted_out_conversations"] for m in metrics) == 3
    waiting = wire_db["conversation_states"].find({"status": "active", "message_history": []})
    # Deferred, not dropped: each waits, still active, until the window frees a slot.
    assert [doc["next_action_at"] for doc in waiting] == [START + timedelta(days=1)] * 38
