"""What the README tells clients about ETA/countdown: a task delayed past the Redis
visibility timeout is delivered again (Redis hands an unacked message out anew after
``CELERY_VISIBILITY_TIMEOUT``, including one a worker holds back for its ETA), and yet it
runs once: each copy of a message with an ETA claims its task id before running
(``entrypoints/claims.py``, collection ``task_claims``); the copies that find the task
running or done do not run it. (Replies run in batches, so copies due at once may share a
batch: only the first runs.)

A real worker with the real app and the real ``record_inbound_message`` task, on a private
Redis (the shared one keeps its timeout), with a visibility timeout of 4 s and a reply sent
with a countdown of 12 s.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC
from pathlib import Path
from typing import Any

import pymongo
import pytest
from celery import Celery

from campaign_worker.bootstrap import build_manager, ensure_indexes
from campaign_worker.settings import Settings
from tests.conftest import sample_campaign
from tests.e2e.conftest import (
    COUNTING_APP,
    Broker,
    Processes,
    e2e_env,
    wait_for_workers,
    wait_until,
)
from tests.e2e.private_redis import PrivateRedis

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

INBOUND = "campaign_worker.record_inbound_message"
CAMPAIGN = "visibility-camp"
VISIBILITY_TIMEOUT = 4
COUNTDOWN = 12


def task_runs(counters: Path) -> Counter[str]:
    total: Counter[str] = Counter()
    for path in counters.glob("*.json"):
        total.update(json.loads(path.read_text()).get("task_runs", {}))
    return total


def test_countdown_past_the_visibility_timeout_is_delivered_again_and_runs_once(
    private_redis: PrivateRedis, wire_uri: str, e2e_db_name: str, tmp_path: Path
) -> None:
    mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        wire_uri, tz_aware=True, tzinfo=UTC, serverSelectionTimeoutMS=20000
    )
    db = mongo[e2e_db_name]
    manager = build_manager(db, Settings(mongodb_db=e2e_db_name))
    ensure_indexes(manager)
    manager.create_campaign(sample_campaign(1, campaign_id=CAMPAIGN))
    assert manager.initialize_campaign_conversations(CAMPAIGN) == 1

    counters = tmp_path / "counters"
    counters.mkdir()
    env = e2e_env(
        Broker("redis", private_redis.url, ""),
        wire_uri,
        e2e_db_name,
        CELERY_CONFIG_MODULE="tests.e2e.short_visibility_config",
        CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT),
        CELERY_TASK_SOFT_TIME_LIMIT="2",
        CELERY_TASK_TIME_LIMIT="3",
        COUNTERS_DIR=str(counters),
        METRICS_PORT="0",
    )
    procs = Processes(tmp_path, env)
    client = Celery("other-service", broker=private_redis.url)
    inspector = private_redis.client()
    try:
        node = procs.worker("visibility", concurrency=2, app=COUNTING_APP)
        wait_for_workers(client, [node])
        sent = client.send_task(
            INBOUND,
            kwargs={
                "campaign_id": CAMPAIGN,
                "user_id": "user-00000",
                "message_id": "sms-late-1",
                "content": "Yes, tell me more",
            },
            queue="inbound",
            countdown=COUNTDOWN,
        )

        def deliveries() -> int:
            """Times the worker took the message (replies run in batches: two copies due
            at once may run in one batch, so batch runs are not deliveries)."""
            return procs.log("visibility").count(f"{INBOUND}[{sent.id}] received")

        def settled() -> bool:
            if deliveries() < 2 or task_runs(counters)[INBOUND] < 1:
                return False
            inspect = client.control.inspect(destination=[node], timeout=1)
            busy = [
                *(inspect.active() or {}).get(node, []),
                *(inspect.reserved() or {}).get(node, []),
                *(inspect.scheduled() or {}).get(node, []),
            ]
            return not busy and inspector.hlen("unacked") == 0 and inspector.llen("inbound") == 0

        wait_until(settled, COUNTDOWN + 30, "the delayed reply's copies to settle")

        assert deliveries() >= 2  # delivered again after the visibility timeout ...
        claim = db["task_claims"].find_one({"_id": sent.id})
        assert claim is not None and claim["runs"] == 1 and claim["done_at"] is not None
        log = procs.log("visibility")
        assert log.count('"task_copy_skipped"') + log.count('"task_copy_deferred"') >= 1
        state = db["conversation_states"].find_one({"campaign_id": CAMPAIGN})
        assert state is not None
        inbound = [m for m in state["message_history"] if m["message_id"] == "sms-late-1"]
        assert len(inbound) == 1  # ... and was recorded once
        assert state["metrics"]["messages_received"] == 1
        # The reply advanced the conversation once: one first message of the next stage.
        assert state["current_stage"] == "consideration"
        assert (
            db["outbox"].count_documents({"campaign_id": CAMPAIGN, "stage": "consideration"}) == 1
        )
        metrics = manager.get_campaign_metrics(CAMPAIGN)
        assert metrics["message_metrics"]["total_received"] == 1
    finally:
        inspector.close()
        client.close()
        procs.stop_all()
        mongo.close()
